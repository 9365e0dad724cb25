import * as tf from '@tensorflow/tfjs-core';
import { attention, gelu, layerNorm, linear, multiHeadAttention } from './ops.ts';
import type { ParamMap } from './params.ts';
import type { Rng } from './rng.ts';
import { vitGridSize, type VitConfig } from './vit-configs.ts';

/** Options for {@link vitForward}; leaving all out gives the deterministic (teacher / eval) forward. */
export interface VitForwardOptions {
  /**
   * iBOT masks, `[B, numPatches]` float 0/1 in row-major patch order; 1 replaces that patch
   * token by `backbone.mask_token` before the position embedding is added (as in dinov2's
   * `prepare_tokens_with_masks`). @default no masking
   */
  readonly masks?: tf.Tensor2D;
  /**
   * Stochastic depth (Huang et al. 2016). Block `i` of `depth` drops each sample's residual
   * branches with probability `rate · i / (depth − 1)`, the linear rule of dinov2
   * (`drop_path_uniform: false`); kept branches are scaled by `1 / keep`. Masks are drawn
   * from `rng` on the JS side, `batch` draws per branch with a non-zero rate, attention
   * branch before FFN branch, block by block. `rate` in [0, 1). @default no drop path
   */
  readonly dropPath?: { readonly rate: number; readonly rng: Rng };
}

/** What {@link vitForward} returns; all after the final LayerNorm. */
export interface VitOutput {
  /** CLS token, `[B, D]`. */
  readonly cls: tf.Tensor2D;
  /** Patch tokens, `[B, numPatches, D]`, row-major over the patch grid. */
  readonly patches: tf.Tensor3D;
  /** Register tokens, `[B, R, D]`, or `null` when the config has none. */
  readonly registers: tf.Tensor3D | null;
}

/**
 * Fresh backbone parameters named as in params.ts, initialised as the references do:
 * - linear weights trunc-normal(0.02), biases zero (`init_weights_vit_timm`);
 * - patch embedding weight and bias U(±1/√(p²C)), PyTorch's Conv2d default that dinov2 keeps
 *   and dinov3's `PatchEmbed.reset_parameters` writes out;
 * - LayerNorm weight 1, bias 0; LayerScale gammas `layerScaleInit`;
 * - `pos_embed`, `cls_token`, `register_tokens` trunc-normal(0.02); `mask_token` zero (both repos).
 *
 * Deviation from dinov2: there is no separate CLS position (dinov2's `pos_embed[:, 0]`).
 * CLS never moves, so `cls_token + pos_cls` is one learned vector and `cls_token` absorbs it
 * (dinov2 inits cls at 1e-6 and its position at trunc-normal 0.02, so the sum starts the same);
 * DINOv3, with RoPE, has no CLS position either.
 *
 * SwiGLU blocks use dinov2's fused naming: `mlp.w12.{weight,bias}` `[D, 2H]` (gate half first,
 * then the linear half) and `mlp.w3.{weight,bias}` `[H, D]`; DINOv3's `w1`, `w2` are the two
 * column halves of `w12`.
 */
