import { readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { FashionMnist, LabelledImages } from './fashion-mnist.ts';
import { FASHION_MNIST_CLASS_NAMES, fashionMnistCacheDir, fashionMnistImage, loadFashionMnist } from './fashion-mnist.ts';

const PIXELS = 784;

async function packageJsonRows(label: number): Promise<number[][]> {
  const require = createRequire(import.meta.url);
  const file = join(dirname(require.resolve('fashion-mnist/package.json')), 'src', 'clothes', `${label}.json`);
  return (JSON.parse(await readFile(file, 'utf8')) as { data: number[][] }).data;
}

function image(set: LabelledImages, index: number): number[] {
  return Array.from(set.images.subarray(index * PIXELS, (index + 1) * PIXELS));
}

/**
 * eval_knn.py's weighted k-NN (k = 20, T = 0.07) on L2-normalised raw pixels, in plain
 * TypeScript: four test rows share each pass over a training row, which keeps the
 * 2,000 × 10,000 × 784 multiply-adds to a few seconds.
 */
function pixelKnnAccuracy(train: LabelledImages, nTrain: number, test: LabelledImages, nTest: number): number {
  const k = 20;
  const temperature = 0.07;
  const unitRows = (set: LabelledImages, n: number): Float32Array => {
    const out = new Float32Array(n * PIXELS);
    for (let r = 0; r < n; r++) {
      let norm = 0;
      for (let i = 0; i < PIXELS; i++) norm += (set.images[r * PIXELS + i] as number) ** 2;
      const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
      for (let i = 0; i < PIXELS; i++) out[r * PIXELS + i] = (set.images[r * PIXELS + i] as number) * scale;
    }
    return out;
  };
  const trainUnit = unitRows(train, nTrain);
  const testUnit = unitRows(test, nTest);
  const topSim = new Float64Array(4 * k);
  const topIdx = new Int32Array(4 * k);
  let correct = 0;
  const insert = (q: number, sim: number, idx: number): void => {
    const base = q * k;
    if (sim <= (topSim[base + k - 1] as number)) return;
    let j = k - 1;
    while (j > 0 && (topSim[base + j - 1] as number) < sim) {
      topSim[base + j] = topSim[base + j - 1] as number;
      topIdx[base + j] = topIdx[base + j - 1] as number;
      j--;
    }
    topSim[base + j] = sim;
    topIdx[base + j] = idx;
  };
  for (let q0 = 0; q0 < nTest; q0 += 4) {
    const rows = Math.min(4, nTest - q0);
    topSim.fill(-Infinity);
    const a = q0 * PIXELS;
    const b = (q0 + Math.min(1, rows - 1)) * PIXELS;
    const c = (q0 + Math.min(2, rows - 1)) * PIXELS;
    const d = (q0 + Math.min(3, rows - 1)) * PIXELS;
    for (let t = 0; t < nTrain; t++) {
      const o = t * PIXELS;
      let sa = 0;
      let sb = 0;
      let sc = 0;
      let sd = 0;
      for (let i = 0; i < PIXELS; i++) {
        const x = trainUnit[o + i] as number;
        sa += x * (testUnit[a + i] as number);
        sb += x * (testUnit[b + i] as number);
        sc += x * (testUnit[c + i] as number);
        sd += x * (testUnit[d + i] as number);
      }
      insert(0, sa, t);
      insert(1, sb, t);
      insert(2, sc, t);
      insert(3, sd, t);
    }
    for (let q = 0; q < rows; q++) {
      const votes = new Float64Array(10);
      for (let j = 0; j < k; j++) {
        const label = train.labels[topIdx[q * k + j] as number] as number;
        votes[label] = (votes[label] as number) + Math.exp(((topSim[q * k + j] as number) - 1) / temperature);
      }
      let best = 0;
      for (let cls = 1; cls < 10; cls++) if ((votes[cls] as number) > (votes[best] as number)) best = cls;
      if (best === test.labels[q0 + q]) correct++;
    }
  }
  return correct / nTest;
}

describe('Fashion-MNIST', () => {
  let data: FashionMnist;
  let firstLoadMs = 0;

  beforeAll(async () => {
    const started = performance.now();
    data = await loadFashionMnist();
    firstLoadMs = performance.now() - started;
  });

  it('has 60,000 train and 10,000 test images, 6,000 / 1,000 per class, class-interleaved', () => {
    expect(data.train.count).toBe(60_000);
    expect(data.test.count).toBe(10_000);
    expect(data.train.images.length).toBe(60_000 * PIXELS);
    expect(data.test.images.length).toBe(10_000 * PIXELS);
    expect([data.train.height, data.train.width]).toEqual([28, 28]);
    for (const [set, perClass] of [[data.train, 6000], [data.test, 1000]] as const) {
      const counts = new Array<number>(10).fill(0);
      set.labels.forEach((label, n) => {
        counts[label]!++;
        if (label !== n % 10) throw new Error(`label ${label} at ${n} breaks the interleaved order`);
      });
      expect(counts).toEqual(new Array<number>(10).fill(perClass));
    }
    expect(data.classNames).toEqual(FASHION_MNIST_CLASS_NAMES);
    expect(data.classNames).toHaveLength(10);
    expect(data.classNames[0]).toBe('T-shirt/top');
    expect(data.classNames[9]).toBe('Ankle boot');
  });

  it('uses the full grey range, and images are not blank', () => {
    let min = 255;
    let max = 0;
    for (const v of data.test.images) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect(min).toBe(0);
    expect(max).toBe(255);
    let sum = 0;
    for (const v of data.train.images) sum += v;
    const mean = sum / data.train.images.length / 255;
    // The published training-set mean is 0.2860.
    expect(mean).toBeGreaterThan(0.27);
    expect(mean).toBeLessThan(0.30);
    const img = fashionMnistImage(data.test, 17);
    expect([img.height, img.width, img.channels, img.data.length]).toEqual([28, 28, 1, PIXELS]);
    expect(img.data[100]).toBeCloseTo((data.test.images[17 * PIXELS + 100] as number) / 255, 7);
    for (const v of img.data) expect(v >= 0 && v <= 1).toBe(true);
    expect(() => fashionMnistImage(data.test, 10_000)).toThrow(RangeError);
  });

  it('takes train from the head and test from the tail of each class JSON', async () => {
    const raw0 = await packageJsonRows(0);
    // Class 0's 7,002 entries include two empty arrays, at 1,000 and 7,001; the loader skips them.
    expect(raw0).toHaveLength(7002);
    expect(raw0.flatMap((row, i) => (row.length === PIXELS ? [] : [[i, row.length]]))).toEqual([[1000, 0], [7001, 0]]);
    expect(image(data.train, 0)).toEqual(raw0[0]); // the package's first JSON row
    expect(image(data.train, 10)).toEqual(raw0[1]); // interleaved: the next class-0 image is 10 on
    expect(image(data.train, 10 * 999)).toEqual(raw0[999]);
    expect(image(data.train, 10 * 1000)).toEqual(raw0[1001]); // the empty entry 1,000 is skipped
    expect(image(data.train, 59_990)).toEqual(raw0[6000]);
    expect(image(data.test, 0)).toEqual(raw0[6001]);
    expect(image(data.test, 9990)).toEqual(raw0[7000]);
    const class9 = await packageJsonRows(9);
    expect(image(data.train, 9)).toEqual(class9[0]);
    expect(image(data.train, 59_999)).toEqual(class9[5999]);
    expect(image(data.test, 9)).toEqual(class9[6000]);
    expect(image(data.test, 9999)).toEqual(class9[6999]);
    expect(fashionMnistImage(data.train, 0).data[300]).toBeCloseTo((raw0[0]?.[300] ?? NaN) / 255, 7);
  });

  it('reuses the binary cache on the second load', async () => {
    const path = join(fashionMnistCacheDir(), 'fashion-mnist-v1.bin');
    const before = await stat(path);
    const started = performance.now();
    const again = await loadFashionMnist();
    const secondLoadMs = performance.now() - started;
    const after = await stat(path);
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    // Buffer.equals, not toEqual: vitest's deep equality over 47 M elements takes minutes.
    expect(Buffer.from(again.train.images).equals(Buffer.from(data.train.images))).toBe(true);
    expect(Buffer.from(again.test.images).equals(Buffer.from(data.test.images))).toBe(true);
    expect(Buffer.from(again.test.labels).equals(Buffer.from(data.test.labels))).toBe(true);
    // Timings are reported, not asserted (STYLE.md: speed targets belong in bench/).
    console.info(`fashion-mnist: first load ${firstLoadMs.toFixed(0)} ms, cached load ${secondLoadMs.toFixed(0)} ms`);
  });

  it('reads the cache directory from options, then DINOFLEET_CACHE_DIR, then the repository', () => {
    expect(fashionMnistCacheDir({ cacheDir: '/x/y' }, { DINOFLEET_CACHE_DIR: '/z' })).toBe('/x/y');
    expect(fashionMnistCacheDir({}, { DINOFLEET_CACHE_DIR: '/z' })).toBe(join('/z', 'fashion-mnist'));
    expect(fashionMnistCacheDir({}, {})).toMatch(/\.cache\/fashion-mnist\/?$/);
    expect(fashionMnistCacheDir({}, {})).not.toMatch(/packages/);
  });

  it('weighted k-NN on raw pixels: 10,000 train (1,000 per class), 2,000 test → about 0.80', () => {
    // The first 10,000 train and 2,000 test images hold 1,000 and 200 of each class (interleaved order).
    const started = performance.now();
    const accuracy = pixelKnnAccuracy(data.train, 10_000, data.test, 2000);
    console.info(`fashion-mnist: pixel k-NN accuracy ${accuracy.toFixed(4)} in ${(performance.now() - started).toFixed(0)} ms`);
    expect(accuracy).toBeGreaterThan(0.75);
    expect(accuracy).toBeLessThan(0.9);
  });
});
