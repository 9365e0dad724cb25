import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { sampleBatchMasks } from './block-mask.ts';
import { ibotPatchLoss } from './ibot-loss.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

function randn(shape: [number, number], seed: number, scale = 1): tf.Tensor2D {
  const rng = new Rng(seed);
  return tf.tensor2d(Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal() * scale), shape);
}

describe('ibotPatchLoss', () => {
  beforeAll(() => useTestBackend());

  it('matches −Σ_m w_m Σ_k t log softmax(s/τ) / nImages computed in a double loop', () => {
    // 5 masked patches: 2 in one image, 3 in another; 4 images in the batch.
    const student = randn([5, 4], 1);
    const teacher = tf.softmax(randn([5, 4], 2));
    const weights = [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3];
    const loss = ibotPatchLoss(student, teacher, tf.tensor1d(weights), { studentTemp: 0.1, nImages: 4 });
    const t = teacher.arraySync();
    let expected = 0;
    student.arraySync().forEach((row, m) => {
      const z = row.map((v) => v / 0.1);
      const mx = Math.max(...z);
      const lse = mx + Math.log(z.reduce((acc, v) => acc + Math.exp(v - mx), 0));
      expected -= weights[m]! * t[m]!.reduce((acc, tk, k) => acc + tk * (z[k]! - lse), 0);
    });
    expect(loss.dataSync()[0]).toBeCloseTo(expected / 4, 4);
  });

  it('weights each masked image equally: a uniform student gives log K · maskedImages / nImages', () => {
    const masks = sampleBatchMasks(new Rng(3), 8, 6, 6, { ratioMin: 0.1, ratioMax: 0.5, probability: 0.5 });
    const m = masks.maskedIndices.length;
    expect(m).toBeGreaterThan(0);
    const k = 7;
    const teacher = tf.softmax(randn([m, k], 4));
    const loss = ibotPatchLoss(tf.zeros([m, k]), teacher, tf.tensor1d(masks.weights), { studentTemp: 0.1, nImages: 8 });
    expect(loss.dataSync()[0]).toBeCloseTo((Math.log(k) * masks.nMaskedImages) / 8, 4);
  });

  it('has gradients matching finite differences for the student and none for the teacher', () => {
    const student = randn([4, 3], 5);
    const teacher = tf.softmax(randn([4, 3], 6));
    const weights = tf.tensor1d([1, 0.5, 0.5, 1]);
    const opts = { studentTemp: 0.5, nImages: 3 };
    const { mismatches, checked } = checkGradients(
      (s) => ibotPatchLoss(s as tf.Tensor2D, teacher, weights, opts),
      [student],
      { samplesPerInput: 12 },
    );
    expect(checked).toBe(12);
    expect(mismatches).toEqual([]);
    const [, teacherGrad] = tf.grads((s, t) => ibotPatchLoss(s as tf.Tensor2D, t as tf.Tensor2D, weights, opts))([
      student,
      teacher,
    ]);
    expect(Array.from(teacherGrad!.dataSync()).every((g) => g === 0)).toBe(true);
  });

  it('is 0 with a zero gradient when no patch is masked', () => {
    const empty = tf.tensor2d([], [0, 3]);
    const f = (s: tf.Tensor): tf.Scalar => ibotPatchLoss(s as tf.Tensor2D, empty, tf.tensor1d([]), { studentTemp: 0.1, nImages: 2 });
    expect(f(empty).dataSync()[0]).toBe(0);
    expect(tf.grad(f)(empty).shape).toEqual([0, 3]);
  });
});
