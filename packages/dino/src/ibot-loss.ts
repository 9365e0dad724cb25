import * as tf from '@tensorflow/tfjs-core';
import { softCrossEntropy } from './dino-loss.ts';

/** Options for {@link ibotPatchLoss}. */
export interface IbotLossOptions {
  /** Student softmax temperature τ_s > 0. dinov2 uses 0.1. */
  readonly studentTemp: number;
  /**
   * Images in this rank's masked batch, masked or not (dinov2: `student_masks_flat.shape[0]`,
   * i.e. global crops × images). > 0.
   */
  readonly nImages: number;
}

/**
 * The iBOT masked-image-modelling loss (Zhou et al. 2022; `iBOTPatchLoss.forward_masked` in
 * facebookresearch/dinov2): for each masked patch the soft cross-entropy
 * `−Σ_k t_k · log softmax(s / τ_s)_k` against the teacher's target for the same (unmasked)
 * patch, weighted by `1 / (masked patches in its image)` so every masked image counts
 * equally, summed, and divided by the number of images (unmasked ones included, as dinov2).
 *
 * Teacher patch targets come from `centeredTeacherProbs` (with the iBOT center) or
 * `sinkhornKnoppTargets` (with `globalBatch` = masked patches over all ranks).
 *
 * @param studentPatchLogits `[M, K]` student patch-head outputs at the masked patches only.
 * @param teacherPatchProbs `[M, K]` teacher targets at the same patches; no gradient.
 * @param maskWeights `[M]` per-patch weights (`sampleBatchMasks().weights`); no gradient.
 * @returns the loss in nats (0 when M = 0), differentiable w.r.t. `studentPatchLogits` only.
 */
export function ibotPatchLoss(
  studentPatchLogits: tf.Tensor2D,
  teacherPatchProbs: tf.Tensor2D,
  maskWeights: tf.Tensor1D,
  opts: IbotLossOptions,
): tf.Scalar {
  if (!(opts.nImages > 0)) throw new RangeError(`nImages must be > 0, got ${opts.nImages}`);
  if (maskWeights.shape[0] !== studentPatchLogits.shape[0]) {
    throw new RangeError(
      `maskWeights has ${maskWeights.shape[0]} entries for ${studentPatchLogits.shape[0]} masked patches`,
    );
  }
  return tf.tidy(() => {
    const perPatch = softCrossEntropy(studentPatchLogits, teacherPatchProbs, opts.studentTemp);
    // A sum over an empty M is 0 and still depends on the student logits, so an all-unmasked
    // batch gives a zero loss with a (zero) gradient rather than an error.
    return tf.div<tf.Scalar>(tf.sum(tf.mul(perPatch, maskWeights)), opts.nImages);
  });
}
