import type { Rng } from './rng.ts';

/**
 * Multi-crop augmentation (Caron et al., "Emerging Properties in Self-Supervised Vision
 * Transformers", and DINOv2), in plain TypeScript on Float32Array so that it runs in the
 * data loader, per image and step, without a tfjs backend.
 *
 * Follows DINO's `DataAugmentationDINO` (main_dino.py) and DINOv2's
 * `DataAugmentationDINO` (dinov2/data/augmentations.py): every crop gets
 * random-resized-crop → horizontal flip → colour jitter (p = 0.8) → grayscale (p = 0.2) →
 * Gaussian blur; the second global crop is also solarised; then normalisation.
 *
 * Deviation from the reference: resampling is bilinear (PIL-style, antialiased when
 * shrinking) instead of bicubic; the difference is irrelevant after the blur and jitter
 * and bilinear never overshoots [0, 1].
 */

/** An image in HWC layout with values in [0, 1] (before {@link normalizeImage}). */
export interface Image {
  /** `height × width × channels` values, row-major, channels last. */
  readonly data: Float32Array;
  /** Rows, pixels. */
  readonly height: number;
  /** Columns, pixels. */
  readonly width: number;
  /** 1 (grey) or 3 (RGB). */
  readonly channels: number;
}

/** Colour jitter, torchvision `ColorJitter` semantics, applied with `probability`. */
export interface ColorJitterConfig {
  /** Chance the jitter is applied at all, in [0, 1]. @default 0.8 */
  readonly probability: number;
  /** Brightness factor drawn from [max(0, 1 − b), 1 + b]. @default 0.4 */
  readonly brightness: number;
  /** Contrast factor drawn from [max(0, 1 − c), 1 + c]. @default 0.4 */
  readonly contrast: number;
  /** Saturation factor drawn from [max(0, 1 − s), 1 + s]; no-op on 1 channel. @default 0.2 */
  readonly saturation: number;
  /** Hue shift drawn from [−h, h] turns of the colour wheel, h ≤ 0.5; no-op on 1 channel. @default 0.1 */
  readonly hue: number;
}

/** Gaussian blur, DINOv2's `GaussianBlur` (a `RandomApply` around torchvision's). */
export interface BlurConfig {
  /** Chance of blurring the first and the second global crop. @default [1.0, 0.1] */
  readonly globalProbabilities: readonly [number, number];
  /** Chance of blurring each local crop. @default 0.5 */
  readonly localProbability: number;
  /**
   * Range of the blur's standard deviation, in pixels of a 224-pixel global crop (the
   * reference's resolution, so its [0.1, 2.0] can be written down unchanged). The sigma
   * actually used is `uniform(sigma) × globalSize / 224` pixels, for global and local
   * crops alike: the reference applies the same pixel sigma to its 96-pixel local crops.
   * @default [0.1, 2.0]
   */
  readonly sigma: readonly [number, number];
}

/** Everything {@link multiCrop} needs; see {@link FMNIST_MULTI_CROP} for an instance. */
export interface MultiCropConfig {
  /** Side of the two global crops, pixels. Reference: 224. */
  readonly globalSize: number;
  /** Side of the local crops, pixels. Reference: 96. */
  readonly localSize: number;
  /** Number of local crops (≥ 0). Reference: 8 (DINOv2) or 10 (DINO ViT-S/16). */
  readonly nLocal: number;
  /** Area fraction range of global crops: DINO (0.4, 1), DINOv2 (0.32, 1). */
  readonly globalScale: readonly [number, number];
  /** Area fraction range of local crops: DINO (0.05, 0.4), DINOv2 (0.05, 0.32). */
  readonly localScale: readonly [number, number];
  /** Chance of a horizontal flip, in [0, 1]. @default 0.5 */
  readonly flipProbability: number;
  /** Colour jitter. */
  readonly colorJitter: ColorJitterConfig;
  /** Chance of converting to grey (ITU-R 601 luma); no-op on 1 channel. @default 0.2 */
  readonly grayscaleProbability: number;
  /** Gaussian blur. */
  readonly blur: BlurConfig;
  /** Chance of solarising the first and the second global crop. @default [0, 0.2] */
  readonly solarizeProbability: readonly [number, number];
  /** Per-channel mean subtracted after augmentation (length = channels). */
  readonly mean: readonly number[];
  /** Per-channel standard deviation divided by after augmentation (length = channels). */
  readonly std: readonly number[];
}

