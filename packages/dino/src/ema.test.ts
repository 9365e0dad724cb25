import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { emaUpdate } from './ema.ts';
import { useTestBackend } from './testing/backend.ts';

describe('emaUpdate', () => {
  beforeAll(() => useTestBackend());

  it('moves every teacher parameter to m·teacher + (1 − m)·student, without leaks', () => {
    const teacher = {
      'backbone.cls_token': tf.variable(tf.tensor2d([[1, 2]])),
      'dino_head.mlp.0.bias': tf.variable(tf.tensor1d([-4, 0, 10])),
    };
    const student = {
      'backbone.cls_token': tf.tensor2d([[3, -2]]),
      'dino_head.mlp.0.bias': tf.tensor1d([4, 1, 10]),
    };
    const before = tf.memory().numTensors;
    emaUpdate(teacher, student, 0.75);
    expect(tf.memory().numTensors).toBe(before);
    // 0.75·1 + 0.25·3 = 1.5, 0.75·2 + 0.25·(−2) = 1
    expect(Array.from(teacher['backbone.cls_token'].dataSync())).toEqual([1.5, 1]);
    expect(Array.from(teacher['dino_head.mlp.0.bias'].dataSync())).toEqual([-2, 0.25, 10]);
    emaUpdate(teacher, student, 0.5);
    expect(Array.from(teacher['backbone.cls_token'].dataSync())).toEqual([2.25, -0.5]);
    emaUpdate(teacher, student, 1);
    expect(Array.from(teacher['backbone.cls_token'].dataSync())).toEqual([2.25, -0.5]);
    emaUpdate(teacher, student, 0);
    expect(Array.from(teacher['backbone.cls_token'].dataSync())).toEqual([3, -2]);
    // the student is untouched
    expect(Array.from(student['dino_head.mlp.0.bias'].dataSync())).toEqual([4, 1, 10]);
    for (const t of [...Object.values(teacher), ...Object.values(student)]) t.dispose();
  });

  it('rejects a missing or misshapen student parameter before updating anything', () => {
    const teacher = { a: tf.variable(tf.tensor1d([1])), b: tf.variable(tf.tensor1d([1, 2])) };
    const missing = { a: tf.tensor1d([0]) };
    expect(() => emaUpdate(teacher, missing, 0.5)).toThrow(/no parameter b/);
    const misshapen = { a: tf.tensor1d([0]), b: tf.tensor1d([0, 0, 0]) };
    expect(() => emaUpdate(teacher, misshapen, 0.5)).toThrow(/shape/);
    expect(Array.from(teacher.a.dataSync())).toEqual([1]);
    expect(() => emaUpdate(teacher, misshapen, 1.5)).toThrow(RangeError);
    for (const t of [...Object.values(teacher), ...Object.values(missing), ...Object.values(misshapen)]) t.dispose();
  });
});
