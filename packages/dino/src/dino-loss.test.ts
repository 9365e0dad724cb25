import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { dinoCrossEntropyLoss, softCrossEntropy } from './dino-loss.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

function randn(shape: [number, number], seed: number, scale = 1): tf.Tensor2D {
  const rng = new Rng(seed);
  return tf.tensor2d(Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal() * scale), shape);
}

/** Row-wise softmax in double precision. */
function softmaxRows(rows: number[][], temp: number): number[][] {
  return rows.map((row) => {
    const max = Math.max(...row.map((v) => v / temp));
    const e = row.map((v) => Math.exp(v / temp - max));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / z);
  });
}

/** DINO's DINOLoss.forward as a plain double-precision loop. */
function referenceDinoLoss(student: number[][], teacher: number[][], nGlobal: number, nCrops: number, temp: number): number {
  const batch = teacher.length / nGlobal;
  const probs = softmaxRows(student, temp);
  let total = 0;
  let pairs = 0;
  for (let iq = 0; iq < nGlobal; iq++) {
    for (let v = 0; v < nCrops; v++) {
      if (v === iq) continue;
      let sum = 0;
      for (let b = 0; b < batch; b++) {
        const t = teacher[iq * batch + b]!;
        const p = probs[v * batch + b]!;
        for (let k = 0; k < t.length; k++) sum -= t[k]! * Math.log(p[k]!);
      }
      total += sum / batch;
      pairs++;
    }
  }
  return total / pairs;
}

describe('dinoCrossEntropyLoss', () => {
  beforeAll(() => useTestBackend());

  it('is log K for a uniform student, whatever the teacher', () => {
    const teacher = tf.softmax(randn([4, 5], 1));
    const loss = dinoCrossEntropyLoss(tf.zeros([6, 5]), teacher, { nGlobal: 2, nCrops: 3, studentTemp: 0.1 });
    expect(loss.dataSync()[0]).toBeCloseTo(Math.log(5), 5);
  });

  it('matches the reference double loop over (teacher crop, other student crop) pairs', () => {
    const batch = 3, k = 4, nGlobal = 2, nCrops = 5;
    const student = randn([nCrops * batch, k], 2, 0.3);
    const teacher = tf.softmax(tf.div<tf.Tensor2D>(randn([nGlobal * batch, k], 3), 0.5));
    const loss = dinoCrossEntropyLoss(student, teacher, { nGlobal, nCrops, studentTemp: 0.1 }).dataSync()[0]!;
    const expected = referenceDinoLoss(
      student.arraySync(), teacher.arraySync(), nGlobal, nCrops, 0.1,
    );
    expect(loss).toBeCloseTo(expected, 4);
  });

  it('handles crops = globals (only the two cross-global pairs)', () => {
    const student = randn([4, 3], 4);
    const teacher = tf.softmax(randn([4, 3], 5));
    const loss = dinoCrossEntropyLoss(student, teacher, { nGlobal: 2, nCrops: 2, studentTemp: 0.5 }).dataSync()[0]!;
    expect(loss).toBeCloseTo(referenceDinoLoss(student.arraySync(), teacher.arraySync(), 2, 2, 0.5), 5);
  });

  it('has gradients matching finite differences for the student and none for the teacher', () => {
    const student = randn([6, 4], 6);
    const teacher = tf.softmax(randn([4, 4], 7));
    const opts = { nGlobal: 2, nCrops: 3, studentTemp: 0.5 };
    const { mismatches, checked } = checkGradients(
      (s) => dinoCrossEntropyLoss(s as tf.Tensor2D, teacher, opts),
      [student],
      { samplesPerInput: 24 },
    );
    expect(checked).toBe(24);
    expect(mismatches).toEqual([]);
    const [, teacherGrad] = tf.grads((s, t) => dinoCrossEntropyLoss(s as tf.Tensor2D, t as tf.Tensor2D, opts))([
      student,
      teacher,
    ]);
    expect(Array.from(teacherGrad!.dataSync()).every((g) => g === 0)).toBe(true);
  });

  it('rejects inconsistent shapes', () => {
    const teacher = tf.softmax(randn([4, 3], 8));
    expect(() => dinoCrossEntropyLoss(randn([5, 3], 9), teacher, { nGlobal: 2, nCrops: 3, studentTemp: 0.1 })).toThrow(
      RangeError,
    );
    const oneCrop = { nGlobal: 1, nCrops: 1, studentTemp: 0.1 };
    expect(() => dinoCrossEntropyLoss(randn([2, 3], 9), tf.slice(teacher, [0, 0], [2, 3]), oneCrop)).toThrow(RangeError);
  });
});

describe('softCrossEntropy', () => {
  beforeAll(() => useTestBackend());

  it('is −Σ t log softmax(s/τ) per row', () => {
    const student = randn([3, 4], 10);
    const teacher = tf.softmax(randn([3, 4], 11));
    const got = softCrossEntropy(student, teacher, 0.2).dataSync();
    const p = softmaxRows(student.arraySync(), 0.2);
    teacher.arraySync().forEach((t, i) => {
      const expected = -t.reduce((acc, tk, k) => acc + tk * Math.log(p[i]![k]!), 0);
      expect(got[i]).toBeCloseTo(expected, 4);
    });
  });
});