export function initVitParams(cfg: VitConfig, rng: Rng): Record<string, tf.Tensor> {
  validateConfig(cfg);
  const d = cfg.embedDim;
  const h = cfg.ffnHiddenDim;
  const grid = vitGridSize(cfg);
  const patchIn = cfg.patchSize * cfg.patchSize * cfg.inChannels;
  const params: Record<string, tf.Tensor> = {};
  const patchBound = 1 / Math.sqrt(patchIn);
  params['backbone.patch_embed.weight'] = uniformTensor([patchIn, d], patchBound, rng);
  params['backbone.patch_embed.bias'] = uniformTensor([d], patchBound, rng);
  params['backbone.cls_token'] = truncNormalTensor([1, d], 0.02, rng);
  if (cfg.numRegisterTokens > 0) {
    params['backbone.register_tokens'] = truncNormalTensor([cfg.numRegisterTokens, d], 0.02, rng);
  }
  params['backbone.mask_token'] = tf.zeros([1, d]);
  if (cfg.posEmbed === 'learned') params['backbone.pos_embed'] = truncNormalTensor([grid * grid, d], 0.02, rng);
  const linearParams = (name: string, inDim: number, outDim: number, bias: boolean): void => {
    params[`${name}.weight`] = truncNormalTensor([inDim, outDim], 0.02, rng);
    if (bias) params[`${name}.bias`] = tf.zeros([outDim]);
  };
  for (let i = 0; i < cfg.depth; i++) {
    const b = `backbone.blocks.${i}`;
    params[`${b}.norm1.weight`] = tf.ones([d]);
    params[`${b}.norm1.bias`] = tf.zeros([d]);
    linearParams(`${b}.attn.qkv`, d, 3 * d, cfg.qkvBias);
    linearParams(`${b}.attn.proj`, d, d, true);
    if (cfg.layerScaleInit !== null) params[`${b}.ls1.gamma`] = tf.fill([d], cfg.layerScaleInit);
    params[`${b}.norm2.weight`] = tf.ones([d]);
    params[`${b}.norm2.bias`] = tf.zeros([d]);
    switch (cfg.ffn) {
      case 'mlp':
        linearParams(`${b}.mlp.fc1`, d, h, true);
        linearParams(`${b}.mlp.fc2`, h, d, true);
        break;
      case 'swiglu':
        linearParams(`${b}.mlp.w12`, d, 2 * h, true);
        linearParams(`${b}.mlp.w3`, h, d, true);
        break;
    }
    if (cfg.layerScaleInit !== null) params[`${b}.ls2.gamma`] = tf.fill([d], cfg.layerScaleInit);
  }
  params['backbone.norm.weight'] = tf.ones([d]);
  params['backbone.norm.bias'] = tf.zeros([d]);
  return params;
}

/**
 * The backbone forward pass. `images` are NHWC `[B, H, W, C]` with H and W multiples of
 * `patchSize` (global crops at `imageSize`, local crops smaller). Token order is
 * `[CLS, registers…, patches…]`; activations stay 2-D `[B·T, D]` through every linear.
 * Intermediates are freed; the three outputs are new tensors the caller owns.
 */
