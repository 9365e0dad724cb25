import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dinoHeadForward, initDinoHeadParams, type DinoHeadConfig } from './heads.ts';
import type { ParamMap } from './params.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { checkGradients } from './testing/finite-difference.ts';
import { VIT_CONFIGS, type VitConfig } from './vit-configs.ts';
import { initVitParams, interpolatePosEmbed, vitForward, type VitOutput } from './vit.ts';

const TINY = VIT_CONFIGS['vit-test-tiny'];
const SWIGLU: VitConfig = { ...TINY, name: 'tiny-swiglu', ffn: 'swiglu', ffnHiddenDim: 24, numRegisterTokens: 2 };
const ROPE: VitConfig = { ...TINY, name: 'tiny-rope', posEmbed: 'rope', qkvBias: false, numRegisterTokens: 2 };

function images(batch: number, size: number, seed: number): tf.Tensor4D {
  const rng = new Rng(seed);
  return tf.tensor4d(Float32Array.from({ length: batch * size * size }, () => rng.normal()), [batch, size, size, 1]);
}

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] as number);
}

function disposeOutput(out: VitOutput): void {
  tf.dispose([out.cls, out.patches, ...(out.registers === null ? [] : [out.registers])]);
}

describe('ViT backbone', () => {
  const params: Record<string, tf.Tensor> = {};
  beforeAll(async () => {
    await useTestBackend();
    // Non-trivial values everywhere (the reference init has zero biases and mask token).
    const rng = new Rng(7);
    for (const [name, t] of Object.entries(initVitParams(TINY, new Rng(3)))) {
      params[name] = tf.tidy(() => tf.add(t, tf.tensor(Float32Array.from({ length: t.size }, () => rng.normal() * 0.05), t.shape)));
      t.dispose();
    }
  });
  afterAll(() => tf.dispose(Object.values(params)));

  it('gives [B, D] CLS and [B, Np, D] patch tokens for 16 px and 8 px crops, without leaking tensors', () => {
    const x16 = images(2, 16, 1);
    const x8 = images(3, 8, 2);
    const before = tf.memory().numTensors;
    const global = vitForward(params, TINY, x16);
    const local = vitForward(params, TINY, x8);
    expect(global.cls.shape).toEqual([2, 16]);
    expect(global.patches.shape).toEqual([2, 16, 16]);
    expect(global.registers).toBeNull();
    expect(local.cls.shape).toEqual([3, 16]);
    expect(local.patches.shape).toEqual([3, 4, 16]);
    expect(tf.memory().numTensors - before).toBe(4);
    // After the final LayerNorm (weight ≈ 1, bias ≈ 0) each token has mean ≈ bias mean, spread ≈ 1.
    const { variance } = tf.moments(global.patches, -1);
    for (const v of values(variance)) expect(v).toBeGreaterThan(0.5);
    disposeOutput(global);
    disposeOutput(local);
    tf.dispose([x16, x8, variance]);
  });

  it('rejects crops that are not whole patches and masks of the wrong shape', () => {
    const x = tf.zeros<tf.Rank.R4>([1, 10, 10, 1]);
    expect(() => vitForward(params, TINY, x)).toThrow(/multiple of patchSize 4/);
    const x16 = tf.zeros<tf.Rank.R4>([1, 16, 16, 1]);
    expect(() => vitForward(params, TINY, x16, { masks: tf.zeros([1, 4]) })).toThrow(/expected \[1, 16\]/);
    tf.dispose([x, x16]);
  });

  it('interpolates position embeddings: identity at the native grid, PyTorch bicubic elsewhere', () => {
    const d = 3;
    // Table value = column index, the same in every channel: a ramp along the width.
    const ramp = tf.tensor2d(Array.from({ length: 16 * d }, (_, i) => Math.floor(i / d) % 4), [16, d]);
    expect(interpolatePosEmbed(ramp, 4, 4, 4)).toBe(ramp);
    // 4 → 2: source columns 0.5 and 2.5, taps (−0.09375, 0.59375, 0.59375, −0.09375) with the
    // out-of-range tap clamped to the border: 0.59375 − 2·0.09375 = 0.40625 and 3 − 0.40625.
    const down = interpolatePosEmbed(ramp, 4, 2, 2);
    expect(down.shape).toEqual([4, d]);
    [0.40625, 0.40625, 0.40625, 2.59375, 2.59375, 2.59375, 0.40625, 0.40625, 0.40625, 2.59375, 2.59375, 2.59375].forEach(
      (v, i) => expect(down.dataSync()[i]).toBeCloseTo(v, 6),
    );
    // Weights sum to 1: a constant table stays constant, also when upsampling 4 → 8 × 6.
    const constant = tf.fill<tf.Rank.R2>([16, d], 1.5);
    const up = interpolatePosEmbed(constant, 4, 8, 6);
    expect(up.shape).toEqual([48, d]);
    for (const v of values(up)) expect(v).toBeCloseTo(1.5, 5);
    tf.dispose([ramp, down, constant, up]);
  });

  it('masking: an all-zero mask is the unmasked forward; masked patches ignore their pixels, unmasked do not', () => {
    const x = images(2, 16, 11);
    const plain = vitForward(params, TINY, x);
    const zeros = tf.zeros<tf.Rank.R2>([2, 16]);
    const unmasked = vitForward(params, TINY, x, { masks: zeros });
    expect(maxAbsDiff(plain.cls, unmasked.cls)).toBe(0);
    expect(maxAbsDiff(plain.patches, unmasked.patches)).toBe(0);

    // Fully masked: two different images give identical outputs.
    const ones = tf.ones<tf.Rank.R2>([2, 16]);
    const other = images(2, 16, 12);
    const a = vitForward(params, TINY, x, { masks: ones });
    const b = vitForward(params, TINY, other, { masks: ones });
    expect(maxAbsDiff(a.cls, b.cls)).toBe(0);
    expect(maxAbsDiff(a.patches, b.patches)).toBe(0);
    expect(maxAbsDiff(a.cls, plain.cls)).toBeGreaterThan(1e-3);

    // Mask only patch 5 (grid row 1, col 1 = pixels [4, 8) × [4, 8)); perturb that patch, then patch 0.
    const maskOne = tf.tensor2d([Array.from({ length: 16 }, (_, i) => (i === 5 ? 1 : 0)), Array<number>(16).fill(0)]);
    const bump = (row: number, col: number): tf.Tensor4D =>
      tf.tidy(() => {
        const delta = tf.buffer([2, 16, 16, 1]);
        for (let r = 0; r < 4; r++) for (let c = 0; c < 4; c++) delta.set(3, 0, row * 4 + r, col * 4 + c, 0);
        return tf.add(x, delta.toTensor());
      });
    const base = vitForward(params, TINY, x, { masks: maskOne });
    const inMasked = bump(1, 1);
    const inUnmasked = bump(0, 0);
    const same = vitForward(params, TINY, inMasked, { masks: maskOne });
    const changed = vitForward(params, TINY, inUnmasked, { masks: maskOne });
    expect(maxAbsDiff(base.patches, same.patches)).toBe(0);
    expect(maxAbsDiff(base.cls, same.cls)).toBe(0);
    expect(maxAbsDiff(base.cls, changed.cls)).toBeGreaterThan(1e-3);
    [plain, unmasked, a, b, base, same, changed].forEach(disposeOutput);
    tf.dispose([x, zeros, ones, other, maskOne, inMasked, inUnmasked]);
  });

  it('drop path: rate 0 is the plain forward, equal seeds reproduce, draws follow the linear rule', () => {
    const x = images(4, 16, 21);
    const plain = vitForward(params, TINY, x);
    const zeroRate = vitForward(params, TINY, x, { dropPath: { rate: 0, rng: new Rng(5) } });
    expect(maxAbsDiff(plain.cls, zeroRate.cls)).toBe(0);
    expect(maxAbsDiff(plain.patches, zeroRate.patches)).toBe(0);

    const rngA = new Rng(9);
    const first = vitForward(params, TINY, x, { dropPath: { rate: 0.5, rng: rngA } });
    const second = vitForward(params, TINY, x, { dropPath: { rate: 0.5, rng: new Rng(9) } });
    expect(maxAbsDiff(first.cls, second.cls)).toBe(0);
    expect(maxAbsDiff(first.patches, second.patches)).toBe(0);

    // depth 2: block 0 has rate 0 (no draws), block 1 rate 0.5 draws 4 samples × 2 branches.
    const reference = new Rng(9);
    const keeps: boolean[] = [];
    for (let i = 0; i < 8; i++) keeps.push(reference.bernoulli(0.5));
    expect(rngA.state()).toEqual(reference.state());
    expect(keeps.some((k) => !k)).toBe(true);
    // Every sample differs from the plain forward: dropped branches vanish, kept ones are scaled by 1/keep = 2.
    const perSample = tf.tidy(() => values(tf.max(tf.abs(tf.sub(first.cls, plain.cls)), 1)));
    for (const diff of perSample) expect(diff).toBeGreaterThan(1e-4);
    [plain, zeroRate, first, second].forEach(disposeOutput);
    x.dispose();
  });

  it('runs SwiGLU blocks with registers and RoPE blocks at both crop sizes', () => {
    for (const cfg of [SWIGLU, ROPE]) {
      const p = initVitParams(cfg, new Rng(4));
      for (const size of [16, 8]) {
        const x = images(2, size, size);
        const out = vitForward(p, cfg, x);
        expect(out.cls.shape).toEqual([2, 16]);
        expect(out.patches.shape).toEqual([2, (size / 4) ** 2, 16]);
        expect(out.registers?.shape).toEqual([2, 2, 16]);
        expect(values(out.patches).every(Number.isFinite)).toBe(true);
        disposeOutput(out);
        x.dispose();
      }
      tf.dispose(Object.values(p));
    }
  });

  it('RoPE breaks permutation equivariance: swapping two patches swaps their tokens only without positions', () => {
    const p = initVitParams(ROPE, new Rng(4));
    // At init (std 0.02) q·k ≈ 0 and attention is uniform whatever the rotation: scale q, k up.
    for (const name of ['backbone.blocks.0.attn.qkv.weight', 'backbone.blocks.1.attn.qkv.weight']) {
      const w = p[name] as tf.Tensor;
      p[name] = tf.mul(w, 25);
      w.dispose();
    }
    const x = images(1, 16, 51);
    // Swap the top-left and bottom-right 4 px patches (tokens 0 and 15).
    const swapped = tf.tidy(() => {
      const v = x.bufferSync();
      const out = tf.buffer(x.shape, 'float32', Float32Array.from(v.values));
      for (let r = 0; r < 4; r++) {
        for (let c = 0; c < 4; c++) {
          out.set(v.get(0, 12 + r, 12 + c, 0), 0, r, c, 0);
          out.set(v.get(0, r, c, 0), 0, 12 + r, 12 + c, 0);
        }
      }
      return out.toTensor() as tf.Tensor4D;
    });
    const tokenDiff = (a: VitOutput, b: VitOutput): number => {
      const ta = values(a.patches);
      const tb = values(b.patches);
      return Math.max(...ta.slice(0, 16).map((v, i) => Math.abs(v - (tb[15 * 16 + i] as number))));
    };
    // Without any position signal (learned table of zeros) the block is permutation-equivariant.
    const flatCfg: VitConfig = { ...ROPE, posEmbed: 'learned' };
    const flatParams = { ...p, 'backbone.pos_embed': tf.zeros([16, 16]) };
    const flatA = vitForward(flatParams, flatCfg, x);
    const flatB = vitForward(flatParams, flatCfg, swapped);
    expect(tokenDiff(flatA, flatB)).toBeLessThan(1e-5);
    const ropeA = vitForward(p, ROPE, x);
    const ropeB = vitForward(p, ROPE, swapped);
    expect(tokenDiff(ropeA, ropeB)).toBeGreaterThan(1e-3);
    [flatA, flatB, ropeA, ropeB].forEach(disposeOutput);
    tf.dispose([x, swapped, flatParams['backbone.pos_embed'], ...Object.values(p)]);
  });

  it('backbone + DINO head gradients match finite differences (8 px crops: interpolated positions)', () => {
    const headCfg: DinoHeadConfig = { inDim: 16, hiddenDim: 12, bottleneckDim: 6, outDim: 10, nLayers: 3, weightNorm: true };
    const head = initDinoHeadParams(headCfg, 'dino_head', new Rng(8));
    const all: ParamMap = { ...params, ...head };
    const checked = [
      'backbone.patch_embed.weight',
      'backbone.pos_embed',
      'backbone.cls_token',
      'backbone.blocks.0.attn.qkv.weight',
      'backbone.blocks.1.mlp.fc1.weight',
      'backbone.blocks.1.ls2.gamma',
      'backbone.norm.weight',
      'dino_head.mlp.0.weight',
      'dino_head.last_layer.weight',
      'dino_head.last_layer.weight_g',
    ];
    const x = images(2, 8, 31);
    const r = tf.tensor2d(Array.from({ length: 2 * 10 }, (_, i) => Math.sin(i + 1)), [2, 10]);
    const loss = (...inputs: tf.Tensor[]): tf.Scalar => {
      const overridden: Record<string, tf.Tensor> = { ...all };
      checked.forEach((name, i) => (overridden[name] = inputs[i] as tf.Tensor));
      const out = vitForward(overridden, TINY, x);
      const logits = dinoHeadForward(overridden, 'dino_head', headCfg, out.cls);
      // Patch tokens enter the loss too, so every path is exercised.
      return tf.add(tf.sum(tf.mul(logits, r)), tf.mul(tf.sum(tf.square(out.patches)), 1e-3));
    };
    const { mismatches, checked: n } = checkGradients(loss, checked.map((name) => all[name] as tf.Tensor), {
      samplesPerInput: 4,
      step: 1e-2,
    });
    expect(n).toBeGreaterThan(30);
    expect(mismatches).toEqual([]);
    tf.dispose([x, r, ...Object.values(head)]);
  });

  it('SwiGLU and RoPE block gradients match finite differences', () => {
    for (const [cfg, names] of [
      [SWIGLU, ['backbone.blocks.0.mlp.w12.weight', 'backbone.blocks.1.mlp.w3.weight', 'backbone.register_tokens']],
      [ROPE, ['backbone.blocks.0.attn.qkv.weight', 'backbone.blocks.1.attn.proj.weight']],
    ] as const) {
      const p = initVitParams(cfg, new Rng(12));
      const x = images(2, 8, 41);
      const loss = (...inputs: tf.Tensor[]): tf.Scalar => {
        const overridden: Record<string, tf.Tensor> = { ...p };
        names.forEach((name, i) => (overridden[name] = inputs[i] as tf.Tensor));
        const out = vitForward(overridden, cfg, x);
        return tf.add(tf.sum(tf.mul(out.cls, tf.sin(tf.reshape(tf.range(0, 32), [2, 16])))), tf.mul(tf.sum(tf.sin(out.patches)), 0.1));
      };
      const { mismatches } = checkGradients(loss, names.map((name) => p[name] as tf.Tensor), { samplesPerInput: 4 });
      expect(mismatches).toEqual([]);
      tf.dispose([x, ...Object.values(p)]);
    }
  });
});
