import * as tf from '@tensorflow/tfjs-core';

/**
 * The layer primitives the model is built from. Model code calls only these for its
 * dense algebra, so that their implementations (and custom gradients) can be tuned for a
 * backend without touching the model.
 *
 * Layouts: activations are 2-D `[rows, features]` with rows = batch × tokens; weights are
 * stored input-major `[in, out]` so the forward matMul needs no transpose (PyTorch stores
 * `[out, in]`; checkpoint export transposes).
 */

/** `x @ w + b` for x `[N, in]`, w `[in, out]`, b `[out]`. */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  const y: tf.Tensor2D = tf.matMul(x, w);
  return b === undefined ? y : tf.add<tf.Tensor2D>(y, b);
}

/** Exact GELU, `0.5 x (1 + erf(x / √2))` (Hendrycks & Gimpel), as in the reference ViT. */
export function gelu<T extends tf.Tensor>(x: T): T {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

/** LayerNorm over the last axis of `[N, D]` with affine `gamma`, `beta` `[D]`. */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps = 1e-6): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), gamma), beta);
}

/**
 * Multi-head scaled dot-product self-attention, `softmax(q kᵀ / √d) v` per head.
 * @param qkv `[batch × tokens, 3 × dim]`, the fused q, k, v projections in that order.
 * @returns `[batch × tokens, dim]`, heads concatenated, ready for the output projection.
 */
export function attention(qkv: tf.Tensor2D, batch: number, tokens: number, heads: number): tf.Tensor2D {
  const dim = qkv.shape[1] / 3;
  const headDim = dim / heads;
  // [B, T, 3, H, d] -> [3, B, H, T, d]
  const split = tf.transpose(tf.reshape(qkv, [batch, tokens, 3, heads, headDim]), [2, 0, 3, 1, 4]);
  const [q, k, v] = tf.unstack(split, 0) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim));
  const out = tf.matMul(tf.softmax(scores, -1), v); // [B, H, T, d]
  return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch * tokens, dim]);
}