/**
 * The reference resolution of {@link BlurConfig.sigma}: DINO's global crops are 224 pixels.
 */
const REFERENCE_GLOBAL_SIZE = 224;

/**
 * Multi-crop for 28 × 28 grey Fashion-MNIST. Departures from the ImageNet recipe, and why:
 * - global crops 28 (the whole image), local crops 14 (half the side, as 96/224 ≈ 0.43);
 * - 6 local crops instead of 8–10: on a 28-pixel image there is little left to see;
 * - local scale (0.1, 0.4) instead of (0.05, 0.4): 5 % of 784 pixels is a 6 × 6 patch,
 *   too small to tell a sneaker from a sandal; 10 % is about 9 × 9;
 * - blur sigma [0.8, 8.0] in 224-pixel units, i.e. 0.1–1.0 pixels at 28: the reference's
 *   [0.1, 2.0] would scale to 0.0125–0.25 pixels, which is no blur at all, while 2 pixels
 *   on a 28-pixel image erases the garment's texture;
 * - grayscale probability 0 (the images are grey already; a no-op either way);
 * - mean 0.2860 and std 0.3530, the Fashion-MNIST training-set pixel statistics.
 * Flip, jitter (saturation and hue are no-ops on grey), blur probabilities and
 * solarisation are the reference's.
 */
export const FMNIST_MULTI_CROP: MultiCropConfig = {
  globalSize: 28,
  localSize: 14,
  nLocal: 6,
  globalScale: [0.4, 1],
  localScale: [0.1, 0.4],
  flipProbability: 0.5,
  colorJitter: { probability: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 },
  grayscaleProbability: 0,
  blur: { globalProbabilities: [1.0, 0.1], localProbability: 0.5, sigma: [0.8, 8.0] },
  solarizeProbability: [0, 0.2],
  mean: [0.286],
  std: [0.353],
};

/**
 * DINOv2's reference multi-crop for ImageNet-sized RGB photographs
 * (`dinov2/data/augmentations.py` with `ssl_default_config.yaml`): 2 global crops of 224 px
 * (scale 0.32-1), 8 local crops of 96 px (0.05-0.32), flip, colour jitter 0.8, grayscale
 * 0.2, blur (1.0 / 0.1 on the globals, 0.5 on the locals), solarisation 0.2 on the second
 * global crop, ImageNet mean and std. The shipped presets are sized for Fashion-MNIST; a
 * recipe override (`crops`) or the loader benchmark uses this one.
 */
export const REFERENCE_MULTI_CROP: MultiCropConfig = {
  globalSize: 224,
  localSize: 96,
  nLocal: 8,
  globalScale: [0.32, 1],
  localScale: [0.05, 0.32],
  flipProbability: 0.5,
  colorJitter: { probability: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 },
  grayscaleProbability: 0.2,
  blur: { globalProbabilities: [1.0, 0.1], localProbability: 0.5, sigma: [0.1, 2.0] },
  solarizeProbability: [0, 0.2],
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

/** torchvision's default aspect-ratio range for {@link randomResizedCrop}. */
const DEFAULT_RATIO: readonly [number, number] = [3 / 4, 4 / 3];

/**
 * torchvision `RandomResizedCrop`: pick a box whose area is `uniform(scale)` of the image
 * and whose aspect ratio is log-uniform in `ratio`, up to 10 tries; if none fits, fall
 * back to the largest centred box with an admissible ratio. The box is then resampled
 * bilinearly to `size × size`.
 * @param scale area fraction range, 0 < low ≤ high ≤ 1.
 * @param ratio width / height range. @default [3/4, 4/3]
 */
export function randomResizedCrop(
  img: Image,
  size: number,
  scale: readonly [number, number],
  rng: Rng,
  ratio: readonly [number, number] = DEFAULT_RATIO,
): Image {
  return resizeBox(img, randomCropBox(img.height, img.width, scale, rng, ratio), size, size);
}

/** A crop rectangle in pixels: rows [top, top + height), columns [left, left + width). */
export interface CropBox {
  /** First row, pixels. */
  readonly top: number;
  /** First column, pixels. */
  readonly left: number;
  /** Rows, pixels (≥ 1). */
  readonly height: number;
  /** Columns, pixels (≥ 1). */
  readonly width: number;
}

/**
 * The box {@link randomResizedCrop} cuts out of a `height × width` image (torchvision's
 * `RandomResizedCrop.get_params`), without resampling.
 * @param scale area fraction range, 0 < low ≤ high ≤ 1.
 * @param ratio width / height range. @default [3/4, 4/3]
 */
export function randomCropBox(
  height: number,
  width: number,
  scale: readonly [number, number],
  rng: Rng,
  ratio: readonly [number, number] = DEFAULT_RATIO,
): CropBox {
  // torchvision transforms.RandomResizedCrop.get_params, draw for draw.
  const area = height * width;
  const logLow = Math.log(ratio[0]);
  const logHigh = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.range(scale[0], scale[1]);
    const aspect = Math.exp(rng.range(logLow, logHigh));
    const w = Math.round(Math.sqrt(targetArea * aspect));
    const h = Math.round(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = rng.int(height - h + 1);
      const left = rng.int(width - w + 1);
      return { top, left, height: h, width: w };
    }
  }
  const inRatio = width / height;
  let w = width;
  let h = height;
  if (inRatio < Math.min(ratio[0], ratio[1])) h = Math.round(w / Math.min(ratio[0], ratio[1]));
  else if (inRatio > Math.max(ratio[0], ratio[1])) w = Math.round(h * Math.max(ratio[0], ratio[1]));
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), height: h, width: w };
}

