import * as tf from '@tensorflow/tfjs-core';

/**
 * Sums a tensor over all ranks (an all-reduce). Receives this rank's partial sums and
 * resolves to the global sums, same shape, identical on every rank. The input belongs to
 * the caller (it is disposed after the call unless it is returned); the result belongs to
 * the caller too. Every rank must make the same calls in the same order.
 */
export type ReduceSum = (local: tf.Tensor) => Promise<tf.Tensor>;

/** The {@link ReduceSum} of a single process: the local sums are the global sums. */
export const identityReduce: ReduceSum = (local) => Promise.resolve(local);

/** Options for {@link sinkhornKnoppTargets}. */
export interface SinkhornKnoppOptions {
  /** Teacher temperature τ_t > 0 (dinov2 warms it up from 0.04 to 0.07). */
  readonly teacherTemp: number;
  /** Normalisation rounds, ≥ 0. dinov2 uses 3. */
  readonly iterations: number;
  /** The all-reduce; {@link identityReduce} in a single process. */
  readonly reduceSum: ReduceSum;
  /**
   * Rows over all ranks, > 0: crops × images for the CLS head, or the global count of masked
   * patches for iBOT (dinov2 all-reduces `n_masked_patches` for this).
   */
  readonly globalBatch: number;
}

/**
 * Rounds of refining the exp stabiliser (below) before giving up; each round shrinks the
 * gap to the true maximum by ≥ 60 / ln(globalBatch), so 16 is never reached in practice.
 */
const MAX_SHIFT_ROUNDS = 16;
/** Largest allowed gap (in units of logit / τ) between the stabiliser and the true maximum. */
const MAX_SHIFT_GAP = 60;

/**
 * Sinkhorn-Knopp teacher targets (Caron et al. 2020 SwAV; Oquab et al. 2023 DINOv2,
 * `SinkhornKnoppTeacher` in facebookresearch/dinov2's `dino_clstoken_loss.py`): starting from
 * `Q = exp(t / τ)ᵀ` `[K, B]`, normalised to total 1, `iterations` rounds of "each prototype
 * row sums to 1/K" (over the global batch) then "each sample column sums to 1/B"; finally ×B
 * so each sample's targets sum to 1. Prototypes then carry ≈ B/K of the total each (exactly
 * in the limit of many iterations), which is what prevents collapse.
 *
 * Numerics (not in dinov2, which overflows once |t| / τ ≳ 88): the rounds run in the log
 * domain. Each prototype row is first shifted by a constant `c_k`; any per-prototype constant
 * cancels exactly in the first row normalisation (as does dinov2's global-sum normalisation,
 * which is therefore skipped when iterations ≥ 1), so the result is dinov2's up to rounding.
 * (With 0 iterations a single constant, max_k c_k, is used: only the global-sum
 * normalisation follows, which cancels a constant but not a per-prototype shift.)
 * `c_k` must be the same on every rank and within {@link MAX_SHIFT_GAP} of the global row
 * maximum, and only sums cross ranks: it starts at mean + spread of the ranks' local maxima
 * (≥ the global maximum, equal to it on one rank) and, only if ranks' maxima differ by more
 * than 60, is refined by log-sum-exp rounds at a coarser scale. After the first round every
 * entry is ≤ 1/B and every prototype sum ≥ 1/(K·B), so later sums need no shift. Sample
 * normalisations are local log-sum-exps. Targets are finite whenever t / τ is.
 *
 * @param teacherLogits `[N, K]` this rank's raw teacher outputs (N may be 0).
 * @returns `[N, K]` targets; each row sums to 1. The caller owns the result.
 */
