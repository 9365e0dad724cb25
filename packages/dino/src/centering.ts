import * as tf from '@tensorflow/tfjs-core';

/*
 * DINO v1 teacher targets (Caron et al. 2021, §3.1 "centering and sharpening";
 * `DINOLoss.softmax_center_teacher` / `update_center` in facebookresearch/dinov2):
 * `softmax((t − c) / τ_t)`, with the center `c` an EMA of the teacher logits' batch mean
 * over the whole global batch. iBOT uses the same functions with its own center.
 *
 * The batch mean is global: each rank computes {@link teacherLogitSums}, the caller
 * all-reduces `sum` and `count`, and every rank applies {@link updateCenter} to the same
 * numbers, so the center stays bit-identical everywhere.
 */

/**
 * Centred, sharpened teacher probabilities `softmax((t − c) / τ_t)` per row.
 *
 * @param teacherLogits `[N, K]` raw teacher head outputs.
 * @param center `[K]` the current center.
 * @param teacherTemp τ_t > 0; DINO warms it up from 0.04 to 0.07.
 * @returns `[N, K]`, rows sum to 1.
 */
export function centeredTeacherProbs(
  teacherLogits: tf.Tensor2D,
  center: tf.Tensor1D,
  teacherTemp: number,
): tf.Tensor2D {
  if (!(teacherTemp > 0)) throw new RangeError(`teacherTemp must be > 0, got ${teacherTemp}`);
  if (center.shape[0] !== teacherLogits.shape[1]) {
    throw new RangeError(`center has ${center.shape[0]} entries, teacher logits have ${teacherLogits.shape[1]}`);
  }
  // tf.softmax subtracts the row max before exp, so small τ_t cannot overflow.
  return tf.tidy(() => tf.softmax(tf.mul<tf.Tensor2D>(tf.sub(teacherLogits, center), 1 / teacherTemp), -1));
}

/** This rank's contribution to the center update, to be all-reduced (summed) across ranks. */
export interface TeacherLogitSums {
  /** `[K]` column sums of the teacher logits over this rank's rows. */
  readonly sum: Float32Array;
  /** Rows summed (crops × images, or masked patches for iBOT). */
  readonly count: number;
}

/**
 * The local sums behind the center's batch mean: the teacher logits summed over rows, and
 * the row count. All-reduce both, then call {@link updateCenter}.
 *
 * For iBOT pass the masked patches' teacher logits `[M, K]`: the global mean is then over all
 * masked patches of the global batch, weighted by patch. (dinov2's `iBOTPatchLoss` averages
 * per-rank means instead, which differs only when ranks hold different patch counts.)
 *
 * @param teacherLogits `[N, K]` raw teacher head outputs (before centering).
 */
export function teacherLogitSums(teacherLogits: tf.Tensor2D): TeacherLogitSums {
  const sum = tf.tidy(() => tf.sum(teacherLogits, 0).dataSync() as Float32Array);
  return { sum: Float32Array.from(sum), count: teacherLogits.shape[0] };
}

/**
 * The center's EMA update `m·c + (1 − m)·sum / count`, in plain double-precision
 * arithmetic rounded once to float32, so every rank computes the same bits.
 *
 * @param center `[K]` the current center (not modified).
 * @param globalSum `[K]` the all-reduced {@link TeacherLogitSums.sum}.
 * @param globalCount the all-reduced {@link TeacherLogitSums.count}, > 0.
 * @param momentum m in [0, 1]; DINO and dinov2 use 0.9.
 * @returns the new center.
 */
export function updateCenter(
  center: Float32Array,
  globalSum: Float32Array,
  globalCount: number,
  momentum: number,
): Float32Array {
  if (globalSum.length !== center.length) {
    throw new RangeError(`globalSum has ${globalSum.length} entries, center has ${center.length}`);
  }
  if (!(globalCount > 0)) throw new RangeError(`globalCount must be > 0, got ${globalCount}`);
  if (!(momentum >= 0 && momentum <= 1)) throw new RangeError(`momentum must be in [0, 1], got ${momentum}`);
  const next = new Float32Array(center.length);
  for (let i = 0; i < center.length; i++) {
    next[i] = momentum * (center[i] as number) + (1 - momentum) * ((globalSum[i] as number) / globalCount);
  }
  return next;
}
