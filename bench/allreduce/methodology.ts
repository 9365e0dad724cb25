/**
 * What the all-reduce bench measures, shared by the ring ranks and the MPI baseline so
 * both sides are timed the same way: the per-size plan (warm-up calls, timed iterations)
 * and how per-rank, per-iteration times become one number.
 */
import { median } from '../lib/report.ts';

/** Bytes in a MiB. */
export const MIB = 1024 * 1024;

/** How one size is measured; identical for MPI and the ring. */
export interface SizePlan {
  /** Message size, in MiB (as given on the command line). */
  readonly sizeMiB: number;
  /** float32 elements reduced per call. */
  readonly elements: number;
  /** Untimed calls before the timed ones. */
  readonly warmups: number;
  /** Timed calls. */
  readonly iterations: number;
}

/** The measured time of one size on one side (ring or MPI). */
export interface SizeTime {
  /** The size, in MiB. */
  readonly sizeMiB: number;
  /** Median over iterations of the slowest rank's time, in ms. */
  readonly ms: number;
}

/**
 * Timed iterations at a few sizes: many where a call is short and its time noisy (40 at
 * 1 MiB), few where a call is long (5 at 256 MiB, seconds per call for a slow
 * collective), so a size costs seconds, not minutes. Other sizes interpolate on a
 * log-log scale (a call's time grows about linearly with size), clamped to 5..40.
 */
const ITERATION_ANCHORS: ReadonlyArray<readonly [sizeMiB: number, iterations: number]> = [
  [1, 40],
  [16, 10],
  [64, 6],
  [256, 5],
];
const MIN_ITERATIONS = 5;
const MAX_ITERATIONS = 40;

/** Default timed iterations for a size, in MIN_ITERATIONS..MAX_ITERATIONS. */
export function defaultIterations(sizeMiB: number): number {
  const first = ITERATION_ANCHORS[0] as readonly [number, number];
  const last = ITERATION_ANCHORS[ITERATION_ANCHORS.length - 1] as readonly [number, number];
  if (sizeMiB <= first[0]) return first[1];
  if (sizeMiB >= last[0]) return last[1];
  for (let k = 1; k < ITERATION_ANCHORS.length; k++) {
    const [s0, i0] = ITERATION_ANCHORS[k - 1] as readonly [number, number];
    const [s1, i1] = ITERATION_ANCHORS[k] as readonly [number, number];
    if (sizeMiB <= s1) {
      const t = Math.log(sizeMiB / s0) / Math.log(s1 / s0);
      const iterations = Math.round(Math.exp(Math.log(i0) + t * Math.log(i1 / i0)));
      return Math.min(MAX_ITERATIONS, Math.max(MIN_ITERATIONS, iterations));
    }
  }
  return last[1];
}

/** Warm-up calls: two for small sizes, where connection and allocator start-up weigh more. */
export function warmupCalls(sizeMiB: number): number {
  return sizeMiB <= 16 ? 2 : 1;
}

/**
 * The plan of every size. `iterations` overrides {@link defaultIterations}. Fails on a
 * size that is not a positive whole number of float32 elements.
 */
export function planSizes(sizesMiB: readonly number[], iterations?: number): SizePlan[] {
  if (iterations !== undefined && (!Number.isSafeInteger(iterations) || iterations < 1)) {
    throw new Error(`--iters must be an integer >= 1, got ${iterations}`);
  }
  if (new Set(sizesMiB).size !== sizesMiB.length) throw new Error(`--sizes lists a size twice: ${sizesMiB.join(',')}`);
  return sizesMiB.map((sizeMiB) => {
    const elements = (sizeMiB * MIB) / 4;
    if (!Number.isSafeInteger(elements) || elements < 1 || elements > 2 ** 31 - 1) {
      throw new Error(`--sizes: ${sizeMiB} MiB is not a whole number of float32 elements in 1..2^31-1`);
    }
    return {
      sizeMiB,
      elements,
      warmups: warmupCalls(sizeMiB),
      iterations: iterations ?? defaultIterations(sizeMiB),
    };
  });
}

/**
 * The time of one size from every rank's per-iteration times: an iteration lasts until
 * its slowest rank is done (max over ranks), and the size's time is the median iteration.
 */
export function iterationTimeMs(timesMsByRank: ReadonlyArray<readonly number[]>): number {
  const iterations = timesMsByRank[0]?.length ?? 0;
  if (iterations === 0 || timesMsByRank.some((times) => times.length !== iterations)) {
    throw new Error('every rank must report the same, non-zero number of iterations');
  }
  const slowest = Array.from({ length: iterations }, (_, i) => Math.max(...timesMsByRank.map((times) => times[i] as number)));
  return median(slowest);
}

/** Algorithm bandwidth sizeBytes / time, in GB/s (10^9 bytes per second). */
export function algBandwidthGBps(sizeBytes: number, timeMs: number): number {
  return sizeBytes / (timeMs / 1000) / 1e9;
}

/**
 * Bus bandwidth algbw × 2(n−1)/n, in GB/s: the bytes each rank's link carries in a ring
 * all-reduce, as nccl-tests defines it (PERFORMANCE.md there), so world sizes compare.
 */
export function busBandwidthGBps(sizeBytes: number, timeMs: number, ranks: number): number {
  return (algBandwidthGBps(sizeBytes, timeMs) * 2 * (ranks - 1)) / ranks;
}
