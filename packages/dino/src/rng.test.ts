import { describe, expect, it } from 'vitest';
import { Rng } from './rng.ts';

describe('Rng', () => {
  it('is reproducible for a seed and differs between seeds', () => {
    const a = new Rng(42), b = new Rng(42), c = new Rng(43);
    const sa = Array.from({ length: 8 }, () => a.nextUint32());
    expect(Array.from({ length: 8 }, () => b.nextUint32())).toEqual(sa);
    expect(Array.from({ length: 8 }, () => c.nextUint32())).not.toEqual(sa);
  });

  it('gives uniform floats with the right mean and normals with unit variance', () => {
    const rng = new Rng(7);
    const n = 200_000;
    let sum = 0, sumSq = 0, nsum = 0;
    for (let i = 0; i < n; i++) {
      const u = rng.uniform();
      if (u < 0 || u >= 1) throw new Error(`uniform() out of range: ${u}`);
      sum += u;
      const z = rng.normal();
      nsum += z;
      sumSq += z * z;
    }
    expect(sum / n).toBeCloseTo(0.5, 2);
    expect(nsum / n).toBeCloseTo(0, 1);
    expect(sumSq / n).toBeCloseTo(1, 1);
  });

  it('round-trips its state', () => {
    const rng = new Rng(3);
    rng.uniform();
    const copy = Rng.fromState(rng.state());
    expect(copy.nextUint32()).toBe(rng.nextUint32());
  });

  it('truncated normals stay within two standard deviations', () => {
    const rng = new Rng(5);
    for (let i = 0; i < 10_000; i++) expect(Math.abs(rng.truncatedNormal(0.02))).toBeLessThanOrEqual(0.04);
  });
});
