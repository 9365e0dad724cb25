import type { Rng } from './rng.ts';

/** Options for {@link blockMask}. */
export interface BlockMaskOptions {
  /** Smallest block area proposed, in patches. @default 4 */
  readonly minBlock?: number;
  /** Largest block area proposed, in patches; null or absent: `numMasked`. @default null */
  readonly maxBlock?: number | null;
  /** Smallest block aspect ratio h / w; the largest is its inverse. Range (0, 1]. @default 0.3 */
  readonly minAspect?: number;
}

/** Block proposals tried before a placement round gives up (BEiT's `_mask`). */
const ATTEMPTS_PER_BLOCK = 10;

/**
 * A block-wise mask over a `gridH × gridW` patch grid, as BEiT's (Bao et al. 2022)
 * `MaskingGenerator` used by dinov2 (`dinov2/data/masking.py`): rectangles with random area
 * in `[minBlock, min(maxBlock, still missing)]` and log-uniform aspect ratio are placed until
 * `numMasked` patches are covered. A block is accepted only if it adds ≥ 1 new patch and no
 * more than are still missing, so the count never exceeds `numMasked`.
 *
 * The result has AT MOST `numMasked` ones, like the reference: it stops early when
 * {@link ATTEMPTS_PER_BLOCK} proposals in a row fail. That is rare on real grids (16×16) but
 * usual on tiny ones: blocks must be strictly narrower and shorter than the grid, so a grid
 * with a side of 1 gets no mask at all, and a 2×2 grid only 1×1 blocks. Every round either
 * adds a patch or ends the loop, so it always terminates.
 *
 * @param numMasked target count, clamped to [0, gridH·gridW].
 * @returns `[gridH·gridW]` row-major, 1 = masked.
 */
export function blockMask(
  rng: Rng,
  gridH: number,
  gridW: number,
  numMasked: number,
  opts: BlockMaskOptions = {},
): Uint8Array {
  if (!Number.isInteger(gridH) || !Number.isInteger(gridW) || gridH < 1 || gridW < 1) {
    throw new RangeError(`grid must be positive integers, got ${gridH}×${gridW}`);
  }
  const minBlock = opts.minBlock ?? 4;
  const minAspect = opts.minAspect ?? 0.3;
  if (!(minAspect > 0 && minAspect <= 1)) throw new RangeError(`minAspect must be in (0, 1], got ${minAspect}`);
  const target = Math.max(0, Math.min(Math.floor(numMasked), gridH * gridW));
  const maxBlock = opts.maxBlock ?? target;
  const logAspectMin = Math.log(minAspect);
  const logAspectMax = -logAspectMin;

  const mask = new Uint8Array(gridH * gridW);
  let count = 0;
  while (count < target) {
    const budget = Math.min(target - count, maxBlock);
    let added = 0;
    for (let attempt = 0; attempt < ATTEMPTS_PER_BLOCK && added === 0; attempt++) {
      // Python's random.uniform(a, b) also accepts b < a (a budget below minBlock).
      const area = rng.range(minBlock, budget);
      const aspect = Math.exp(rng.range(logAspectMin, logAspectMax));
      const h = roundHalfEven(Math.sqrt(area * aspect));
      const w = roundHalfEven(Math.sqrt(area / aspect));
      if (w >= gridW || h >= gridH) continue;
      const top = rng.int(gridH - h + 1);
      const left = rng.int(gridW - w + 1);
      let alreadyMasked = 0;
      for (let i = top; i < top + h; i++) {
        for (let j = left; j < left + w; j++) alreadyMasked += mask[i * gridW + j] as number;
      }
      const fresh = h * w - alreadyMasked;
      if (fresh > 0 && fresh <= budget) {
        for (let i = top; i < top + h; i++) {
          for (let j = left; j < left + w; j++) mask[i * gridW + j] = 1;
        }
        added = fresh;
      }
    }
    if (added === 0) break;
    count += added;
  }
  return mask;
}