export function vitForward(params: ParamMap, cfg: VitConfig, images: tf.Tensor4D, options: VitForwardOptions = {}): VitOutput {
  validateConfig(cfg);
  const [batch, height, width, channels] = images.shape;
  const p = cfg.patchSize;
  if (height % p !== 0 || width % p !== 0) {
    throw new Error(`vitForward: image ${height}×${width} is not a multiple of patchSize ${p} (${cfg.name})`);
  }
  if (channels !== cfg.inChannels) {
    throw new Error(`vitForward: images have ${channels} channels, ${cfg.name} expects inChannels ${cfg.inChannels}`);
  }
  const gridH = height / p;
  const gridW = width / p;
  const numPatches = gridH * gridW;
  const numPrefix = 1 + cfg.numRegisterTokens;
  const tokens = numPrefix + numPatches;
  const d = cfg.embedDim;
  const { masks, dropPath } = options;
  if (masks !== undefined && (masks.shape[0] !== batch || masks.shape[1] !== numPatches)) {
    throw new Error(`vitForward: masks have shape [${masks.shape.join(', ')}], expected [${batch}, ${numPatches}]`);
  }
  if (dropPath !== undefined && !(dropPath.rate >= 0 && dropPath.rate < 1)) {
    throw new Error(`vitForward: dropPath.rate must be in [0, 1), got ${dropPath.rate}`);
  }

  const [cls, patches, registers] = tf.tidy(() => {
    const ropeTable = cfg.posEmbed === 'rope' ? ropeTables(gridH, gridW, d / cfg.numHeads) : null;
    const patchTokens = embedPatches(params, cfg, images, masks); // [B·Np, D]
    let patchSeq = tf.reshape<tf.Rank.R3>(patchTokens, [batch, numPatches, d]);
    if (cfg.posEmbed === 'learned') {
      const pos = interpolatePosEmbed(param<tf.Tensor2D>(params, 'backbone.pos_embed'), vitGridSize(cfg), gridH, gridW);
      patchSeq = tf.add(patchSeq, pos);
    }
    let clsToken = param<tf.Tensor2D>(params, 'backbone.cls_token');
    // dinov3 adds `0 · mask_token` when unmasked so that the mask token always has a
    // (zero) gradient and every parameter appears in every gradient map.
    if (masks === undefined) clsToken = tf.add(clsToken, tf.mul(param<tf.Tensor2D>(params, 'backbone.mask_token'), 0));
    const prefix: tf.Tensor3D[] = [tf.broadcastTo<tf.Rank.R3>(tf.reshape(clsToken, [1, 1, d]), [batch, 1, d])];
    if (cfg.numRegisterTokens > 0) {
      // Registers carry no position: they are not anywhere in the image (Darcet et al. 2024).
      const regs = tf.reshape(param(params, 'backbone.register_tokens'), [1, cfg.numRegisterTokens, d]);
      prefix.push(tf.broadcastTo<tf.Rank.R3>(regs, [batch, cfg.numRegisterTokens, d]));
    }
    let x = tf.reshape<tf.Rank.R2>(tf.concat([...prefix, patchSeq], 1), [batch * tokens, d]);

    for (let i = 0; i < cfg.depth; i++) {
      const rate = dropPath === undefined || cfg.depth < 2 ? 0 : (dropPath.rate * i) / (cfg.depth - 1);
      const attnKeep = rate > 0 && dropPath !== undefined ? dropPathScale(dropPath.rng, batch, tokens, rate) : null;
      const ffnKeep = rate > 0 && dropPath !== undefined ? dropPathScale(dropPath.rng, batch, tokens, rate) : null;
      x = block(params, cfg, i, x, batch, tokens, numPrefix, ropeTable, attnKeep, ffnKeep);
    }

    const normed = layerNorm(x, vec(params, 'backbone.norm.weight'), vec(params, 'backbone.norm.bias'));
    const seq = tf.reshape<tf.Rank.R3>(normed, [batch, tokens, d]);
    const outputs: tf.Tensor[] = [
      tf.reshape<tf.Rank.R2>(tf.slice(seq, [0, 0, 0], [batch, 1, d]), [batch, d]),
      tf.slice(seq, [0, numPrefix, 0], [batch, numPatches, d]),
    ];
    if (cfg.numRegisterTokens > 0) outputs.push(tf.slice(seq, [0, 1, 0], [batch, cfg.numRegisterTokens, d]));
    return outputs;
  }) as [tf.Tensor2D, tf.Tensor3D, tf.Tensor3D?];
  return { cls, patches, registers: registers ?? null };
}

/**
 * Resamples a learned position table from a `nativeGrid × nativeGrid` grid to `gridH × gridW`,
 * as DINO's `interpolate_pos_encoding`: bicubic (PyTorch's kernel, A = −0.75, half-pixel
 * centres, `align_corners=False`, borders clamped). Returns the table itself (no copy, no
 * arithmetic) when the grids match, as the reference does.
 *
 * The resampling is separable and linear, so it is one constant matrix `[gridH·gridW,
 * nativeGrid²]` applied with `linear` (exact gradient; tfjs's resizeBilinear gradient ignores
 * half-pixel centres). Deviation: dinov2 passes `scale_factor = (g + 0.1) / nativeGrid` to
 * dodge a float rounding issue in the output size; we use the exact ratio `nativeGrid / g`
 * that this approximates.
 * @param posEmbed `[nativeGrid², D]`, row-major over the grid.
 * @returns `[gridH · gridW, D]`.
 */
export function interpolatePosEmbed(posEmbed: tf.Tensor2D, nativeGrid: number, gridH: number, gridW: number): tf.Tensor2D {
  if (gridH === nativeGrid && gridW === nativeGrid) return posEmbed;
  const rows = bicubicWeights(nativeGrid, gridH);
  const cols = bicubicWeights(nativeGrid, gridW);
  const n = nativeGrid * nativeGrid;
  const resample = new Float32Array(gridH * gridW * n);
  for (let i = 0; i < gridH; i++) {
    for (let j = 0; j < gridW; j++) {
      const out = (i * gridW + j) * n;
      for (let a = 0; a < nativeGrid; a++) {
        const wr = rows[i * nativeGrid + a] as number;
        if (wr === 0) continue;
        for (let b = 0; b < nativeGrid; b++) resample[out + a * nativeGrid + b] = wr * (cols[j * nativeGrid + b] as number);
      }
    }
  }
  return tf.tidy(() => linear(tf.tensor2d(resample, [gridH * gridW, n]), posEmbed));
}