/**
 * Weighted taps for a separable pass: output `o` sums `weight[k]` times the source at
 * `index[k]`, for `k` in `from[o] .. from[o + 1] − 1`, in that order.
 */
interface Taps {
  readonly from: Int32Array;
  /** Source offset (coordinate times the pass's stride), so the loops index without multiplying. */
  readonly index: Int32Array;
  /** Tap weights; float64 storage, so the inner loops convert nothing, whatever their precision. */
  readonly weight: Float64Array;
}

/**
 * PIL's bilinear filter (ImagingResample): a triangle kernel on half-pixel centres,
 * widened by the shrink factor when downsampling so it averages instead of aliasing,
 * renormalised at the borders (which equals clamp-to-edge when enlarging). With equal
 * sizes every output pixel reads exactly its source pixel.
 *
 * The weights are rounded to float32 (the sums depend on that rounding, so it stays), and
 * zero weights are dropped: the resampler has always skipped them, which also keeps a
 * non-finite pixel out of the sums it has no weight in (`0 · ∞` is NaN).
 */
function axisTaps(offset: number, inSize: number, outSize: number, stride: number): Taps {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale; // the triangle's support is 1 at filterScale 1
  const maxTaps = Math.ceil(support) * 2 + 1;
  const triangle = (x: number, centre: number): number => Math.max(0, 1 - Math.abs((x + 0.5 - centre) / filterScale));
  const from = new Int32Array(outSize + 1);
  const index = new Int32Array(outSize * maxTaps);
  const weight = new Float64Array(outSize * maxTaps);
  let k = 0;
  for (let o = 0; o < outSize; o++) {
    const centre = (o + 0.5) * scale;
    const lo = Math.max(0, Math.floor(centre - support));
    const hi = Math.min(inSize, Math.ceil(centre + support), lo + maxTaps);
    let total = 0;
    for (let x = lo; x < hi; x++) total += triangle(x, centre);
    from[o] = k;
    if (!(total > 0)) continue;
    for (let x = lo; x < hi; x++) {
      const w = Math.fround(triangle(x, centre) / total);
      if (w === 0) continue;
      index[k] = (offset + x) * stride;
      weight[k] = w;
      k++;
    }
  }
  from[outSize] = k;
  return { from, index, weight };
}

/**
 * The vertical pass of resampling and blur: output row `o` is the weighted sum of the rows
 * of `src` that start at the offsets `taps` lists for `o`. The running sum is rounded to
 * float32 after every tap, because these passes have always accumulated in their float32
 * output and crops are reproducible bit for bit.
 */
