import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { dinoHeadForward, dinoHeadParamCount, initDinoHeadParams, lastLayerWeight, type DinoHeadConfig } from './heads.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';

const SMALL: DinoHeadConfig = { inDim: 8, hiddenDim: 12, bottleneckDim: 6, outDim: 20, nLayers: 3, weightNorm: true };

function randn(shape: [number, number], seed: number): tf.Tensor2D {
  const rng = new Rng(seed);
  return tf.tensor2d(Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal()), shape);
}

describe('DINO head', () => {
  beforeAll(() => useTestBackend());

  it('counts exactly what it allocates, with the reference names and shapes', () => {
    const variants: DinoHeadConfig[] = [
      SMALL,
      { ...SMALL, weightNorm: false },
      { ...SMALL, nLayers: 1 },
      { ...SMALL, nLayers: 4 },
    ];
    for (const cfg of variants) {
      const params = initDinoHeadParams(cfg, 'ibot_head', new Rng(1));
      expect(Object.values(params).reduce((sum, t) => sum + t.size, 0)).toBe(dinoHeadParamCount(cfg));
      expect(Object.keys(params).every((name) => name.startsWith('ibot_head.'))).toBe(true);
      tf.dispose(Object.values(params));
    }
    const params = initDinoHeadParams(SMALL, 'dino_head', new Rng(1));
    expect(Object.fromEntries(Object.entries(params).map(([k, t]) => [k, t.shape]))).toEqual({
      'dino_head.mlp.0.weight': [8, 12],
      'dino_head.mlp.0.bias': [12],
      'dino_head.mlp.1.weight': [12, 12],
      'dino_head.mlp.1.bias': [12],
      'dino_head.mlp.2.weight': [12, 6],
      'dino_head.mlp.2.bias': [6],
      'dino_head.last_layer.weight': [6, 20],
      'dino_head.last_layer.weight_g': [20],
    });
    expect(Array.from(params['dino_head.last_layer.weight_g']?.dataSync() ?? [])).toEqual(Array<number>(20).fill(1));
    tf.dispose(Object.values(params));
    // DINOv2 ViT-g head: 1536 → 2048 → 2048 → 256, 65536 weight-normed prototypes.
    const dinov2 = { inDim: 1536, hiddenDim: 2048, bottleneckDim: 256, outDim: 65536, nLayers: 3, weightNorm: true };
    expect(dinoHeadParamCount(dinov2)).toBe(1536 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 256 + 256 + 256 * 65536 + 65536);
  });

  it('matches a hand computation for a one-layer head', () => {
    const cfg: DinoHeadConfig = { inDim: 2, hiddenDim: 5, bottleneckDim: 2, outDim: 3, nLayers: 1, weightNorm: true };
    const params = {
      'dino_head.mlp.0.weight': tf.tensor2d([[1, 0], [0, 2]]),
      'dino_head.mlp.0.bias': tf.tensor1d([0, 1]),
      // Prototype columns (3, 4), (1, 0), (0, −2): directions (0.6, 0.8), (1, 0), (0, −1).
      'dino_head.last_layer.weight': tf.tensor2d([[3, 1, 0], [4, 0, -2]]),
      'dino_head.last_layer.weight_g': tf.tensor1d([1, 2, 1]),
    };
    // x = (3, 1): mlp → (3, 3), normalised (1/√2, 1/√2).
    const logits = dinoHeadForward(params, 'dino_head', cfg, tf.tensor2d([[3, 1]]));
    const s = Math.SQRT1_2;
    const expected = [s * 0.6 + s * 0.8, 2 * s, -s];
    expected.forEach((v, i) => expect(logits.dataSync()[i]).toBeCloseTo(v, 5));
    tf.dispose([logits, ...Object.values(params)]);
  });

  it('weight norm: prototype directions have unit norm, and logits ignore the scale of v', () => {
    const params = initDinoHeadParams(SMALL, 'dino_head', new Rng(2));
    const w = lastLayerWeight(params, 'dino_head', SMALL);
    const norms = tf.tidy(() => tf.sqrt(tf.sum(tf.square(w), 0)).dataSync());
    expect(norms.length).toBe(20);
    for (const n of norms) expect(n).toBeCloseTo(1, 5);
    const x = randn([5, 8], 3);
    const logits = dinoHeadForward(params, 'dino_head', SMALL, x);
    expect(logits.shape).toEqual([5, 20]);
    // Unit input (after L2 normalisation) · unit prototypes: cosine similarities.
    for (const v of logits.dataSync()) expect(Math.abs(v)).toBeLessThanOrEqual(1 + 1e-5);
    const scaled = { ...params, 'dino_head.last_layer.weight': tf.mul(params['dino_head.last_layer.weight'] as tf.Tensor, 7) };
    const same = dinoHeadForward(scaled, 'dino_head', SMALL, x);
    const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(logits, same))).dataSync()[0] as number);
    expect(diff).toBeLessThan(1e-5);
    // Without weight norm the matrix is used as stored.
    const plain = { ...SMALL, weightNorm: false };
    expect(lastLayerWeight(params, 'dino_head', plain)).toBe(params['dino_head.last_layer.weight']);
    tf.dispose([w, x, logits, same, scaled['dino_head.last_layer.weight'], ...Object.values(params)]);
  });

  it('gradients match finite differences, weight_g and v included', () => {
    for (const cfg of [SMALL, { ...SMALL, weightNorm: false, nLayers: 2 }]) {
      const params = initDinoHeadParams(cfg, 'dino_head', new Rng(4));
      // Larger MLP weights than the 0.02 init so every layer's gradient is well above float noise.
      const names = Object.keys(params);
      const inputs = names.map((name, i) => {
        const t = params[name] as tf.Tensor;
        return name.endsWith('weight_g') ? t : tf.add(t, tf.mul(tf.reshape(randn([t.size, 1], 10 + i), t.shape), 0.3));
      });
      const x = randn([4, 8], 5);
      const r = randn([4, 20], 6);
      const loss = (...ts: tf.Tensor[]): tf.Scalar => {
        const p = Object.fromEntries(names.map((name, i) => [name, ts[i] as tf.Tensor]));
        return tf.sum(tf.mul(dinoHeadForward(p, 'dino_head', cfg, x), r));
      };
      const { mismatches, checked } = checkGradients(loss, inputs, { samplesPerInput: 6 });
      expect(checked).toBeGreaterThanOrEqual(30);
      expect(mismatches).toEqual([]);
      tf.dispose([x, r, ...inputs, ...Object.values(params)]);
    }
  });

  it('rejects nLayers < 1', () => {
    expect(() => initDinoHeadParams({ ...SMALL, nLayers: 0 }, 'dino_head', new Rng(1))).toThrow(/nLayers/);
  });
});
