/**
 * Test-only helpers (not exported from index.ts): small recipes and images for the
 * worker's tests.
 */
import { FMNIST_MULTI_CROP, PRESETS, Rng, VIT_CONFIGS } from '@dinofleet/dino';
import type { DinoRecipe, Image } from '@dinofleet/dino';

const TINY_HEAD = { inDim: 16, hiddenDim: 32, bottleneckDim: 8, outDim: 32, nLayers: 3, weightNorm: true };

/** A DINO recipe small enough for hashing and layout tests: 16 px images, a tiny ViT. */
export function tinyDinoRecipe(): DinoRecipe {
  return {
    ...PRESETS.dino,
    vit: VIT_CONFIGS['vit-test-tiny'],
    dinoHead: TINY_HEAD,
    crops: { ...FMNIST_MULTI_CROP, globalSize: 16, localSize: 8, nLocal: 0 },
    globalBatchSize: 4,
    dropPathRate: 0,
  };
}

/** `n` reproducible random grey images of `size` × `size`. */
export function randomImages(n: number, seed: number, size = 28): Image[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => ({
    data: Float32Array.from({ length: size * size }, () => rng.uniform()),
    height: size,
    width: size,
    channels: 1,
  }));
}

/** Largest |a − b| over two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}