function sumRows(src: Float32Array, taps: Taps, out: Float32Array, outRows: number, rowLength: number): void {
  const { from, index, weight } = taps;
  for (let o = 0; o < outRows; o++) {
    const begin = from[o] as number;
    const end = from[o + 1] as number;
    const dst = o * rowLength;
    // Six columns at a time: six independent sums keep the FPU busy instead of waiting on
    // each rounding, and each is read and written once instead of once per tap.
    let i = 0;
    for (; i + 6 <= rowLength; i += 6) {
      let a0 = 0;
      let a1 = 0;
      let a2 = 0;
      let a3 = 0;
      let a4 = 0;
      let a5 = 0;
      for (let k = begin; k < end; k++) {
        const w = weight[k] as number;
        const j = (index[k] as number) + i;
        a0 = Math.fround(a0 + w * (src[j] as number));
        a1 = Math.fround(a1 + w * (src[j + 1] as number));
        a2 = Math.fround(a2 + w * (src[j + 2] as number));
        a3 = Math.fround(a3 + w * (src[j + 3] as number));
        a4 = Math.fround(a4 + w * (src[j + 4] as number));
        a5 = Math.fround(a5 + w * (src[j + 5] as number));
      }
      out[dst + i] = a0;
      out[dst + i + 1] = a1;
      out[dst + i + 2] = a2;
      out[dst + i + 3] = a3;
      out[dst + i + 4] = a4;
      out[dst + i + 5] = a5;
    }
    for (; i < rowLength; i++) {
      let acc = 0;
      for (let k = begin; k < end; k++) acc = Math.fround(acc + (weight[k] as number) * (src[(index[k] as number) + i] as number));
      out[dst + i] = acc;
    }
  }
}

/**
 * The float32 intermediate between the two passes of {@link resizeBox} and
 * {@link gaussianBlur}, reused from call to call rather than allocated and zeroed per crop
 * (up to a megabyte for a 224-pixel global crop): both run to completion synchronously and
 * write every value they read. It grows to the largest crop seen.
 */
let passScratch = new Float32Array(0);

function scratchFloat32(length: number): Float32Array {
  if (passScratch.length < length) passScratch = new Float32Array(length);
  return passScratch;
}

/**
 * Resamples the box of `img` to `outHeight × outWidth`, separably: rows into a float32
 * intermediate (each value summed in float64), then columns with {@link sumRows}. With
 * `mirror` the result is also flipped left-right (column o is computed as column
 * `outWidth − 1 − o`), the same values {@link flipHorizontal} would give without its pass.
 */
function resizeBox(img: Image, box: CropBox, outHeight: number, outWidth: number, mirror = false): Image {
  const { channels, width: inWidth, data } = img;
  const inRowLength = inWidth * channels;
  const rowLength = outWidth * channels;
  const { from, index, weight } = axisTaps(box.left, box.width, outWidth, channels);
  // Horizontal pass over only the box's rows: [box.height, outWidth, C].
  const mid = scratchFloat32(box.height * rowLength);
  let y = 0;
  if (channels === 3) {
    // Two rows at a time: they share the taps, and six independent sums overlap.
    for (; y + 2 <= box.height; y += 2) {
      const srcRow = (box.top + y) * inRowLength;
      for (let o = 0, dst = y * rowLength; o < outWidth; o++, dst += 3) {
        const oSrc = mirror ? outWidth - 1 - o : o;
        const end = from[oSrc + 1] as number;
        let r0 = 0;
        let g0 = 0;
        let b0 = 0;
        let r1 = 0;
        let g1 = 0;
        let b1 = 0;
        for (let k = from[oSrc] as number; k < end; k++) {
          const w = weight[k] as number;
          const j = srcRow + (index[k] as number);
          const j1 = j + inRowLength;
          r0 += w * (data[j] as number);
          g0 += w * (data[j + 1] as number);
          b0 += w * (data[j + 2] as number);
          r1 += w * (data[j1] as number);
          g1 += w * (data[j1 + 1] as number);
          b1 += w * (data[j1 + 2] as number);
        }
        mid[dst] = r0;
        mid[dst + 1] = g0;
        mid[dst + 2] = b0;
        mid[dst + rowLength] = r1;
        mid[dst + rowLength + 1] = g1;
        mid[dst + rowLength + 2] = b1;
      }
    }
  }
  for (; y < box.height; y++) {
    const srcRow = (box.top + y) * inRowLength;
    for (let o = 0, dst = y * rowLength; o < outWidth; o++, dst += channels) {
      const oSrc = mirror ? outWidth - 1 - o : o;
      const begin = from[oSrc] as number;
      const end = from[oSrc + 1] as number;
      for (let c = 0; c < channels; c++) {
        let acc = 0;
        for (let k = begin; k < end; k++) acc += (weight[k] as number) * (data[srcRow + (index[k] as number) + c] as number);
        mid[dst + c] = acc;
      }
    }
  }
  const out = new Float32Array(outHeight * rowLength);
  sumRows(mid, axisTaps(0, box.height, outHeight, rowLength), out, outHeight, rowLength);
  return { data: out, height: outHeight, width: outWidth, channels };
}

