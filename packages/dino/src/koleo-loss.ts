import * as tf from '@tensorflow/tfjs-core';

/**
 * The KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity
 * search"; `KoLeoLoss` in facebookresearch/dinov2): `−mean_i log(d_i + eps)`, with `d_i` the
 * Euclidean distance from the L2-normalised row `x_i` to its nearest other row. It pushes the
 * batch's features apart, towards a uniform spread on the sphere.
 *
 * Differences from the reference, all to keep value and gradient finite:
 * - a batch of one row has no neighbour: the loss is 0 (with a zero gradient);
 * - the distance is `sqrt(‖x_i − x_j‖² + eps²)` rather than PyTorch's
 *   `PairwiseDistance(eps)` `‖x_i − x_j + eps‖`, whose sqrt has an infinite derivative at
 *   duplicate rows (NaN gradients); for distinct rows the two agree to ~eps;
 * - normalisation is `x · rsqrt(max(‖x‖², eps²))` (F.normalize's `x / max(‖x‖, eps)`
 *   without the sqrt), so an all-zero row has a finite gradient;
 * - the diagonal is excluded with −∞ rather than −1, so a row never picks itself as its
 *   neighbour even when all others are antipodal.
 * The neighbour choice is a hard argmax, as the reference: no gradient flows through it.
 *
 * @param x `[B, D]` student CLS features before the head (one global crop).
 * @param eps added to distances and norms. @default 1e-8
 * @returns the loss (B = 1: 0), differentiable w.r.t. `x`.
 */
export function koleoLoss(x: tf.Tensor2D, eps = 1e-8): tf.Scalar {
  const [batch] = x.shape;
  if (batch === 0) throw new RangeError('koleoLoss needs at least one row');
  return tf.tidy(() => {
    if (batch === 1) return tf.mul<tf.Scalar>(tf.sum(x), 0);
    const normalised = tf.mul(x, tf.rsqrt(tf.maximum(tf.sum(tf.square(x), 1, true), eps * eps)));
    const dots = tf.matMul(normalised, normalised, false, true);
    const masked = tf.where(tf.cast(tf.eye(batch), 'bool'), tf.fill([batch, batch], -Infinity), dots);
    // max inner product = min distance for unit vectors
    // A one-hot product instead of tf.gather: gather's gradient w.r.t. its (int32) indices
    // trips tfjs's dtype check when the indices come from an op on the tape.
    const nearest = tf.cast(tf.oneHot(tf.argMax(masked, 1), batch), 'float32');
    const neighbours = tf.matMul(nearest, normalised);
    const squared = tf.sum(tf.square(tf.sub(normalised, neighbours)), 1);
    const distances = tf.sqrt(tf.add(squared, eps * eps));
    return tf.neg(tf.mean<tf.Scalar>(tf.log(tf.add(distances, eps))));
  });
}