export async function sinkhornKnoppTargets(
  teacherLogits: tf.Tensor2D,
  opts: SinkhornKnoppOptions,
): Promise<tf.Tensor2D> {
  const { teacherTemp, iterations, reduceSum, globalBatch } = opts;
  if (!(teacherTemp > 0)) throw new RangeError(`teacherTemp must be > 0, got ${teacherTemp}`);
  if (!Number.isInteger(iterations) || iterations < 0) {
    throw new RangeError(`iterations must be an integer ≥ 0, got ${iterations}`);
  }
  const [rows, k] = teacherLogits.shape;
  if (!(globalBatch > 0) || globalBatch < rows) {
    throw new RangeError(`globalBatch must be > 0 and ≥ this rank's ${rows} rows, got ${globalBatch}`);
  }
  const logB = Math.log(globalBatch);
  const logK = Math.log(k);

  const scaled = tf.tidy(() => tf.mul<tf.Tensor2D>(teacherLogits, 1 / teacherTemp));
  let shift: tf.Tensor = await rowShift(scaled, reduceSum, globalBatch);
  if (iterations === 0) {
    // No row normalisation will cancel a per-prototype shift: use one constant, the largest
    // (identical on all ranks, since every c_k is).
    shift = replace(shift, () => tf.max(shift));
  }
  // ℓ = log Q (transposed: rows are samples, columns prototypes).
  let logQ = replace(scaled, () => tf.sub(scaled, shift));
  shift.dispose();

  if (iterations === 0) {
    // Nothing normalises away the scale, so apply dinov2's Q /= ΣQ; ×B below.
    const total = await reduce(reduceSum, tf.tidy(() => tf.sum(tf.exp(logQ))));
    logQ = replace(logQ, () => tf.sub(logQ, tf.log(total)));
    total.dispose();
  }
  for (let it = 0; it < iterations; it++) {
    // Each prototype's total weight is 1/K, over the global batch.
    const current = logQ;
    const prototypeSums = await reduce(reduceSum, tf.tidy(() => tf.sum(tf.exp(current), 0)));
    logQ = replace(logQ, () => tf.sub(current, tf.add(tf.log(prototypeSums), logK)));
    prototypeSums.dispose();
    // Each sample's total weight is 1/B: local, an exact log-sum-exp.
    const next = logQ;
    logQ = replace(logQ, () => tf.sub(next, tf.add(tf.logSumExp(next, 1, true), logB)));
  }
  // ×B: each sample's targets are an assignment summing to 1.
  const final = logQ;
  return replace(logQ, () => tf.exp(tf.add<tf.Tensor2D>(final, logB)));
}

/**
 * A per-prototype constant `c` `[K]`, identical on all ranks, with
 * `max_b ℓ_bk − 60 ≤ c_k` and `c_k ≥ max_b ℓ_bk` up to rounding (b over the global batch).
 */
async function rowShift(scaled: tf.Tensor2D, reduceSum: ReduceSum, globalBatch: number): Promise<tf.Tensor1D> {
  const [rows, k] = scaled.shape;
  // Σ_r m_r, Σ_r m_r², Σ_r 1 over ranks r with rows, m_r the local per-prototype maximum.
  const packed = tf.tidy(() => {
    if (rows === 0) return tf.zeros([2 * k + 1]);
    const localMax = tf.max(scaled, 0);
    return tf.concat([localMax, tf.square(localMax), tf.ones([1])]);
  });
  const moments = await reduce(reduceSum, packed);
  let { shift, gap } = tf.tidy(() => {
    const sumMax = tf.slice(moments, [0], [k]);
    const sumSqMax = tf.slice(moments, [k], [k]);
    const ranks = tf.slice(moments, [2 * k], [1]);
    const meanMax = tf.div(sumMax, ranks);
    // max_r m_r − mean ≤ sqrt(Σ_r (m_r − mean)²): the mean plus this spread bounds the global
    // maximum from above, and exceeds it by at most the spread (zero for one rank).
    const spread = tf.sqrt(tf.relu(tf.sub(sumSqMax, tf.mul(sumMax, meanMax))));
    return { shift: tf.add<tf.Tensor1D>(meanMax, spread), gap: spread };
  });
  moments.dispose();

  // The loop condition is computed from all-reduced values only, so every rank runs the
  // same number of rounds (and reduceSum calls).
  for (let round = 0; round < MAX_SHIFT_ROUNDS; round++) {
    const maxGap = tf.max(gap);
    const worst = (await maxGap.data())[0] as number;
    maxGap.dispose();
    if (!(worst > MAX_SHIFT_GAP)) break;
    // A log-sum-exp at scale β = gap / 60 ≥ 1: exponents lie in [−60, ~0], so neither the
    // rank holding the maximum underflows nor any rank overflows. The result c' satisfies
    // max ≤ c' ≤ max + β·ln B, a gap smaller by the factor ln(B) / 60.
    const beta = tf.tidy(() => tf.maximum(tf.div(gap, MAX_SHIFT_GAP), 1));
    const sums = await reduce(
      reduceSum,
      tf.tidy(() => tf.sum(tf.exp(tf.div(tf.sub(scaled, shift), beta)), 0)),
    );
    const refined = tf.tidy(() => ({
      shift: tf.add<tf.Tensor1D>(shift, tf.mul(beta, tf.log(sums))),
      gap: tf.mul<tf.Tensor1D>(beta, Math.log(globalBatch)),
    }));
    tf.dispose([shift, gap, beta, sums]);
    ({ shift, gap } = refined);
  }
  gap.dispose();
  return shift;
}

/** Calls the all-reduce and frees the local input unless it came back as the result. */
async function reduce(reduceSum: ReduceSum, local: tf.Tensor): Promise<tf.Tensor> {
  const global = await reduceSum(local);
  if (global !== local) local.dispose();
  return global;
}

/** Computes a successor of `previous` in a tidy scope and frees `previous`. */
function replace<T extends tf.Tensor>(previous: tf.Tensor, compute: () => T): T {
  const next = tf.tidy(compute);
  previous.dispose();
  return next;
}
