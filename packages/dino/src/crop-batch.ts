import { multiCrop, stackCrops, type Image, type MultiCropConfig } from './multi-crop.ts';
import { Rng } from './rng.ts';
import type { CropBatch } from './train-step.ts';

/**
 * Builds a crop-major {@link CropBatch} from decoded images. Image k of the global batch
 * gets its own random stream, a function of one draw from `rng` and of k alone, so a
 * batch is reproducible from the seed whatever the order in which crops are computed, and
 * a rank that builds only its slice passes `firstIndex` (the position of `images[0]` in
 * the global batch) and gets exactly the crops those images get in a one-process batch.
 */
export function buildCropBatch(images: readonly Image[], cfg: MultiCropConfig, rng: Rng, firstIndex = 0): CropBatch {
  if (images.length === 0) throw new RangeError('buildCropBatch: the batch is empty');
  if (!Number.isSafeInteger(firstIndex) || firstIndex < 0) throw new RangeError(`buildCropBatch: firstIndex must be a non-negative integer, got ${firstIndex}`);
  // One draw for the whole batch; `rng.fork(k)` per image would draw k times, making
  // image k's stream depend on how many images precede it in this call.
  const batchSeed = rng.nextUint32();
  const views = images.map((img, i) => multiCrop(img, cfg, cropImageRng(batchSeed, firstIndex + i)));
  const nGlobal = views[0]?.global.length ?? 0;
  const globalCrops: Image[] = [];
  const localCrops: Image[] = [];
  for (let c = 0; c < nGlobal; c++) for (const v of views) globalCrops.push(v.global[c] as Image);
  for (let c = 0; c < cfg.nLocal; c++) for (const v of views) localCrops.push(v.local[c] as Image);
  return {
    batchSize: images.length,
    nGlobal,
    nLocal: cfg.nLocal,
    globalSize: cfg.globalSize,
    localSize: cfg.localSize,
    channels: images[0]?.channels ?? 1,
    global: stackCrops(globalCrops),
    local: localCrops.length > 0 ? stackCrops(localCrops) : new Float32Array(0),
  };
}

/**
 * The batch seed of training step `step` (0-based) of a run seeded `seed`: the draw
 * {@link buildCropBatch} makes when the step loop passes it `new Rng(seed).fork(step + 1)`.
 * A data loader that crops ahead of the step derives the same streams from it.
 */
export function stepCropSeed(seed: number, step: number): number {
  return new Rng(seed).fork(step + 1).nextUint32();
}

/** The random stream of image `index` (its position in the global batch) of a batch whose seed draw was `batchSeed`. */
export function cropImageRng(batchSeed: number, index: number): Rng {
  return new Rng((Math.imul(batchSeed ^ 0x85ebca6b, 0xc2b2ae35) + Math.imul(index + 1, 0x9e3779b1)) >>> 0);
}

/**
 * The images `[start, start + count)` of a crop-major batch, every view kept: how a global
 * batch is split over ranks (each rank gets whole images with all their crops).
 */
export function sliceCropBatch(batch: CropBatch, start: number, count: number): CropBatch {
  if (start < 0 || count < 1 || start + count > batch.batchSize) {
    throw new RangeError(`sliceCropBatch: images [${start}, ${start + count}) outside a batch of ${batch.batchSize}`);
  }
  const take = (views: Float32Array, nViews: number, size: number): Float32Array => {
    const perImage = size * size * batch.channels;
    const out = new Float32Array(nViews * count * perImage);
    for (let v = 0; v < nViews; v++) {
      const from = (v * batch.batchSize + start) * perImage;
      out.set(views.subarray(from, from + count * perImage), v * count * perImage);
    }
    return out;
  };
  return {
    ...batch,
    batchSize: count,
    global: take(batch.global, batch.nGlobal, batch.globalSize),
    local: batch.nLocal > 0 ? take(batch.local, batch.nLocal, batch.localSize) : new Float32Array(0),
  };
}
