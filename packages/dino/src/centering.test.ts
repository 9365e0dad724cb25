import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { centeredTeacherProbs, teacherLogitSums, updateCenter } from './centering.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';

function randn(shape: [number, number], seed: number, scale = 1): tf.Tensor2D {
  const rng = new Rng(seed);
  return tf.tensor2d(Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal() * scale), shape);
}

describe('DINO centering', () => {
  beforeAll(() => useTestBackend());

  it('centeredTeacherProbs is softmax((t − c)/τ) per row', () => {
    const logits = randn([3, 4], 1);
    const center = tf.tensor1d([0.5, -0.25, 0, 1]);
    const probs = centeredTeacherProbs(logits, center, 0.5).arraySync();
    const c = center.arraySync();
    logits.arraySync().forEach((row, i) => {
      const z = row.map((v, k) => (v - c[k]!) / 0.5);
      const m = Math.max(...z);
      const e = z.map((v) => Math.exp(v - m));
      const s = e.reduce((a, b) => a + b, 0);
      e.forEach((v, k) => expect(probs[i]![k]).toBeCloseTo(v / s, 6));
    });
  });

  it('stays finite and normalised for large logits and a small temperature', () => {
    const probs = centeredTeacherProbs(randn([4, 6], 2, 50), tf.zeros([6]), 0.04);
    const rows = tf.sum(probs, 1).dataSync();
    rows.forEach((r) => expect(r).toBeCloseTo(1, 5));
    expect(Array.from(probs.dataSync()).every(Number.isFinite)).toBe(true);
  });

  it('teacherLogitSums gives column sums and the row count', () => {
    const { sum, count } = teacherLogitSums(tf.tensor2d([[1, 2], [3, -4], [0.5, 0]]));
    expect(count).toBe(3);
    expect(Array.from(sum)).toEqual([4.5, -2]);
  });

  it('updateCenter is m·c + (1 − m)·sum/count (hand computed)', () => {
    const next = updateCenter(Float32Array.from([1, 2]), Float32Array.from([4, 8]), 2, 0.9);
    // 0.9·1 + 0.1·2 = 1.1, 0.9·2 + 0.1·4 = 2.2
    expect(next[0]).toBeCloseTo(1.1, 6);
    expect(next[1]).toBeCloseTo(2.2, 6);
    expect(Array.from(updateCenter(Float32Array.from([3]), Float32Array.from([6]), 3, 0))).toEqual([2]);
    expect(Array.from(updateCenter(Float32Array.from([3]), Float32Array.from([6]), 3, 1))).toEqual([3]);
  });

  it('summed per-rank sums give the same center as one rank on the whole batch', () => {
    const logits = randn([6, 3], 3);
    const whole = teacherLogitSums(logits);
    const a = teacherLogitSums(tf.slice(logits, [0, 0], [2, 3]));
    const b = teacherLogitSums(tf.slice(logits, [2, 0], [4, 3]));
    const reduced = a.sum.map((v, i) => v + b.sum[i]!);
    const center = Float32Array.from([0.1, 0.2, 0.3]);
    const split = updateCenter(center, reduced, a.count + b.count, 0.9);
    const single = updateCenter(center, whole.sum, whole.count, 0.9);
    split.forEach((v, i) => expect(v).toBeCloseTo(single[i]!, 6));
  });

  it('rejects bad inputs', () => {
    expect(() => updateCenter(new Float32Array(2), new Float32Array(3), 1, 0.9)).toThrow(RangeError);
    expect(() => updateCenter(new Float32Array(2), new Float32Array(2), 0, 0.9)).toThrow(RangeError);
    expect(() => centeredTeacherProbs(randn([2, 3], 4), tf.zeros([2]), 0.1)).toThrow(RangeError);
  });
});
