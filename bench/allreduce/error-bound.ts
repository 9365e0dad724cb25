/**
 * The accuracy check of the all-reduce bench: every sampled element of a rank's result
 * must lie within a forward-error bound of the exact (float64) sum of all ranks' inputs.
 *
 * Bound for element i: ((n−1)·2^−24 + c)·Σ_r|x_r[i]| + a. The first term is the classic
 * first-order bound of n−1 float32 additions in any order (Higham, "Accuracy and
 * Stability of Numerical Algorithms", §4.2, u = 2^−24); c and a add the rounding of the
 * wire format when the collective compresses: bf16 keeps 8 significand bits (relative
 * 2^−8 per rounding, up to n of them), fp16 keeps 11 (2^−11), and below its normal range
 * it rounds to a fixed step of 2^−24, at most 2^−25 per rounding: the absolute n·2^−25.
 */
import { Compression, allReduceErrorBound, isCompression } from '@dinofleet/collective';
import type { AllReduceErrorBound } from '@dinofleet/collective';
import { MIB } from './methodology.ts';
import { inputValue } from './rank-input.ts';

export { Compression };
/** Coefficients of the bound: relative × Σ_r|x_r[i]| + absolute. */
export type ErrorBound = AllReduceErrorBound;

/** The collective's compression named by `options.compression` (absent: none). */
export function compressionOf(options: Readonly<Record<string, unknown>>): Compression {
  const value = options['compression'];
  if (value === undefined) return Compression.None;
  if (isCompression(value)) return value;
  throw new Error(`--options: compression must be "none", "bf16" or "fp16", got ${JSON.stringify(value)}`);
}

/** The bound for `ranks` ranks and `compression` (the collective's documented one). */
export function errorBound(ranks: number, compression: Compression): ErrorBound {
  return allReduceErrorBound(ranks, compression);
}

/** Head and tail elements always checked on large sizes. */
const EDGE_ELEMENTS = 65_536;
/** Stride of the elements checked between head and tail on large sizes. */
const SAMPLE_STRIDE = 97;
/** Up to this size every element is checked. */
const CHECK_ALL_BYTES = 16 * MIB;

/** How a result compares with the exact sum over its sampled elements. */
export interface AccuracyCheck {
  /** Elements checked. */
  readonly sampled: number;
  /** max |result − ref|. */
  readonly maxAbsError: number;
  /** max (|result − ref| − bound): ≤ 0 passes; +Infinity if an element is not finite. */
  readonly worstExcess: number;
}

/**
 * Checks `result`, the all-reduced sum over `ranks` ranks of {@link inputValue}, against
 * the float64 reference: every element up to 16 MiB, beyond that the first and last
 * 65536 elements and every 97th one between them (the stride is prime, so it does not
 * line up with power-of-two chunk or segment boundaries).
 */
export function checkAccuracy(result: Float32Array, ranks: number, bound: ErrorBound): AccuracyCheck {
  let sampled = 0;
  let maxAbsError = 0;
  let worstExcess = Number.NEGATIVE_INFINITY;
  const check = (i: number): void => {
    let sum = 0;
    let sumAbs = 0;
    for (let r = 0; r < ranks; r++) {
      const x = inputValue(r, i);
      sum += x;
      sumAbs += Math.abs(x);
    }
    const error = Math.abs((result[i] as number) - sum);
    // NaN fails every comparison, so a NaN result counts as unbounded.
    const excess = Number.isFinite(error) ? error - (bound.relative * sumAbs + bound.absolute) : Number.POSITIVE_INFINITY;
    sampled++;
    if (!(error <= maxAbsError)) maxAbsError = Number.isFinite(error) ? error : Number.POSITIVE_INFINITY;
    if (excess > worstExcess) worstExcess = excess;
  };
  const n = result.length;
  if (result.byteLength <= CHECK_ALL_BYTES) {
    for (let i = 0; i < n; i++) check(i);
  } else {
    const head = Math.min(EDGE_ELEMENTS, n);
    const tailStart = Math.max(head, n - EDGE_ELEMENTS);
    for (let i = 0; i < head; i++) check(i);
    for (let i = Math.ceil(head / SAMPLE_STRIDE) * SAMPLE_STRIDE; i < tailStart; i += SAMPLE_STRIDE) check(i);
    for (let i = tailStart; i < n; i++) check(i);
  }
  return { sampled, maxAbsError, worstExcess };
}
