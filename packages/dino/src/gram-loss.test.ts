import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { gramLoss, gramWeight } from './gram-loss.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

function randn(shape: [number, number, number], seed: number, scale = 1): tf.Tensor3D {
  const rng = new Rng(seed);
  const n = shape[0] * shape[1] * shape[2];
  return tf.tensor3d(Float32Array.from({ length: n }, () => rng.normal() * scale), shape);
}

/** dinov3's GramLoss (normalized, img_level, no negative removal) in double precision. */
function referenceGram(student: number[][][], teacher: number[][][]): number {
  const unit = (rows: number[][]): number[][] =>
    rows.map((row) => {
      const n = Math.max(Math.hypot(...row), 1e-12);
      return row.map((v) => v / n);
    });
  let sum = 0, entries = 0;
  student.forEach((image, b) => {
    const s = unit(image), t = unit(teacher[b]!);
    for (let i = 0; i < s.length; i++) {
      for (let j = 0; j < s.length; j++) {
        const gs = s[i]!.reduce((acc, v, c) => acc + v * s[j]![c]!, 0);
        const gt = t[i]!.reduce((acc, v, c) => acc + v * t[j]![c]!, 0);
        sum += (gs - gt) ** 2;
        entries++;
      }
    }
  });
  return sum / entries;
}

describe('gramLoss', () => {
  beforeAll(() => useTestBackend());

  it('is 0.5 for an orthogonal student vs a collapsed teacher (hand computed)', () => {
    // student Gram = I, teacher Gram = all ones: squared errors 0, 1, 1, 0 → mean 0.5
    const loss = gramLoss(tf.tensor3d([[[2, 0], [0, 3]]]), tf.tensor3d([[[1, 0], [5, 0]]]));
    expect(loss.dataSync()[0]).toBeCloseTo(0.5, 6);
  });

  it('is 0 when patches differ only in length (the Gram is of normalised features)', () => {
    const teacher = randn([2, 3, 4], 1);
    const scales = tf.tensor3d([[[2], [0.5], [3]], [[1], [7], [0.1]]]);
    expect(gramLoss(tf.mul(teacher, scales), teacher).dataSync()[0]).toBeCloseTo(0, 6);
  });

  it('matches dinov3 transcribed in double precision (mean over all B·T·T entries)', () => {
    const s = randn([2, 4, 3], 2), t = randn([2, 4, 3], 3);
    expect(gramLoss(s, t).dataSync()[0]).toBeCloseTo(referenceGram(s.arraySync(), t.arraySync()), 6);
  });

  it('has gradients matching finite differences for the student and none for the teacher', () => {
    const s = randn([2, 3, 4], 4), t = randn([2, 3, 4], 5);
    const { mismatches, checked } = checkGradients((a) => gramLoss(a as tf.Tensor3D, t), [s], { samplesPerInput: 24 });
    expect(checked).toBe(24);
    expect(mismatches).toEqual([]);
    const [, teacherGrad] = tf.grads((a, b) => gramLoss(a as tf.Tensor3D, b as tf.Tensor3D))([s, t]);
    expect(Array.from(teacherGrad!.dataSync()).every((g) => g === 0)).toBe(true);
  });

  it('rejects mismatched shapes', () => {
    expect(() => gramLoss(randn([1, 2, 3], 6), randn([1, 3, 3], 7))).toThrow(RangeError);
  });
});

describe('gramWeight', () => {
  it('is 0 before startStep, then ramps linearly to the weight', () => {
    const opts = { startStep: 100, weight: 2, rampSteps: 4 };
    expect(gramWeight(0, opts)).toBe(0);
    expect(gramWeight(99, opts)).toBe(0);
    expect(gramWeight(100, opts)).toBeCloseTo(0.5, 12);
    expect(gramWeight(101, opts)).toBeCloseTo(1, 12);
    expect(gramWeight(103, opts)).toBe(2);
    expect(gramWeight(10_000, opts)).toBe(2);
  });

  it('is the full weight from startStep without a ramp', () => {
    expect(gramWeight(9, { startStep: 10, weight: 1 })).toBe(0);
    expect(gramWeight(10, { startStep: 10, weight: 1 })).toBe(1);
  });
});