/** Mirrors the image left-right (torchvision `RandomHorizontalFlip`'s action). */
export function flipHorizontal(img: Image): Image {
  const { data, height, width, channels } = img;
  const out = new Float32Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width * channels;
    for (let x = 0; x < width; x++) {
      const src = row + x * channels;
      const dst = row + (width - 1 - x) * channels;
      for (let c = 0; c < channels; c++) out[dst + c] = data[src + c] as number;
    }
  }
  return { data: out, height, width, channels };
}

/** ITU-R 601-2 luma, the weights torchvision's `rgb_to_grayscale` uses. */
function luma(r: number, g: number, b: number): number {
  return 0.299 * r + 0.587 * g + 0.114 * b;
}

function clamp01(x: number): number {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}

/** Brightness: `clamp(x · factor)` (torchvision `adjust_brightness`). In place. */
function adjustBrightness(data: Float32Array, factor: number): void {
  for (let i = 0; i < data.length; i++) data[i] = clamp01((data[i] as number) * factor);
}

/**
 * Contrast: blend towards the mean grey level of the whole image (torchvision
 * `adjust_contrast`: the mean of `rgb_to_grayscale`, or of the single channel). In place.
 */
function adjustContrast(data: Float32Array, channels: number, factor: number): void {
  let sum = 0;
  const pixels = data.length / channels;
  if (channels === 3) {
    for (let i = 0; i < data.length; i += 3) sum += luma(data[i] as number, data[i + 1] as number, data[i + 2] as number);
  } else {
    for (let i = 0; i < data.length; i++) sum += data[i] as number;
    sum /= channels;
  }
  const shift = (1 - factor) * (sum / pixels);
  for (let i = 0; i < data.length; i++) data[i] = clamp01(factor * (data[i] as number) + shift);
}

/** Saturation: blend each pixel towards its own grey value (`adjust_saturation`). RGB, in place. */
function adjustSaturation(data: Float32Array, factor: number): void {
  for (let i = 0; i < data.length; i += 3) {
    const grey = (1 - factor) * luma(data[i] as number, data[i + 1] as number, data[i + 2] as number);
    data[i] = clamp01(factor * (data[i] as number) + grey);
    data[i + 1] = clamp01(factor * (data[i + 1] as number) + grey);
    data[i + 2] = clamp01(factor * (data[i + 2] as number) + grey);
  }
}

/**
 * For each HSV sector 0–5, which of (v, p, q, t) become R, G and B: the sector table of
 * torchvision's _hsv2rgb, looked up instead of branched on, since neighbouring pixels of a
 * noisy crop land in unrelated sectors.
 */
const HSV_SECTOR_RGB = Int32Array.of(0, 3, 1, 2, 0, 1, 1, 0, 3, 1, 2, 0, 3, 1, 0, 0, 1, 2);

/** Hue: rotate H in HSV by `shift` turns (`adjust_hue`). RGB, in place. */
function adjustHue(data: Float32Array, shift: number): void {
  const vpqt = new Float64Array(4);
  for (let i = 0; i < data.length; i += 3) {
    const r = data[i] as number;
    const g = data[i + 1] as number;
    const b = data[i + 2] as number;
    const max = Math.max(r, g, b);
    const min = Math.min(r, g, b);
    const chroma = max - min;
    if (chroma === 0) continue; // grey pixels have no hue to rotate
    let h: number;
    if (max === r) h = ((g - b) / chroma) / 6;
    else if (max === g) h = ((b - r) / chroma + 2) / 6;
    else h = ((r - g) / chroma + 4) / 6;
    // `((h + shift) % 1 + 1) % 1` without `%`, which V8 compiles to a call to fmod. The
    // fractional part v − trunc(v) is exact, as fmod is; the two differ only in the sign of a
    // zero, which the + 1 erases. The sum lies in [0, 2], where y − floor(y) equals y % 1.
    const v = h + shift;
    const y = v - Math.trunc(v) + 1;
    h = y - Math.floor(y);
    const s = chroma / max;
    const h6 = h * 6;
    const floor = Math.floor(h6);
    const f = h6 - floor;
    vpqt[0] = max;
    vpqt[1] = max * (1 - s);
    vpqt[2] = max * (1 - s * f);
    vpqt[3] = max * (1 - s * (1 - f));
    // h < 1, so h6 < 6 and its floor is the sector (the reference's `% 6` is a no-op),
    // unless h is NaN, which the reference's chain of comparisons sends to the last sector.
    const sector = (floor < 6 ? floor : 5) * 3;
    data[i] = vpqt[HSV_SECTOR_RGB[sector] as number] as number;
    data[i + 1] = vpqt[HSV_SECTOR_RGB[sector + 1] as number] as number;
    data[i + 2] = vpqt[HSV_SECTOR_RGB[sector + 2] as number] as number;
  }
}

