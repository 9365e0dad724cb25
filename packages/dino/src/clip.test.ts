import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { clipByGlobalNorm, globalNorm } from './clip.ts';
import type { GradMap } from './params.ts';
import { useTestBackend } from './testing/backend.ts';

function grads(): GradMap {
  return {
    'backbone.blocks.0.attn.qkv.weight': tf.tensor2d([[3, 0], [0, 4]]),
    'backbone.norm.bias': tf.tensor1d([1, -2, 2]),
    'dino_head.last_layer.weight': tf.tensor1d([12]),
  };
}
// √(9 + 16 + 1 + 4 + 4 + 144) = √178
const NORM = Math.sqrt(178);

function dispose(g: GradMap): void {
  for (const t of Object.values(g)) t.dispose();
}

describe('global-norm gradient clipping', () => {
  beforeAll(() => useTestBackend());

  it('computes the global L2 norm by hand, independent of insertion order', () => {
    const g = grads();
    expect(globalNorm(g)).toBeCloseTo(NORM, 5);
    const reversed = Object.fromEntries(Object.entries(g).reverse());
    expect(globalNorm(reversed)).toBe(globalNorm(g));
    expect(globalNorm({})).toBe(0);
    dispose(g);
  });

  it('scales above maxNorm by maxNorm / (norm + 1e-6) and leaks nothing', () => {
    const g = grads();
    const before = tf.memory().numTensors;
    const { grads: clipped, norm } = clipByGlobalNorm(g, 3);
    expect(norm).toBeCloseTo(NORM, 5);
    expect(globalNorm(clipped)).toBeCloseTo(3, 5);
    const coef = 3 / (norm + 1e-6);
    Array.from(clipped['backbone.norm.bias']?.dataSync() ?? []).forEach((x, i) =>
      expect(x).toBeCloseTo([1, -2, 2][i]! * coef, 6),
    );
    // inputs are untouched
    expect(Array.from(g['dino_head.last_layer.weight']?.dataSync() ?? [])).toEqual([12]);
    expect(tf.memory().numTensors).toBe(before + 3);
    dispose(clipped);
    expect(tf.memory().numTensors).toBe(before);
    dispose(g);
  });

  it('leaves gradients unchanged at or below maxNorm', () => {
    const g = grads();
    const { grads: same, norm } = clipByGlobalNorm(g, 20);
    expect(norm).toBeCloseTo(NORM, 5);
    for (const [name, t] of Object.entries(g)) {
      expect(Array.from(same[name]?.dataSync() ?? [])).toEqual(Array.from(t.dataSync()));
    }
    dispose(same);
    dispose(g);
    expect(() => clipByGlobalNorm({}, 0)).toThrow(RangeError);
  });
});