/** Options for {@link sampleBatchMasks}. */
export interface BatchMaskOptions {
  /** Smallest mask ratio, in [0, 1]. dinov2: 0.1. */
  readonly ratioMin: number;
  /** Largest mask ratio, in [ratioMin, 1]. dinov2: 0.5. */
  readonly ratioMax: number;
  /** Fraction of images that get a mask, in [0, 1]. dinov2: 0.5. */
  readonly probability: number;
  /**
   * Block shape options. The default caps blocks at half the grid, as dinov2's training
   * script (`max_num_patches = 0.5 · N`). @default { maxBlock: 0.5·gridH·gridW }
   */
  readonly block?: BlockMaskOptions;
}

/** Masks for a batch, in the forms the student forward pass and the iBOT loss need. */
export interface BatchMasks {
  /** `[B·Np]` image-major, 1 = masked (Np = gridH·gridW). */
  readonly masks: Uint8Array;
  /** Flat indices into `B·Np` of the masked patches, ascending. */
  readonly maskedIndices: Int32Array;
  /** Per masked index: 1 / (masked patches in its image), the iBOT loss weight. */
  readonly weights: Float32Array;
  /** Images with at least one masked patch. */
  readonly nMaskedImages: number;
}

/**
 * Masks for a batch as dinov2's `collate_data_and_cast`: `floor(batch · probability)` images
 * get a block mask, the i-th with ratio drawn uniformly from the i-th of that many equal
 * slices of `[ratioMin, ratioMax]` (so ratios are spread over the range), target
 * `floor(Np · ratio)` patches; the others get none; then the images' masks are shuffled.
 *
 * @param batch images to mask: global crops × images per rank, crop-major as the student's
 *   global-crop rows.
 */
export function sampleBatchMasks(
  rng: Rng,
  batch: number,
  gridH: number,
  gridW: number,
  opts: BatchMaskOptions,
): BatchMasks {
  const { ratioMin, ratioMax, probability } = opts;
  if (!Number.isInteger(batch) || batch < 0) throw new RangeError(`batch must be an integer ≥ 0, got ${batch}`);
  if (!(ratioMin >= 0 && ratioMin <= ratioMax && ratioMax <= 1)) {
    throw new RangeError(`need 0 ≤ ratioMin ≤ ratioMax ≤ 1, got [${ratioMin}, ${ratioMax}]`);
  }
  if (!(probability >= 0 && probability <= 1)) {
    throw new RangeError(`probability must be in [0, 1], got ${probability}`);
  }
  const patches = gridH * gridW;
  const block: BlockMaskOptions = opts.block ?? { maxBlock: 0.5 * patches };
  const nToMask = Math.floor(batch * probability);

  const perImage: Uint8Array[] = [];
  for (let i = 0; i < nToMask; i++) {
    // torch.linspace(ratioMin, ratioMax, nToMask + 1)[i], [i + 1]
    const low = ratioMin + ((ratioMax - ratioMin) * i) / nToMask;
    const high = ratioMin + ((ratioMax - ratioMin) * (i + 1)) / nToMask;
    perImage.push(blockMask(rng, gridH, gridW, Math.floor(patches * rng.range(low, high)), block));
  }
  while (perImage.length < batch) perImage.push(new Uint8Array(patches));
  rng.shuffle(perImage);

  const masks = new Uint8Array(batch * patches);
  const indices: number[] = [];
  const weights: number[] = [];
  let nMaskedImages = 0;
  perImage.forEach((image, b) => {
    masks.set(image, b * patches);
    const count = image.reduce((sum, v) => sum + v, 0);
    if (count === 0) return;
    nMaskedImages++;
    image.forEach((v, p) => {
      if (v === 0) return;
      indices.push(b * patches + p);
      weights.push(1 / count);
    });
  });
  return {
    masks,
    maskedIndices: Int32Array.from(indices),
    weights: Float32Array.from(weights),
    nMaskedImages,
  };
}

/** Python 3's round(): halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