/**
 * torchvision `ColorJitter`: the four adjustments in a random order, each with its own
 * random factor. All four factors are drawn whatever the channel count, so a seed gives the
 * same stream for grey and colour images. On 1 channel saturation and hue are no-ops, as in
 * torchvision (`adjust_saturation` / `adjust_hue` return grey images unchanged). In place.
 */
function colorJitter(img: Image, cfg: ColorJitterConfig, rng: Rng): void {
  const order = rng.shuffle([0, 1, 2, 3]);
  const brightness = rng.range(Math.max(0, 1 - cfg.brightness), 1 + cfg.brightness);
  const contrast = rng.range(Math.max(0, 1 - cfg.contrast), 1 + cfg.contrast);
  const saturation = rng.range(Math.max(0, 1 - cfg.saturation), 1 + cfg.saturation);
  const hue = rng.range(-cfg.hue, cfg.hue);
  const rgb = img.channels === 3;
  for (const op of order) {
    if (op === 0 && cfg.brightness > 0) adjustBrightness(img.data, brightness);
    else if (op === 1 && cfg.contrast > 0) adjustContrast(img.data, img.channels, contrast);
    else if (op === 2 && rgb && cfg.saturation > 0) adjustSaturation(img.data, saturation);
    else if (op === 3 && rgb && cfg.hue > 0) adjustHue(img.data, hue);
  }
}

/** Replaces RGB by its luma in all three channels (`RandomGrayscale`'s action). In place. */
function grayscale(img: Image): void {
  if (img.channels !== 3) return;
  const d = img.data;
  for (let i = 0; i < d.length; i += 3) {
    const y = luma(d[i] as number, d[i + 1] as number, d[i + 2] as number);
    d[i] = y;
    d[i + 1] = y;
    d[i + 2] = y;
  }
}

/** Reflect padding without repeating the edge (torch's 'reflect'), safe for any overhang. */
function reflect(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  const m = ((i % period) + period) % period;
  return m < n ? m : period - m;
}

/**
 * Separable Gaussian blur with standard deviation `sigmaPx` pixels. The kernel radius is
 * ⌈3σ⌉ (≥ 1), which keeps > 99.7 % of the mass; torchvision's fixed 9-tap kernel in DINOv2
 * truncates at radius 4 instead. Edges are reflected as in torchvision's `gaussian_blur`.
 * The kernel is normalised, so a constant image is unchanged.
 */
export function gaussianBlur(img: Image, sigmaPx: number): Image {
  const out = new Float32Array(img.data.length);
  blurInto(img, sigmaPx, out);
  return { data: out, height: img.height, width: img.width, channels: img.channels };
}

/**
 * {@link gaussianBlur} writing into `out`, which may be `img.data` itself: the vertical pass,
 * the only one that writes `out`, reads nothing but the intermediate.
 */
