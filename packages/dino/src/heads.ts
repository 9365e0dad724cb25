import * as tf from '@tensorflow/tfjs-core';
import { gelu, linear } from './ops.ts';
import type { ParamMap } from './params.ts';
import type { Rng } from './rng.ts';

/**
 * The projection head of DINO / DINOv2 / DINOv3 (`DINOHead`): an MLP to a bottleneck,
 * L2 normalisation, then a bias-free linear layer onto `outDim` prototypes.
 */
export interface DinoHeadConfig {
  /** Input width, the backbone's `embedDim`. */
  readonly inDim: number;
  /** MLP hidden width (DINOv2: 2048; DINOv3 7B: 8192 for DINO, 4096 for iBOT). */
  readonly hiddenDim: number;
  /** Bottleneck width before normalisation (DINOv2: 256; DINOv3: 512 / 384). */
  readonly bottleneckDim: number;
  /** Number of prototypes, the logit width (DINOv2: 65536; DINOv3: 262144 / 98304). */
  readonly outDim: number;
  /**
   * MLP linear layers, ≥ 1 (references: 3). With 1 the MLP is a single `inDim → bottleneckDim`
   * linear; otherwise `inDim → hiddenDim (→ hiddenDim)* → bottleneckDim` with GELU between,
   * none after the last.
   */
  readonly nLayers: number;
  /**
   * Weight-normalised last layer (DINO, DINOv2): the prototype matrix is `g · v / ‖v‖` per
   * prototype, `last_layer.weight_g` `[outDim]` initialised to 1 (DINO's `norm_last_layer`
   * keeps it frozen at 1: the optimiser's job), `last_layer.weight` is `v`. Without it
   * (DINOv3) `last_layer.weight` is used as is.
   */
  readonly weightNorm: boolean;
}

/**
 * Fresh head parameters: `{prefix}.mlp.{i}.{weight,bias}` for `i < nLayers` (PyTorch's
 * `nn.Sequential` numbers them 0, 2, 4 because of the GELU modules; checkpoint export
 * renumbers), `{prefix}.last_layer.weight` `[bottleneckDim, outDim]` and, with weight norm,
 * `{prefix}.last_layer.weight_g` `[outDim]`.
 *
 * Initialisation as dinov2's `DINOHead`: MLP weights trunc-normal(0.02), biases 0. The
 * weight-normed last layer is created after `_init_weights` there, so `v` keeps PyTorch's
 * Linear default U(±1/√bottleneckDim) and `weight_g` is 1; DINOv3 (no weight norm) inits the
 * last layer trunc-normal(0.02) like the MLP.
 */
export function initDinoHeadParams(cfg: DinoHeadConfig, prefix: 'dino_head' | 'ibot_head', rng: Rng): Record<string, tf.Tensor> {
  validateHeadConfig(cfg);
  const params: Record<string, tf.Tensor> = {};
  mlpShapes(cfg).forEach(([inDim, outDim], i) => {
    params[`${prefix}.mlp.${i}.weight`] = randomTensor([inDim, outDim], () => rng.truncatedNormal(0.02));
    params[`${prefix}.mlp.${i}.bias`] = tf.zeros([outDim]);
  });
  if (cfg.weightNorm) {
    const bound = 1 / Math.sqrt(cfg.bottleneckDim);
    params[`${prefix}.last_layer.weight`] = randomTensor([cfg.bottleneckDim, cfg.outDim], () => rng.range(-bound, bound));
    params[`${prefix}.last_layer.weight_g`] = tf.ones([cfg.outDim]);
  } else {
    params[`${prefix}.last_layer.weight`] = randomTensor([cfg.bottleneckDim, cfg.outDim], () => rng.truncatedNormal(0.02));
  }
  return params;
}

/**
 * The head's logits `[N, outDim]` for features `x` `[N, inDim]` (CLS tokens for the DINO
 * head, patch tokens for the iBOT head). Temperatures and softmax belong to the losses.
 */
export function dinoHeadForward(params: ParamMap, prefix: 'dino_head' | 'ibot_head', cfg: DinoHeadConfig, x: tf.Tensor2D): tf.Tensor2D {
  validateHeadConfig(cfg);
  return tf.tidy(() => {
    let h = x;
    for (let i = 0; i < cfg.nLayers; i++) {
      h = linear(h, matrix(params, `${prefix}.mlp.${i}.weight`), vector(params, `${prefix}.mlp.${i}.bias`));
      if (i < cfg.nLayers - 1) h = gelu(h);
    }
    // F.normalize(x, dim=-1, eps=1e-12): divide by max(‖x‖, eps).
    const norm = tf.maximum(tf.sqrt(tf.sum(tf.square(h), -1, true)), 1e-12);
    const unit = tf.div<tf.Tensor2D>(h, norm);
    return linear(unit, lastLayerWeight(params, prefix, cfg));
  });
}

/**
 * The effective prototype matrix `[bottleneckDim, outDim]` (column j is prototype j):
 * with weight norm `g_j · v_j / ‖v_j‖` (PyTorch `weight_norm`, dim 0 of its `[out, in]`
 * weight, no epsilon), otherwise `last_layer.weight` itself.
 */
export function lastLayerWeight(params: ParamMap, prefix: 'dino_head' | 'ibot_head', cfg: DinoHeadConfig): tf.Tensor2D {
  const v = matrix(params, `${prefix}.last_layer.weight`);
  if (!cfg.weightNorm) return v;
  return tf.tidy(() => {
    const g = vector(params, `${prefix}.last_layer.weight_g`);
    const columnNorm = tf.sqrt(tf.sum(tf.square(v), 0, true)); // [1, outDim]
    return tf.mul<tf.Tensor2D>(tf.div(v, columnNorm), g);
  });
}

/** Parameters {@link initDinoHeadParams} allocates for `cfg`, computed from shapes alone. */
export function dinoHeadParamCount(cfg: DinoHeadConfig): number {
  const mlp = mlpShapes(cfg).reduce((sum, [inDim, outDim]) => sum + inDim * outDim + outDim, 0);
  return mlp + cfg.bottleneckDim * cfg.outDim + (cfg.weightNorm ? cfg.outDim : 0);
}

function mlpShapes(cfg: DinoHeadConfig): [number, number][] {
  if (cfg.nLayers === 1) return [[cfg.inDim, cfg.bottleneckDim]];
  const shapes: [number, number][] = [[cfg.inDim, cfg.hiddenDim]];
  for (let i = 0; i < cfg.nLayers - 2; i++) shapes.push([cfg.hiddenDim, cfg.hiddenDim]);
  shapes.push([cfg.hiddenDim, cfg.bottleneckDim]);
  return shapes;
}

function validateHeadConfig(cfg: DinoHeadConfig): void {
  if (!Number.isInteger(cfg.nLayers) || cfg.nLayers < 1) {
    throw new Error(`DinoHeadConfig.nLayers must be an integer ≥ 1, got ${cfg.nLayers}`);
  }
}

function matrix(params: ParamMap, name: string): tf.Tensor2D {
  const t = params[name];
  if (t === undefined) throw new Error(`missing parameter '${name}'`);
  return t as tf.Tensor2D;
}

function vector(params: ParamMap, name: string): tf.Tensor1D {
  const t = params[name];
  if (t === undefined) throw new Error(`missing parameter '${name}'`);
  return t as tf.Tensor1D;
}

function randomTensor(shape: [number, number], sample: () => number): tf.Tensor2D {
  const values = new Float32Array(shape[0] * shape[1]);
  for (let i = 0; i < values.length; i++) values[i] = sample();
  return tf.tensor2d(values, shape);
}