/** PyTorch's cubic convolution coefficient (Keys 1981 with A = −0.75, `upsample_bicubic2d`). */
const BICUBIC_A = -0.75;

/** 1-D bicubic resampling weights `[outSize, inSize]`, half-pixel centres, clamped borders. */
function bicubicWeights(inSize: number, outSize: number): Float64Array {
  const weights = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  const near = (x: number): number => ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1; // |x| ≤ 1
  const far = (x: number): number => ((BICUBIC_A * x - 5 * BICUBIC_A) * x + 8 * BICUBIC_A) * x - 4 * BICUBIC_A; // 1 < |x| < 2
  for (let o = 0; o < outSize; o++) {
    // Not clamped at 0 for cubic (PyTorch `area_pixel_compute_source_index`).
    const src = (o + 0.5) * scale - 0.5;
    const base = Math.floor(src);
    const t = src - base;
    const taps = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    taps.forEach((w, k) => {
      const index = Math.min(Math.max(base - 1 + k, 0), inSize - 1);
      weights[o * inSize + index] = (weights[o * inSize + index] as number) + w;
    });
  }
  return weights;
}

/** Patchify without a convolution: `[B, H, W, C]` → rows `[B·Np, p·p·C]` in (row, col, channel) order → linear. */
function embedPatches(params: ParamMap, cfg: VitConfig, images: tf.Tensor4D, masks: tf.Tensor2D | undefined): tf.Tensor2D {
  const [batch, height, width, channels] = images.shape;
  const p = cfg.patchSize;
  const gridH = height / p;
  const gridW = width / p;
  // [B, gh, p, gw, p, C] -> [B, gh, gw, p, p, C]. A PyTorch Conv2d weight [D, C, p, p]
  // corresponds to ours through permute(2, 3, 1, 0) then reshape to [p·p·C, D].
  const blocks = tf.transpose(tf.reshape(images, [batch, gridH, p, gridW, p, channels]), [0, 1, 3, 2, 4, 5]);
  const rows = tf.reshape<tf.Rank.R2>(blocks, [batch * gridH * gridW, p * p * channels]);
  const embedded = linear(rows, mat(params, 'backbone.patch_embed.weight'), vec(params, 'backbone.patch_embed.bias'));
  if (masks === undefined) return embedded;
  // A select by arithmetic so that masked rows do not depend on the pixels at all (their
  // gradient is exactly zero) while the mask token gets the sum over masked rows.
  const m = tf.reshape<tf.Rank.R2>(masks, [batch * gridH * gridW, 1]);
  return tf.add(tf.mul(embedded, tf.sub(1, m)), tf.mul(m, param<tf.Tensor2D>(params, 'backbone.mask_token')));
}