function blurInto(img: Image, sigmaPx: number, out: Float32Array): void {
  const { data, height, width, channels } = img;
  const radius = Math.max(1, Math.ceil(3 * sigmaPx));
  const taps = 2 * radius + 1;
  const kernel = new Float64Array(taps);
  let total = 0;
  for (let t = -radius; t <= radius; t++) {
    const w = Math.exp(-(t * t) / (2 * sigmaPx * sigmaPx));
    kernel[t + radius] = w;
    total += w;
  }
  for (let t = 0; t < kernel.length; t++) kernel[t] = (kernel[t] as number) / total;
  const rowLength = width * channels;
  // Horizontal pass: each row is copied once into a buffer padded with its reflection (from
  // a table: the radius may exceed the width), so the taps read contiguous memory.
  const paddedWidth = width + 2 * radius;
  const padSource = new Int32Array(paddedWidth);
  for (let j = 0; j < paddedWidth; j++) padSource[j] = reflect(j - radius, width) * channels;
  const padded = new Float64Array(paddedWidth * channels);
  const mid = scratchFloat32(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * rowLength;
    if (channels === 3) {
      for (let j = 0, p = 0; j < paddedWidth; j++, p += 3) {
        const src = row + (padSource[j] as number);
        padded[p] = data[src] as number;
        padded[p + 1] = data[src + 1] as number;
        padded[p + 2] = data[src + 2] as number;
      }
    } else {
      for (let j = 0, p = 0; j < paddedWidth; j++) {
        const src = row + (padSource[j] as number);
        for (let c = 0; c < channels; c++, p++) padded[p] = data[src + c] as number;
      }
    }
    // Value i of the row (pixel i / C, channel i % C) reads padded[i + t·C]. Six values at
    // a time, so that six independent float64 sums overlap.
    let i = 0;
    for (; i + 6 <= rowLength; i += 6) {
      let a0 = 0;
      let a1 = 0;
      let a2 = 0;
      let a3 = 0;
      let a4 = 0;
      let a5 = 0;
      for (let t = 0, j = i; t < taps; t++, j += channels) {
        const w = kernel[t] as number;
        a0 += w * (padded[j] as number);
        a1 += w * (padded[j + 1] as number);
        a2 += w * (padded[j + 2] as number);
        a3 += w * (padded[j + 3] as number);
        a4 += w * (padded[j + 4] as number);
        a5 += w * (padded[j + 5] as number);
      }
      mid[row + i] = a0;
      mid[row + i + 1] = a1;
      mid[row + i + 2] = a2;
      mid[row + i + 3] = a3;
      mid[row + i + 4] = a4;
      mid[row + i + 5] = a5;
    }
    for (; i < rowLength; i++) {
      let acc = 0;
      for (let t = 0, j = i; t < taps; t++, j += channels) acc += (kernel[t] as number) * (padded[j] as number);
      mid[row + i] = acc;
    }
  }
  // Vertical pass: every tap, including any whose weight underflowed to 0, from reflected rows.
  const from = new Int32Array(height + 1);
  const index = new Int32Array(height * taps);
  const weight = new Float64Array(height * taps);
  for (let y = 0; y < height; y++) {
    from[y + 1] = (y + 1) * taps;
    for (let t = 0; t < taps; t++) {
      index[y * taps + t] = reflect(y + t - radius, height) * rowLength;
      weight[y * taps + t] = kernel[t] as number;
    }
  }
  sumRows(mid, { from, index, weight }, out, height, rowLength);
}

/** PIL `ImageOps.solarize` at its default threshold 128/255: x ≥ 0.5 → 1 − x. In place. */
function solarize(img: Image): void {
  const d = img.data;
  for (let i = 0; i < d.length; i++) {
    const x = d[i] as number;
    if (x >= 0.5) d[i] = 1 - x;
  }
}

/** Returns a solarised copy: every value x ≥ 0.5 becomes 1 − x (PIL `ImageOps.solarize`). */
export function solarizeImage(img: Image): Image {
  const out = { ...img, data: img.data.slice() };
  solarize(out);
  return out;
}

/** `(x − mean[c]) / std[c]` per channel (torchvision `Normalize`). */
export function normalizeImage(img: Image, mean: readonly number[], std: readonly number[]): Image {
  const out = new Float32Array(img.data.length);
  normalizeInto(img.data, img.channels, mean, std, out);
  return { data: out, height: img.height, width: img.width, channels: img.channels };
}

/** {@link normalizeImage} from `data` into `out`, which may be `data` itself. */
function normalizeInto(data: Float32Array, channels: number, mean: readonly number[], std: readonly number[], out: Float32Array): void {
  if (mean.length !== channels || std.length !== channels) {
    throw new RangeError(`normalizeImage: mean and std need ${channels} values, got ${mean.length} and ${std.length}`);
  }
  if (channels === 3) {
    const [m0, m1, m2] = mean as [number, number, number];
    const [s0, s1, s2] = std as [number, number, number];
    for (let i = 0; i < data.length; i += 3) {
      out[i] = ((data[i] as number) - m0) / s0;
      out[i + 1] = ((data[i + 1] as number) - m1) / s1;
      out[i + 2] = ((data[i + 2] as number) - m2) / s2;
    }
    return;
  }
  for (let i = 0; i < data.length; i += channels) {
    for (let c = 0; c < channels; c++) out[i + c] = ((data[i + c] as number) - (mean[c] as number)) / (std[c] as number);
  }
}

