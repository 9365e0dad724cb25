import { describe, expect, it } from 'vitest';
import { blockMask, sampleBatchMasks } from './block-mask.ts';
import { Rng } from './rng.ts';

const count = (mask: Uint8Array): number => mask.reduce((a, b) => a + b, 0);

describe('blockMask', () => {
  it('never exceeds the target and mostly reaches it on a 14×14 grid', () => {
    const rng = new Rng(1);
    let exact = 0, covered = 0, wanted = 0;
    for (let trial = 0; trial < 200; trial++) {
      const target = 10 + (trial % 90);
      const mask = blockMask(rng, 14, 14, target, { maxBlock: 98 });
      expect(mask.length).toBe(196);
      expect(count(mask)).toBeLessThanOrEqual(target);
      if (count(mask) === target) exact++;
      covered += count(mask);
      wanted += target;
    }
    // dinov2's MaskingGenerator (Python, same settings, 2000 draws) hits the target exactly
    // 92% of the time, stopping a few patches short otherwise.
    expect(exact / 200).toBeGreaterThan(0.8);
    expect(covered / wanted).toBeGreaterThan(0.98);
  });

  it('masks rectangles: area 9 at aspect 1 is one filled 3×3 square', () => {
    const rng = new Rng(2);
    for (let trial = 0; trial < 10; trial++) {
      const mask = blockMask(rng, 8, 8, 9, { minBlock: 9, minAspect: 1 });
      const cells = Array.from(mask.keys()).filter((i) => mask[i] === 1);
      expect(cells.length).toBe(9);
      const top = Math.floor(cells[0]! / 8), left = cells[0]! % 8;
      expect(cells).toEqual([0, 1, 2].flatMap((i) => [0, 1, 2].map((j) => (top + i) * 8 + left + j)));
    }
  });

  it('is blocky: masked patches mostly have masked neighbours', () => {
    const rng = new Rng(3);
    let neighbours = 0, masked = 0;
    for (let trial = 0; trial < 20; trial++) {
      const mask = blockMask(rng, 16, 16, 100, { maxBlock: 128 });
      mask.forEach((v, i) => {
        if (v === 0) return;
        masked++;
        const r = Math.floor(i / 16), c = i % 16;
        for (const [dr, dc] of [[0, 1], [0, -1], [1, 0], [-1, 0]] as const) {
          const rr = r + dr, cc = c + dc;
          if (rr >= 0 && rr < 16 && cc >= 0 && cc < 16 && mask[rr * 16 + cc] === 1) neighbours++;
        }
      });
    }
    // A random scatter of 100 / 256 would give ~1.5 masked neighbours on average.
    expect(neighbours / masked).toBeGreaterThan(2.8);
  });

  it('is deterministic under a seed', () => {
    const a = blockMask(new Rng(5), 8, 8, 20);
    expect(Array.from(blockMask(new Rng(5), 8, 8, 20))).toEqual(Array.from(a));
    expect(Array.from(blockMask(new Rng(6), 8, 8, 20))).not.toEqual(Array.from(a));
  });

  it('terminates on tiny grids and any target, within bounds', () => {
    const rng = new Rng(7);
    for (const [h, w] of [[1, 1], [1, 6], [6, 1], [2, 2], [3, 2], [4, 4]] as const) {
      for (let target = 0; target <= h * w + 2; target++) {
        const mask = blockMask(rng, h, w, target);
        expect(mask.length).toBe(h * w);
        expect(count(mask)).toBeLessThanOrEqual(Math.min(target, h * w));
      }
    }
    // Blocks must be strictly inside the grid (as BEiT): a grid with a side of 1 is never masked.
    expect(count(blockMask(rng, 1, 6, 3))).toBe(0);
    // A 4×4 grid does get masked.
    let masked = 0;
    for (let i = 0; i < 20; i++) masked += count(blockMask(rng, 4, 4, 6));
    expect(masked).toBeGreaterThan(0);
  });

  it('gives zero masks for a zero target', () => {
    expect(count(blockMask(new Rng(8), 10, 10, 0))).toBe(0);
  });
});

describe('sampleBatchMasks', () => {
  it('masks floor(B·p) images with ratios spread over [min, max] and weights 1/count', () => {
    const batch = 8, gh = 16, gw = 16, np = gh * gw;
    const out = sampleBatchMasks(new Rng(11), batch, gh, gw, { ratioMin: 0.1, ratioMax: 0.5, probability: 0.5 });
    expect(out.masks.length).toBe(batch * np);
    const counts = Array.from({ length: batch }, (_, b) => count(out.masks.subarray(b * np, (b + 1) * np)));
    const maskedCounts = counts.filter((c) => c > 0).sort((a, b) => a - b);
    expect(out.nMaskedImages).toBe(4);
    expect(maskedCounts.length).toBe(4);
    // Image i of 4 draws its ratio from [0.1 + 0.1 i, 0.1 + 0.1 (i + 1)]; targets floor(256 r).
    maskedCounts.forEach((c, i) => {
      expect(c).toBeGreaterThanOrEqual(Math.floor(np * (0.1 + 0.1 * i)) - 1);
      expect(c).toBeLessThanOrEqual(Math.floor(np * (0.1 + 0.1 * (i + 1))));
    });
    // maskedIndices: ascending, exactly the ones of masks
    const ones = Array.from(out.masks.keys()).filter((i) => out.masks[i] === 1);
    expect(Array.from(out.maskedIndices)).toEqual(ones);
    // weights: 1/count of the index's image; they sum to 1 per masked image
    out.maskedIndices.forEach((idx, j) => {
      expect(out.weights[j]).toBeCloseTo(1 / counts[Math.floor(idx / np)]!, 7);
    });
    expect(out.weights.reduce((a, b) => a + b, 0)).toBeCloseTo(4, 4);
  });

  it('shuffles which images are masked, deterministically under a seed', () => {
    const opts = { ratioMin: 0.1, ratioMax: 0.5, probability: 0.5 };
    const a = sampleBatchMasks(new Rng(12), 16, 8, 8, opts);
    const b = sampleBatchMasks(new Rng(12), 16, 8, 8, opts);
    expect(Array.from(b.masks)).toEqual(Array.from(a.masks));
    const maskedImages = new Set<number>();
    for (let seed = 0; seed < 10; seed++) {
      const out = sampleBatchMasks(new Rng(100 + seed), 4, 8, 8, opts);
      out.maskedIndices.forEach((i) => maskedImages.add(Math.floor(i / 64)));
    }
    expect(maskedImages.size).toBe(4);
  });

  it('handles probability 0 and 1 and tiny grids', () => {
    const none = sampleBatchMasks(new Rng(13), 6, 4, 4, { ratioMin: 0.1, ratioMax: 0.5, probability: 0 });
    expect(none.maskedIndices.length).toBe(0);
    expect(none.nMaskedImages).toBe(0);
    const all = sampleBatchMasks(new Rng(14), 6, 16, 16, { ratioMin: 0.1, ratioMax: 0.5, probability: 1 });
    expect(all.nMaskedImages).toBe(6);
    for (const [h, w] of [[2, 2], [4, 4], [1, 3]] as const) {
      const tiny = sampleBatchMasks(new Rng(15), 8, h, w, { ratioMin: 0.1, ratioMax: 0.5, probability: 0.5 });
      expect(tiny.masks.length).toBe(8 * h * w);
      expect(tiny.weights.length).toBe(tiny.maskedIndices.length);
      expect(tiny.nMaskedImages).toBeLessThanOrEqual(4);
    }
  });
});
