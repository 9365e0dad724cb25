import * as tf from '@tensorflow/tfjs-core';
import type { GradMap } from './params.ts';

/**
 * The global L2 norm `√Σ_name ‖g_name‖²` over all gradients (torch's `clip_grad_norm_` with
 * `norm_type=2`). Each gradient's squared norm is reduced in float32 by the backend; the
 * per-parameter terms are summed here in double precision in sorted-name order, so the result
 * does not depend on the record's insertion order. One synchronous read; 0 for no gradients.
 */
export function globalNorm(grads: Readonly<GradMap>): number {
  const names = Object.keys(grads).sort();
  if (names.length === 0) return 0;
  const squares = tf.tidy(() => tf.stack(names.map((name) => tf.sum(tf.square(grads[name] as tf.Tensor)))));
  const terms = squares.dataSync();
  squares.dispose();
  let sum = 0;
  for (const term of terms) sum += term;
  return Math.sqrt(sum);
}

/**
 * Scales all gradients by one factor `maxNorm / (norm + 1e-6)` when their global norm exceeds
 * `maxNorm`, as `torch.nn.utils.clip_grad_norm_`, which dinov2/dinov3 `train.py` apply with
 * `clip_grad: 3.0`. Two reference differences: dinov2/dinov3 clip each student module
 * (backbone, dino_head, ibot_head) separately (call this once per module's names for that),
 * and DINO v1's `utils.clip_gradients` clips every parameter by its own norm. Global over the
 * given record is what the training step asks for.
 *
 * Returns new tensors (the caller owns them; the inputs are not disposed) and the norm before
 * clipping. At or below `maxNorm` the returned gradients equal the inputs. A non-finite norm
 * is returned as is with unscaled gradients: the caller should skip that step.
 * @throws RangeError when `maxNorm` is not `> 0`.
 */
export function clipByGlobalNorm(grads: Readonly<GradMap>, maxNorm: number): { grads: GradMap; norm: number } {
  if (!(maxNorm > 0)) throw new RangeError(`maxNorm must be > 0, got ${maxNorm}`);
  const norm = globalNorm(grads);
  // torch clamps the coefficient at 1 rather than comparing norms, so a norm in
  // (maxNorm − 1e-6, maxNorm] is left alone too.
  const coef = maxNorm / (norm + 1e-6);
  const scale = Number.isFinite(norm) && coef < 1;
  const clipped: GradMap = {};
  for (const name of Object.keys(grads).sort()) {
    const grad = grads[name] as tf.Tensor;
    clipped[name] = scale ? tf.tidy(() => tf.mul(grad, coef)) : tf.clone(grad);
  }
  return { grads: clipped, norm };
}