/**
 * Evaluation view: the central square covering `cropFraction` of the shorter side,
 * resized (bilinear) to `size × size`. With the default 1 the whole square is kept, which
 * suits 28-pixel images; 0.875 reproduces the reference's `Resize(256)` + `CenterCrop(224)`.
 * @param cropFraction in (0, 1]. @default 1
 */
export function centerResize(img: Image, size: number, cropFraction = 1): Image {
  const side = Math.max(1, Math.round(Math.min(img.height, img.width) * cropFraction));
  const box: CropBox = {
    top: Math.floor((img.height - side) / 2),
    left: Math.floor((img.width - side) / 2),
    height: side,
    width: side,
  };
  return resizeBox(img, box, size, size);
}

/**
 * One augmented, normalised crop: the reference's
 * `RandomResizedCrop → flip_and_color_jitter → GaussianBlur(p) → [Solarization(p)] → normalize`.
 */
function augmentCrop(
  img: Image,
  cfg: MultiCropConfig,
  size: number,
  scale: readonly [number, number],
  blurProbability: number,
  solarizeProbability: number,
  rng: Rng,
): Image {
  // randomResizedCrop and flipHorizontal, fused (the flip draw follows the box's draws, as
  // before); from here on the crop's buffer is private, so every step works in place.
  const box = randomCropBox(img.height, img.width, scale, rng);
  const crop = resizeBox(img, box, size, size, rng.bernoulli(cfg.flipProbability));
  if (rng.bernoulli(cfg.colorJitter.probability)) colorJitter(crop, cfg.colorJitter, rng);
  if (rng.bernoulli(cfg.grayscaleProbability)) grayscale(crop);
  if (rng.bernoulli(blurProbability)) {
    const sigmaPx = (rng.range(cfg.blur.sigma[0], cfg.blur.sigma[1]) * cfg.globalSize) / REFERENCE_GLOBAL_SIZE;
    blurInto(crop, sigmaPx, crop.data);
  }
  if (rng.bernoulli(solarizeProbability)) solarize(crop);
  normalizeInto(crop.data, crop.channels, cfg.mean, cfg.std, crop.data);
  return crop;
}

/**
 * The multi-crop views of one image: 2 global crops of `globalSize × globalSize` and
 * `nLocal` local crops of `localSize × localSize`, all with the input's channel count,
 * normalised. Each crop draws from its own fork of `rng` (labels 0, 1 for the globals,
 * 2 + i for local i), so the global crops do not depend on `nLocal`.
 */
export function multiCrop(img: Image, cfg: MultiCropConfig, rng: Rng): { global: Image[]; local: Image[] } {
  const global = [0, 1].map((g) => {
    const blurP = cfg.blur.globalProbabilities[g as 0 | 1];
    const solarizeP = cfg.solarizeProbability[g as 0 | 1];
    return augmentCrop(img, cfg, cfg.globalSize, cfg.globalScale, blurP, solarizeP, rng.fork(g));
  });
  const local: Image[] = [];
  for (let i = 0; i < cfg.nLocal; i++) {
    local.push(augmentCrop(img, cfg, cfg.localSize, cfg.localScale, cfg.blur.localProbability, 0, rng.fork(2 + i)));
  }
  return { global, local };
}

/**
 * Packs equally sized crops into one `[N, H, W, C]` buffer for `tf.tensor4d`.
 * @throws RangeError if the crops differ in shape or there are none.
 */
export function stackCrops(crops: readonly Image[]): Float32Array {
  const first = crops[0];
  if (first === undefined) throw new RangeError('stackCrops: no crops');
  const { height, width, channels } = first;
  const length = height * width * channels;
  const out = new Float32Array(crops.length * length);
  crops.forEach((crop, i) => {
    if (crop.height !== height || crop.width !== width || crop.channels !== channels) {
      throw new RangeError(
        `stackCrops: crop ${i} is ${crop.height}×${crop.width}×${crop.channels}, expected ${height}×${width}×${channels}`,
      );
    }
    out.set(crop.data, i * length);
  });
  return out;
}
