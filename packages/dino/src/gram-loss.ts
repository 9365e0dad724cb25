import * as tf from '@tensorflow/tfjs-core';

/**
 * DINOv3 Gram anchoring (Siméoni et al. 2025, §4; `GramLoss` in facebookresearch/dinov3 with
 * the Gram-anchoring config: `normalized: true`, `img_level: true`, `remove_neg: false`):
 * the mean squared error between the per-image Gram matrices `X Xᵀ` `[T, T]` of the
 * L2-normalised patch features of the student and of the Gram teacher (an earlier snapshot),
 * i.e. between their patch-to-patch cosine similarities, averaged over all `B·T·T` entries
 * (`nn.MSELoss` default reduction).
 *
 * @param studentPatches `[B, T, D]` student patch features (backbone output, before heads).
 * @param gramTeacherPatches `[B, T, D]` Gram-teacher patch features; no gradient.
 * @returns the loss, differentiable w.r.t. `studentPatches` only.
 */
export function gramLoss(studentPatches: tf.Tensor3D, gramTeacherPatches: tf.Tensor3D): tf.Scalar {
  const [b, t, d] = studentPatches.shape;
  const [tb, tt, td] = gramTeacherPatches.shape;
  if (b !== tb || t !== tt || d !== td) {
    throw new RangeError(
      `student [${studentPatches.shape.join(', ')}] and Gram teacher [${gramTeacherPatches.shape.join(', ')}] differ`,
    );
  }
  return tf.tidy(() => {
    const studentGram = gram(studentPatches);
    const teacherGram = gram(detach(gramTeacherPatches));
    return tf.mean<tf.Scalar>(tf.square(tf.sub(studentGram, teacherGram)));
  });
}

/** Options for {@link gramWeight}. */
export interface GramWeightOptions {
  /** First step with a non-zero weight (DINOv3 starts Gram anchoring late in training). ≥ 0. */
  readonly startStep: number;
  /** Full weight, ≥ 0. dinov3 config `gram.loss_weight`: 1.0. */
  readonly weight: number;
  /** Steps of linear ramp-up from startStep; 0 = full weight at once. @default 0 */
  readonly rampSteps?: number;
}

/**
 * The Gram loss weight at a step: 0 before `startStep`; then `weight · min(1, (step −
 * startStep + 1) / rampSteps)`, i.e. `weight / rampSteps` at `startStep` and full weight from
 * `startStep + rampSteps − 1` on; or full weight from `startStep` when `rampSteps` is 0.
 */
export function gramWeight(step: number, opts: GramWeightOptions): number {
  const rampSteps = opts.rampSteps ?? 0;
  if (!(rampSteps >= 0)) throw new RangeError(`rampSteps must be ≥ 0, got ${rampSteps}`);
  if (step < opts.startStep) return 0;
  if (rampSteps === 0) return opts.weight;
  return opts.weight * Math.min(1, (step - opts.startStep + 1) / rampSteps);
}

/** `X Xᵀ` per image of the row-L2-normalised `[B, T, D]` (F.normalize, eps 1e-12). */
function gram(x: tf.Tensor3D): tf.Tensor3D {
  const sumSquares = tf.sum(tf.square(x), -1, true);
  const normalised = tf.mul(x, tf.rsqrt(tf.maximum(sumSquares, 1e-24)));
  return tf.matMul(normalised, normalised, false, true);
}

/** `.detach()`: the value passes through, the gradient is zero. */
function detach<T extends tf.Tensor>(x: T): T {
  const stop = tf.customGrad<T>((input) => ({
    value: (input as T).clone(),
    gradFunc: (dy: T) => tf.zerosLike(dy),
  }));
  return stop(x);
}
