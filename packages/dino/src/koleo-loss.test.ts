import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { koleoLoss } from './koleo-loss.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

function randn(shape: [number, number], seed: number, scale = 1): tf.Tensor2D {
  const rng = new Rng(seed);
  return tf.tensor2d(Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal() * scale), shape);
}

/** dinov2's KoLeoLoss transcribed in double precision (F.normalize, argmax, PairwiseDistance). */
function referenceKoleo(x: number[][], eps = 1e-8): number {
  const unit = x.map((row) => {
    const n = Math.max(Math.hypot(...row), eps);
    return row.map((v) => v / n);
  });
  const dot = (a: number[], b: number[]): number => a.reduce((acc, v, i) => acc + v * b[i]!, 0);
  let sum = 0;
  unit.forEach((row, i) => {
    let best = -1, bestDot = -Infinity;
    unit.forEach((other, j) => {
      const d = i === j ? -1 : dot(row, other);
      if (d > bestDot) {
        best = j;
        bestDot = d;
      }
    });
    const distance = Math.hypot(...row.map((v, c) => v - unit[best]![c]! + eps));
    sum += Math.log(distance + eps);
  });
  return -sum / x.length;
}

const allFinite = (t: tf.Tensor): boolean => Array.from(t.dataSync()).every(Number.isFinite);

describe('koleoLoss', () => {
  beforeAll(() => useTestBackend());

  it('is −log √2 for two orthogonal rows (hand computed)', () => {
    const loss = koleoLoss(tf.tensor2d([[3, 0], [0, 0.5]])).dataSync()[0]!;
    expect(loss).toBeCloseTo(-Math.log(Math.SQRT2), 6);
  });

  it('matches dinov2 transcribed in double precision', () => {
    const x = randn([6, 4], 1, 2);
    expect(koleoLoss(x).dataSync()[0]).toBeCloseTo(referenceKoleo(x.arraySync()), 5);
  });

  it('has gradients matching finite differences', () => {
    const x = randn([5, 3], 2);
    const { mismatches, checked } = checkGradients((a) => koleoLoss(a as tf.Tensor2D), [x], {
      samplesPerInput: 15,
      step: 1e-3,
    });
    expect(checked).toBe(15);
    expect(mismatches).toEqual([]);
  });

  it('is 0 with a zero gradient for a batch of one', () => {
    const x = tf.tensor2d([[1, 2, 3]]);
    expect(koleoLoss(x).dataSync()[0]).toBe(0);
    const g = tf.grad((a) => koleoLoss(a as tf.Tensor2D))(x);
    expect(Array.from(g.dataSync())).toEqual([0, 0, 0]);
  });

  it('stays finite, value and gradient, for duplicate and zero rows', () => {
    const duplicates = tf.tensor2d([[1, 2, 3], [1, 2, 3], [0, 1, 0]]);
    const value = koleoLoss(duplicates).dataSync()[0]!;
    // the duplicates' distance is sqrt(0 + eps²) = eps: −log(2 eps) each
    const third = Math.SQRT2 * Math.sqrt(1 - 2 / Math.sqrt(14));
    expect(value).toBeCloseTo(-(2 * Math.log(2e-8) + Math.log(third + 1e-8)) / 3, 3);
    expect(allFinite(tf.grad((a) => koleoLoss(a as tf.Tensor2D))(duplicates))).toBe(true);
    const withZero = tf.tensor2d([[0, 0, 0], [1, 0, 0], [0, 1, 0]]);
    expect(Number.isFinite(koleoLoss(withZero).dataSync()[0])).toBe(true);
    expect(allFinite(tf.grad((a) => koleoLoss(a as tf.Tensor2D))(withZero))).toBe(true);
  });
});