/** One pre-norm block: `x + ls1(attn(norm1(x)))`, then `x + ls2(ffn(norm2(x)))`, each branch with drop path. */
function block(
  params: ParamMap,
  cfg: VitConfig,
  index: number,
  x: tf.Tensor2D,
  batch: number,
  tokens: number,
  numPrefix: number,
  rope: RopeTables | null,
  attnKeep: tf.Tensor2D | null,
  ffnKeep: tf.Tensor2D | null,
): tf.Tensor2D {
  const b = `backbone.blocks.${index}`;
  const ls = (name: string, y: tf.Tensor2D): tf.Tensor2D =>
    cfg.layerScaleInit === null ? y : tf.mul(y, param<tf.Tensor1D>(params, `${b}.${name}.gamma`));
  const residual = (y: tf.Tensor2D, keep: tf.Tensor2D | null): tf.Tensor2D => (keep === null ? y : tf.mul(y, keep));

  const h1 = layerNorm(x, vec(params, `${b}.norm1.weight`), vec(params, `${b}.norm1.bias`));
  const qkvWeight = mat(params, `${b}.attn.qkv.weight`);
  const qkvBias = cfg.qkvBias ? vec(params, `${b}.attn.qkv.bias`) : undefined;
  let attn: tf.Tensor2D;
  if (rope === null) {
    // q, k, v from column slices of the fused weight: slicing the [D, 3D] weight is cheap,
    // splitting the [B·T, 3D] activation is not (see multiHeadAttention).
    const [wq, wk, wv] = tf.split(qkvWeight, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    const [bq, bk, bv] =
      qkvBias === undefined ? [undefined, undefined, undefined] : (tf.split(qkvBias, 3) as [tf.Tensor1D, tf.Tensor1D, tf.Tensor1D]);
    attn = multiHeadAttention(linear(h1, wq, bq), linear(h1, wk, bk), linear(h1, wv, bv), batch, tokens, cfg.numHeads);
  } else {
    const qkv = applyRope(linear(h1, qkvWeight, qkvBias), rope, batch, tokens, numPrefix, cfg.numHeads);
    attn = attention(qkv, batch, tokens, cfg.numHeads);
  }
  const proj = linear(attn, mat(params, `${b}.attn.proj.weight`), vec(params, `${b}.attn.proj.bias`));
  const x1 = tf.add<tf.Tensor2D>(x, residual(ls('ls1', proj), attnKeep));

  const h2 = layerNorm(x1, vec(params, `${b}.norm2.weight`), vec(params, `${b}.norm2.bias`));
  const ffn = feedForward(params, cfg, b, h2);
  return tf.add(x1, residual(ls('ls2', ffn), ffnKeep));
}

function feedForward(params: ParamMap, cfg: VitConfig, b: string, x: tf.Tensor2D): tf.Tensor2D {
  switch (cfg.ffn) {
    case 'mlp': {
      const hidden = gelu(linear(x, mat(params, `${b}.mlp.fc1.weight`), vec(params, `${b}.mlp.fc1.bias`)));
      return linear(hidden, mat(params, `${b}.mlp.fc2.weight`), vec(params, `${b}.mlp.fc2.bias`));
    }
    case 'swiglu': {
      // dinov2 SwiGLUFFN: x1, x2 = w12(x).chunk(2); w3(silu(x1) * x2).
      const fused = linear(x, mat(params, `${b}.mlp.w12.weight`), vec(params, `${b}.mlp.w12.bias`));
      const [gate, value] = tf.split(fused, 2, 1) as [tf.Tensor2D, tf.Tensor2D];
      const hidden = tf.mul<tf.Tensor2D>(tf.mul(gate, tf.sigmoid(gate)), value);
      return linear(hidden, mat(params, `${b}.mlp.w3.weight`), vec(params, `${b}.mlp.w3.bias`));
    }
  }
}

/** Per-row branch scale `[B·T, 1]`: 1/keep for a kept sample's rows, 0 for a dropped one's. */
function dropPathScale(rng: Rng, batch: number, tokens: number, rate: number): tf.Tensor2D {
  const keep = 1 - rate;
  const scale = new Float32Array(batch * tokens);
  for (let s = 0; s < batch; s++) {
    if (rng.bernoulli(keep)) scale.fill(1 / keep, s * tokens, (s + 1) * tokens);
  }
  return tf.tensor2d(scale, [batch * tokens, 1]);
}

/** RoPE sin/cos for the patch tokens, `[1, Np, 3, 1, headDim]`, with the v slot an identity. */
interface RopeTables {
  readonly sin: tf.Tensor;
  readonly cos: tf.Tensor;
}

/** DINOv3 `RopePositionEmbedding` defaults: base 100, coordinates normalised per axis to [-1, 1]. */
const ROPE_BASE = 100;

/**
 * DINOv3's axial RoPE tables (`rope_position_encoding.py`, `normalize_coords="separate"`).
 * Patch centres get coordinates `2 (i + 0.5) / n − 1` per axis; a head's first `headDim/4`
 * frequencies rotate by the row coordinate and the next `headDim/4` by the column
 * coordinate, periods `base^(4j / headDim)`; the angle vector is tiled twice to pair with
 * `rotate_half`. Built on the JS side as constants: they have no parameters. The training-only
 * coordinate shift / jitter / rescale augmentations are not implemented.
 */
function ropeTables(gridH: number, gridW: number, headDim: number): RopeTables {
  const quarter = headDim / 4;
  const numPatches = gridH * gridW;
  const sin = new Float32Array(numPatches * 3 * headDim);
  const cos = new Float32Array(numPatches * 3 * headDim);
  const angles = new Float64Array(headDim);
  for (let r = 0; r < gridH; r++) {
    for (let c = 0; c < gridW; c++) {
      const coords = [(2 * (r + 0.5)) / gridH - 1, (2 * (c + 0.5)) / gridW - 1];
      for (let axis = 0; axis < 2; axis++) {
        for (let j = 0; j < quarter; j++) {
          const period = ROPE_BASE ** ((2 * j) / (headDim / 2));
          const angle = (2 * Math.PI * (coords[axis] as number)) / period;
          angles[axis * quarter + j] = angle;
          angles[headDim / 2 + axis * quarter + j] = angle;
        }
      }
      const base = (r * gridW + c) * 3 * headDim;
      for (let slot = 0; slot < 3; slot++) {
        for (let k = 0; k < headDim; k++) {
          const a = angles[k] as number;
          // q and k are rotated, v passes through (cos 1, sin 0).
          sin[base + slot * headDim + k] = slot < 2 ? Math.sin(a) : 0;
          cos[base + slot * headDim + k] = slot < 2 ? Math.cos(a) : 1;
        }
      }
    }
  }
  const shape = [1, numPatches, 3, 1, headDim];
  return { sin: tf.tensor(sin, shape), cos: tf.tensor(cos, shape) };
}

/**
 * Rotates q and k of the patch tokens inside the fused `[B·T, 3D]` projection (prefix tokens
 * untouched, as dinov3's `apply_rope`), so the `attention` primitive is used unchanged.
 * `rope_apply(x) = x · cos + rotate_half(x) · sin`, `rotate_half([a, b]) = [−b, a]` per head.
 */
function applyRope(qkv: tf.Tensor2D, rope: RopeTables, batch: number, tokens: number, numPrefix: number, heads: number): tf.Tensor2D {
  const headDim = qkv.shape[1] / 3 / heads;
  const half = headDim / 2;
  const numPatches = tokens - numPrefix;
  const split = tf.reshape<tf.Rank.R5>(qkv, [batch, tokens, 3, heads, headDim]);
  const prefix = tf.slice(split, [0, 0, 0, 0, 0], [batch, numPrefix, 3, heads, headDim]);
  const patches = tf.slice(split, [0, numPrefix, 0, 0, 0], [batch, numPatches, 3, heads, headDim]);
  const [first, second] = tf.split(patches, [half, half], 4);
  const rotated = tf.concat([tf.neg(second as tf.Tensor), first as tf.Tensor], 4);
  const roped = tf.add(tf.mul(patches, rope.cos), tf.mul(rotated, rope.sin));
  return tf.reshape<tf.Rank.R2>(tf.concat([prefix, roped], 1), [batch * tokens, 3 * heads * headDim]);
}

function validateConfig(cfg: VitConfig): void {
  if (cfg.embedDim % cfg.numHeads !== 0) {
    throw new Error(`${cfg.name}: embedDim ${cfg.embedDim} must be divisible by numHeads ${cfg.numHeads}`);
  }
  if (cfg.posEmbed === 'rope' && (cfg.embedDim / cfg.numHeads) % 4 !== 0) {
    throw new Error(`${cfg.name}: RoPE needs embedDim / numHeads divisible by 4, got ${cfg.embedDim / cfg.numHeads}`);
  }
  if (cfg.imageSize % cfg.patchSize !== 0) {
    throw new Error(`${cfg.name}: imageSize ${cfg.imageSize} must be a multiple of patchSize ${cfg.patchSize}`);
  }
}

function param<T extends tf.Tensor>(params: ParamMap, name: string): T {
  const t = params[name];
  if (t === undefined) throw new Error(`missing parameter '${name}'`);
  return t as T;
}

function vec(params: ParamMap, name: string): tf.Tensor1D {
  return param<tf.Tensor1D>(params, name);
}

function mat(params: ParamMap, name: string): tf.Tensor2D {
  return param<tf.Tensor2D>(params, name);
}

function truncNormalTensor(shape: number[], std: number, rng: Rng): tf.Tensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; i++) values[i] = rng.truncatedNormal(std);
  return tf.tensor(values, shape);
}

function uniformTensor(shape: number[], bound: number, rng: Rng): tf.Tensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; i++) values[i] = rng.range(-bound, bound);
  return tf.tensor(values, shape);
}
