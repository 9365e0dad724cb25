import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { attention, gatherRows, gelu, layerNorm, linear } from './ops.ts';
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

/** The plain-autodiff originals (tfjs's stock gradients): the reference the custom gradients must equal. */
const REFERENCE = {
  linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
    const y: tf.Tensor2D = tf.matMul(x, w);
    return b === undefined ? y : tf.add<tf.Tensor2D>(y, b);
  },
  gelu(x: tf.Tensor): tf.Tensor {
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
  },
  layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps = 1e-6): tf.Tensor2D {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), gamma), beta);
  },
  attention(qkv: tf.Tensor2D, batch: number, tokens: number, heads: number): tf.Tensor2D {
    const dim = qkv.shape[1] / 3;
    const headDim = dim / heads;
    const split = tf.transpose(tf.reshape(qkv, [batch, tokens, 3, heads, headDim]), [2, 0, 3, 1, 4]);
    const [q, k, v] = tf.unstack(split, 0) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
    const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim));
    const out = tf.matMul(tf.softmax(scores, -1), v);
    return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch * tokens, dim]);
  },
};

/** Max |a − b| over max |b|: a relative error for a whole tensor. */
function relativeError(a: tf.Tensor, b: tf.Tensor): number {
  const av = a.dataSync(), bv = b.dataSync();
  let diff = 0, scale = 0;
  bv.forEach((v, i) => {
    diff = Math.max(diff, Math.abs((av[i] as number) - v));
    scale = Math.max(scale, Math.abs(v));
  });
  return diff / Math.max(scale, 1e-12);
}

/**
 * Value and every input gradient of `sum(f(inputs) · r)` for the primitive and its
 * reference, compared; also checks that a gradient call inside tidy leaks no tensor.
 */
function expectMatchesReference(
  f: (...inputs: tf.Tensor[]) => tf.Tensor,
  reference: (...inputs: tf.Tensor[]) => tf.Tensor,
  inputs: tf.Tensor[],
  seed: number,
): void {
  const r = randn(f(...inputs).shape, seed);
  const loss = (g: typeof f) => (...xs: tf.Tensor[]) => tf.sum(tf.mul(g(...xs), r));
  tf.tidy(() => {
    expect(relativeError(f(...inputs), reference(...inputs))).toBeLessThan(1e-5);
    const got = tf.grads(loss(f))(inputs);
    const want = tf.grads(loss(reference))(inputs);
    expect(got.map((g) => g.shape)).toEqual(inputs.map((x) => x.shape));
    got.forEach((g, i) => expect(relativeError(g, want[i] as tf.Tensor)).toBeLessThan(1e-5));
  });
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    tf.grads(loss(f))(inputs);
    f(...inputs);
  });
  expect(tf.memory().numTensors).toBe(before);
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`layer primitives equal plain autodiff (${backend})`, () => {
    beforeAll(() => useTestBackend(backend));

    it('linear, with and without bias (values, dx, dw, db)', () => {
      expect(tf.getBackend()).toBe(backend);
      for (const [n, inDim, outDim] of [[7, 5, 9], [6, 9, 4]] as const) {
        const x = randn([n, inDim], 20), w = randn([inDim, outDim], 21), b = randn([outDim], 22);
        expectMatchesReference(
          (xx, ww, bb) => linear(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D),
          (xx, ww, bb) => REFERENCE.linear(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D),
          [x, w, b],
          23,
        );
        expectMatchesReference(
          (xx, ww) => linear(xx as tf.Tensor2D, ww as tf.Tensor2D),
          (xx, ww) => REFERENCE.linear(xx as tf.Tensor2D, ww as tf.Tensor2D),
          [x, w],
          24,
        );
      }
    });

    it('gelu (values and dx), over the range where erf bends', () => {
      expectMatchesReference(gelu, (x) => REFERENCE.gelu(x), [randn([6, 11], 30, 3)], 31);
    });

    it('layerNorm (values, dx, dγ, dβ)', () => {
      const x = randn([5, 12], 40, 2), g = randn([12], 41), bt = randn([12], 42);
      expectMatchesReference(
        (xx, gg, bb) => layerNorm(xx as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D),
        (xx, gg, bb) => REFERENCE.layerNorm(xx as tf.Tensor2D, gg as tf.Tensor1D, bb as tf.Tensor1D),
        [x, g, bt],
        43,
      );
    });

    it('attention (values and dqkv), at DINO-like token counts', () => {
      for (const [batch, tokens, heads, headDim] of [[3, 5, 2, 4], [2, 17, 3, 8]] as const) {
        const qkv = randn([batch * tokens, 3 * heads * headDim], 50 + tokens);
        expectMatchesReference(
          (x) => attention(x as tf.Tensor2D, batch, tokens, heads),
          (x) => REFERENCE.attention(x as tf.Tensor2D, batch, tokens, heads),
          [qkv],
          60 + tokens,
        );
      }
    });

    it('gatherRows: the rows, and a gradient scattered back to exactly those rows', () => {
      const x = randn([6, 3], 80);
      const idx = tf.tensor1d([4, 0, 2], 'int32');
      const r = randn([3, 3], 81);
      expect(gatherRows(x as tf.Tensor2D, idx).arraySync()).toEqual(tf.gather(x, idx).arraySync());
      const [dx] = tf.grads((xx: tf.Tensor) => tf.sum(tf.mul(gatherRows(xx as tf.Tensor2D, idx), r)))([x]);
      const grad = dx!.arraySync() as number[][];
      const rows = r.arraySync() as number[][];
      expect(grad[4]).toEqual(rows[0]);
      expect(grad[0]).toEqual(rows[1]);
      expect(grad[2]).toEqual(rows[2]);
      for (const empty of [1, 3, 5]) expect(grad[empty]).toEqual([0, 0, 0]);
    });

    it('gelu and attention gradients match finite differences', () => {
      const x = randn([3, 7], 70, 2), r = randn([3, 7], 71);
      expect(checkGradients((xx) => tf.sum(tf.mul(gelu(xx), r)), [x]).mismatches).toEqual([]);
      const qkv = randn([2 * 3, 3 * 4], 72), r2 = randn([2 * 3, 4], 73);
      const { mismatches, checked } = checkGradients(
        (xx) => tf.sum(tf.mul(attention(xx as tf.Tensor2D, 2, 3, 2), r2)),
        [qkv],
        { samplesPerInput: 72 },
      );
      expect(checked).toBe(72);
      expect(mismatches).toEqual([]);
    });
  });
}
