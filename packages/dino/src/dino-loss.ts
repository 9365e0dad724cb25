import * as tf from '@tensorflow/tfjs-core';

/** Options for {@link dinoCrossEntropyLoss}. */
export interface DinoLossOptions {
  /** Global crops per image; the teacher sees only these. Usually 2. Range ≥ 1. */
  readonly nGlobal: number;
  /** All crops per image, global + local (student rows = nCrops·B). Range ≥ nGlobal, and ≥ 2. */
  readonly nCrops: number;
  /** Student softmax temperature τ_s, > 0. DINO and dinov2 use 0.1. */
  readonly studentTemp: number;
}

/**
 * Treats a tensor as a constant for differentiation (PyTorch's `.detach()`): the value
 * passes through, the gradient is zero. tfjs-core has no stop-gradient op.
 */
function detach<T extends tf.Tensor>(x: T): T {
  const stop = tf.customGrad<T>((input) => ({
    value: (input as T).clone(),
    gradFunc: (dy: T) => tf.zerosLike(dy),
  }));
  return stop(x);
}

/**
 * Per-row soft cross-entropy `−Σ_k t_k · log softmax(s / τ_s)_k`, the term shared by the
 * DINO and iBOT losses (dinov2 `lossfunc`). The teacher is detached: the gradient flows
 * only to `studentLogits`.
 *
 * @param studentLogits `[N, K]` raw student head outputs.
 * @param teacherProbs `[N, K]` teacher targets (rows sum to 1).
 * @param studentTemp τ_s > 0.
 * @returns `[N]` losses in nats.
 */
export function softCrossEntropy(
  studentLogits: tf.Tensor2D,
  teacherProbs: tf.Tensor2D,
  studentTemp: number,
): tf.Tensor1D {
  assertSameShape(studentLogits, teacherProbs, 'softCrossEntropy');
  if (!(studentTemp > 0)) throw new RangeError(`studentTemp must be > 0, got ${studentTemp}`);
  return tf.tidy(() => {
    const logProbs = tf.logSoftmax(tf.mul(studentLogits, 1 / studentTemp), -1);
    return tf.neg(tf.sum<tf.Tensor1D>(tf.mul(detach(teacherProbs), logProbs), -1));
  });
}

/**
 * The DINO multi-crop cross-entropy (Caron et al. 2021, `DINOLoss.forward` in
 * facebookresearch/dino): for each teacher global crop `iq` and each student crop `v ≠ iq`,
 * the batch mean of `−Σ_k t_k · log softmax(s / τ_s)_k`, averaged over the
 * `nGlobal·nCrops − nGlobal` pairs.
 *
 * Rows are crop-major: student row `v·B + b` is crop `v` of image `b`, and the first
 * `nGlobal` student crops are the same global crops the teacher saw, in the same order.
 *
 * @param studentLogits `[nCrops·B, K]` raw student head outputs.
 * @param teacherProbs `[nGlobal·B, K]` teacher targets (centred softmax or Sinkhorn-Knopp);
 *   treated as constants (no gradient).
 * @returns the loss in nats, differentiable w.r.t. `studentLogits` only.
 */
export function dinoCrossEntropyLoss(
  studentLogits: tf.Tensor2D,
  teacherProbs: tf.Tensor2D,
  opts: DinoLossOptions,
): tf.Scalar {
  const { nGlobal, nCrops, studentTemp } = opts;
  if (!Number.isInteger(nGlobal) || nGlobal < 1) throw new RangeError(`nGlobal must be an integer ≥ 1, got ${nGlobal}`);
  if (!Number.isInteger(nCrops) || nCrops < nGlobal || nCrops < 2) {
    throw new RangeError(`nCrops must be an integer ≥ max(nGlobal, 2), got ${nCrops} (nGlobal ${nGlobal})`);
  }
  if (!(studentTemp > 0)) throw new RangeError(`studentTemp must be > 0, got ${studentTemp}`);
  const [teacherRows, k] = teacherProbs.shape;
  if (teacherRows % nGlobal !== 0) {
    throw new RangeError(`teacherProbs has ${teacherRows} rows, not a multiple of nGlobal ${nGlobal}`);
  }
  const batch = teacherRows / nGlobal;
  if (batch === 0) throw new RangeError('dinoCrossEntropyLoss needs at least one image');
  if (studentLogits.shape[0] !== nCrops * batch || studentLogits.shape[1] !== k) {
    throw new RangeError(
      `studentLogits must be [nCrops·B, K] = [${nCrops * batch}, ${k}], got [${studentLogits.shape.join(', ')}]`,
    );
  }
  const nPairs = nGlobal * nCrops - nGlobal;
  return tf.tidy(() => {
    const logProbs = tf.reshape(tf.logSoftmax(tf.mul(studentLogits, 1 / studentTemp), -1), [nCrops, batch, k]);
    const teacher = tf.reshape(detach(teacherProbs), [nGlobal, batch, k]);
    // Σ_{v≠iq} lsm_v = (Σ_v lsm_v) − lsm_iq: one pass over the student crops instead of a
    // product per pair. The subtraction is per crop, not of two large loss totals, so it
    // does not cancel catastrophically.
    const allCrops = tf.sum(logProbs, 0);
    let total: tf.Tensor = tf.scalar(0);
    for (let iq = 0; iq < nGlobal; iq++) {
      const others = tf.sub(allCrops, tf.squeeze(tf.slice(logProbs, [iq, 0, 0], [1, batch, k]), [0]));
      const t = tf.squeeze(tf.slice(teacher, [iq, 0, 0], [1, batch, k]), [0]);
      total = tf.add(total, tf.sum(tf.mul(t, others)));
    }
    return tf.mul<tf.Scalar>(total, -1 / (batch * nPairs));
  });
}

function assertSameShape(a: tf.Tensor2D, b: tf.Tensor2D, where: string): void {
  if (a.shape[0] !== b.shape[0] || a.shape[1] !== b.shape[1]) {
    throw new RangeError(`${where}: student [${a.shape.join(', ')}] and teacher [${b.shape.join(', ')}] differ`);
  }
}
