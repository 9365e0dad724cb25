import { describe, expect, it } from 'vitest';
import { buildCropBatch, sliceCropBatch } from './crop-batch.ts';
import type { Image } from './multi-crop.ts';
import { PRESETS } from './presets.ts';
import { Rng } from './rng.ts';

function randomImages(count: number, seed: number): Image[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => {
    const data = new Float32Array(28 * 28);
    for (let i = 0; i < data.length; i++) data[i] = rng.uniform();
    return { data, height: 28, width: 28, channels: 1 };
  });
}

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('buildCropBatch', () => {
  it("gives a slice built with its firstIndex exactly that slice of the one-process batch's crops", () => {
    const crops = { ...PRESETS.dino.crops, nLocal: 2 };
    const images = randomImages(7, 3);
    const full = buildCropBatch(images, crops, new Rng(11).fork(5));
    // Every split of the 7 images into contiguous slices, as ranks of 1-3 workers take them.
    for (const bounds of [[0, 7], [0, 4, 7], [0, 3, 5, 7], [0, 1, 2, 7]]) {
      for (let r = 0; r + 1 < bounds.length; r++) {
        const start = bounds[r] as number;
        const count = (bounds[r + 1] as number) - start;
        const slice = buildCropBatch(images.slice(start, start + count), crops, new Rng(11).fork(5), start);
        const expected = sliceCropBatch(full, start, count);
        expect(bytes(slice.global).equals(bytes(expected.global)), `global crops of [${start}, ${start + count})`).toBe(true);
        expect(bytes(slice.local).equals(bytes(expected.local)), `local crops of [${start}, ${start + count})`).toBe(true);
      }
    }
  });

  it('gives different images different crops and another step other crops', () => {
    const crops = { ...PRESETS.dino.crops, nLocal: 0 };
    const same = randomImages(1, 9)[0] as Image;
    const a = buildCropBatch([same, same], crops, new Rng(1).fork(1));
    const perImage = a.global.length / (a.nGlobal * 2);
    expect(bytes(a.global.subarray(0, perImage)).equals(bytes(a.global.subarray(perImage, 2 * perImage)))).toBe(false);
    const b = buildCropBatch([same, same], crops, new Rng(1).fork(2));
    expect(bytes(a.global).equals(bytes(b.global))).toBe(false);
  });

  it('refuses an empty batch and a bad firstIndex', () => {
    const crops = PRESETS.dino.crops;
    expect(() => buildCropBatch([], crops, new Rng(1))).toThrow(/empty/);
    expect(() => buildCropBatch(randomImages(1, 1), crops, new Rng(1), -1)).toThrow(/firstIndex/);
  });
});
