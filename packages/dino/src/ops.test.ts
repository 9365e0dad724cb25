import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention, gelu, layerNorm, linear } from './ops.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

function randn(shape: number[], seed: number, scale = 1): tf.Tensor {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => rng.normal() * scale), shape);
}

describe('layer primitives', () => {
  beforeAll(() => useTestBackend());

  it('linear matches a hand computation and its gradients match finite differences', () => {
    const y = linear(tf.tensor2d([[1, 2]]), tf.tensor2d([[1, 0, 2], [3, 1, -1]]), tf.tensor1d([0.5, 0, 1]));
    expect(Array.from(y.dataSync())).toEqual([7.5, 2, 1]);
    const x = randn([3, 4], 1), w = randn([4, 5], 2), b = randn([5], 3);
    const r = randn([3, 5], 4);
    const { mismatches, checked } = checkGradients(
      (xx, ww, bb) => tf.sum(tf.mul(linear(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D), r)),
      [x, w, b],
    );
    expect(checked).toBeGreaterThan(20);
    expect(mismatches).toEqual([]);
  });

  it('gelu matches erf-GELU values', () => {
    const y = gelu(tf.tensor1d([-3, -1, 0, 1, 3])).dataSync();
    // 0.5·x·(1 + erf(x/√2))
    const expected = [-0.0040496, -0.1586553, 0, 0.8413447, 2.9959503];
    expected.forEach((e, i) => expect(y[i]).toBeCloseTo(e, 5));
  });

  it('layerNorm normalises rows and has correct gradients', () => {
    const x = randn([4, 6], 5, 3);
    const y = layerNorm(x as tf.Tensor2D, tf.ones([6]), tf.zeros([6]));
    const { mean, variance } = tf.moments(y, -1);
    mean.dataSync().forEach((m) => expect(m).toBeCloseTo(0, 5));
    variance.dataSync().forEach((v) => expect(v).toBeCloseTo(1, 3));
    const g = randn([6], 6), bt = randn([6], 7), r = randn([4, 6], 8);
    const { mismatches } = checkGradients(
      (xx, gg, bb) => tf.sum(tf.mul(layerNorm(xx as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D), r)),
      [x, g, bt],
    );
    expect(mismatches).toEqual([]);
  });

  it('attention equals a per-head loop in plain TypeScript', () => {
    const batch = 2, tokens = 3, heads = 2, dim = 4, hd = dim / heads;
    const qkv = randn([batch * tokens, 3 * dim], 9);
    const out = attention(qkv as tf.Tensor2D, batch, tokens, heads).arraySync();
    const q = qkv.arraySync() as number[][];
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let i = 0; i < tokens; i++) {
          const row = q[b * tokens + i]!;
          const scores = Array.from({ length: tokens }, (_, j) => {
            const other = q[b * tokens + j]!;
            let s = 0;
            for (let c = 0; c < hd; c++) s += row[h * hd + c]! * other[dim + h * hd + c]!;
            return s / Math.sqrt(hd);
          });
          const mx = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - mx));
          const z = e.reduce((a, c) => a + c, 0);
          for (let c = 0; c < hd; c++) {
            let v = 0;
            for (let j = 0; j < tokens; j++) v += (e[j]! / z) * q[b * tokens + j]![2 * dim + h * hd + c]!;
            expect(out[b * tokens + i]![h * hd + c]).toBeCloseTo(v, 5);
          }
        }
      }
    }
  });
});
