import { multiCrop, stackCrops, type Image, type MultiCropConfig } from './multi-crop.ts';
import type { Rng } from './rng.ts';
import type { CropBatch } from './train-step.ts';

/**
 * Builds a crop-major {@link CropBatch} from decoded images: every image gets its own
 * random stream (forked from `rng` in image order), so a batch is reproducible from the
 * seed whatever the order in which crops are computed. `firstIndex` is the position of
 * `images[0]` in the global batch: a rank building its slice of a global batch passes its
 * offset, so its crops are exactly those of the same images in a one-process batch.
 */
export function buildCropBatch(images: readonly Image[], cfg: MultiCropConfig, rng: Rng, firstIndex = 0): CropBatch {
  if (images.length === 0) throw new RangeError('buildCropBatch: the batch is empty');
  if (!Number.isSafeInteger(firstIndex) || firstIndex < 0) throw new RangeError(`buildCropBatch: firstIndex must be a non-negative integer, got ${firstIndex}`);
  const views = images.map((img, i) => multiCrop(img, cfg, rng.fork(firstIndex + i)));
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
