/**
 * Tensor fusion: many small gradient tensors summed by a few large all-reduces (Horovod's
 * "tensor fusion", PyTorch DDP's gradient buckets). A ring all-reduce costs a fixed
 * 2(n−1) message latencies plus bytes / bandwidth, so one collective per small tensor is
 * latency-bound; packing the tensors back to back into buckets pays the latency once per
 * bucket. An element-wise sum does not care where one tensor ends and the next begins, so
 * a bucket may hold the tail of one tensor and the head of the next, and a tensor larger
 * than a bucket is split over several.
 *
 * Generic over where the gradients come from (no tfjs here): each part is read on demand
 * (e.g. a GPU download), and the next bucket is read while the current one is reduced.
 */
import { InvalidArgumentError } from '@dinofleet/proto';

/**
 * Default bucket size, in bytes: 64 MiB, Horovod's default fusion threshold
 * (HOROVOD_FUSION_THRESHOLD). Large enough that the ring's per-collective latency is
 * amortised over many MiB (the ring sends it as 1 MiB chunks, so the pipeline stays full),
 * small enough that a model of a few hundred MiB of gradients still splits into several
 * buckets, so reading bucket k+1 overlaps reducing bucket k.
 */
export const DEFAULT_FUSION_BUCKET_BYTES = 64 * 1024 * 1024;

/** A contiguous run of one tensor's elements inside one bucket. */
export interface FusionPiece {
  /** Index of the tensor in the list given to {@link planFusionBuckets}. */
  readonly tensor: number;
  /** First element of the run within the tensor. */
  readonly tensorOffset: number;
  /** First element of the run within the bucket. */
  readonly bucketOffset: number;
  /** Elements in the run, ≥ 1. */
  readonly length: number;
}

/** One all-reduce's worth of elements: a contiguous range of the tensors' concatenation. */
export interface FusionBucket {
  /** Position in the plan, 0-based; buckets are reduced in this order. */
  readonly index: number;
  /** First element of the bucket in the flat concatenation of all tensors. */
  readonly start: number;
  /** Elements in the bucket: bucketBytes / 4 for every bucket but possibly the last. */
  readonly length: number;
  /** The tensor runs that make up the bucket, in order, back to back from offset 0. */
  readonly pieces: readonly FusionPiece[];
}

function checkBucketBytes(bucketBytes: number): void {
  if (!Number.isSafeInteger(bucketBytes) || bucketBytes < 4 || bucketBytes % 4 !== 0) {
    throw new InvalidArgumentError(`bucketBytes must be a multiple of 4 and >= 4, got ${bucketBytes}`);
  }
}

function checkElementCount(field: string, count: number): void {
  if (!Number.isSafeInteger(count) || count < 0) {
    throw new InvalidArgumentError(`${field} must be an integer >= 0, got ${count}`);
  }
}

function plan(counts: readonly number[], bucketBytes: number, field: (i: number) => string): FusionBucket[] {
  checkBucketBytes(bucketBytes);
  counts.forEach((count, i) => checkElementCount(field(i), count));
  const total = counts.reduce((sum, count) => sum + count, 0);
  if (!Number.isSafeInteger(total)) {
    throw new InvalidArgumentError(`the ${counts.length} tensors total ${total} elements, more than 2^53 - 1`);
  }
  const capacity = bucketBytes / 4;
  const buckets: FusionBucket[] = [];
  let pieces: FusionPiece[] = [];
  let filled = 0; // elements in the open bucket
  let flat = 0; // elements planned so far
  const close = (): void => {
    buckets.push({ index: buckets.length, start: flat - filled, length: filled, pieces });
    pieces = [];
    filled = 0;
  };
  counts.forEach((count, tensor) => {
    let tensorOffset = 0;
    while (tensorOffset < count) {
      const length = Math.min(count - tensorOffset, capacity - filled);
      pieces.push({ tensor, tensorOffset, bucketOffset: filled, length });
      tensorOffset += length;
      filled += length;
      flat += length;
      if (filled === capacity) close();
    }
  });
  if (filled > 0) close();
  return buckets;
}

/**
 * Packs tensors of `elementCounts[i]` float32 elements, in order, into contiguous buckets
 * of at most bucketBytes / 4 elements. Every bucket but possibly the last is exactly full;
 * a tensor that does not fit the rest of a bucket continues in the next (over as many
 * buckets as it needs). Zero-length tensors appear in no piece. An empty or all-zero list
 * gives no buckets.
 *
 * @param elementCounts elements per tensor, each an integer ≥ 0.
 * @param bucketBytes bytes per bucket, a multiple of 4, ≥ 4. @default 64 MiB
 * @throws InvalidArgumentError naming the offending field.
 */
export function planFusionBuckets(
  elementCounts: readonly number[],
  bucketBytes: number = DEFAULT_FUSION_BUCKET_BYTES,
): FusionBucket[] {
  return plan(elementCounts, bucketBytes, (i) => `elementCounts[${i}]`);
}

/** One tensor's gradient for {@link allReduceFused}. */
export interface FusedPart {
  /** Elements of the gradient, an integer ≥ 0. */
  readonly length: number;
  /**
   * Produces the gradient's `length` float32 values; called at most once per
   * {@link allReduceFused} call (never for a zero-length part), when the first bucket that
   * holds any of its elements is filled. The returned array is only read, never written.
   */
  read(): Float32Array | Promise<Float32Array>;
}

/**
 * An in-place sum all-reduce of one bucket: resolves with the reduced values, normally
 * `bucket` itself (another array of the same length is copied back into `bucket`).
 * {@link allReduceFused} calls it for buckets 0, 1, ... in order, each call only after the
 * previous one resolved, so every rank issues the same collectives in the same order.
 */
export type BucketReduce = (bucket: Float32Array, bucketIndex: number) => Promise<Float32Array>;

/** Settings of one {@link allReduceFused} call. */
export interface FusedAllReduceOptions {
  /** Bytes per bucket, a multiple of 4, ≥ 4. Every rank must use the same value. @default 64 MiB */
  bucketBytes?: number;
  /**
   * Where to put the result: a Float32Array of exactly the parts' total length, reused
   * across steps to save allocating (and page-faulting in) a gradient-sized array per call.
   * @default a new Float32Array
   */
  output?: Float32Array;
}

/** Figures of one {@link allReduceFused} call. All times are wall-clock seconds. */
export interface FusedAllReduceStats {
  /** Buckets reduced (= collectives issued). */
  readonly buckets: number;
  /** Bytes reduced: 4 × the parts' total length. */
  readonly sizeBytes: number;
  /** Wall time of the whole call. */
  readonly seconds: number;
  /** Time spent reading parts and copying them into place, summed over buckets, hidden or not. */
  readonly readSeconds: number;
  /** Time spent in `reduce` calls, summed over buckets. */
  readonly reduceSeconds: number;
  /**
   * Time the call waited for reads with no reduce in flight: the first bucket's fill, plus
   * for each later bucket however long its fill outlasted the previous bucket's reduce.
   * seconds ≈ reduceSeconds + readWaitSeconds; near 0 beyond the first fill means reads
   * were hidden behind reduces.
   */
  readonly readWaitSeconds: number;
}

/** Result of {@link allReduceFused}. */
export interface FusedAllReduceResult {
  /** The reduced values: the flat concatenation of all parts, in order. */
  readonly values: Float32Array;
  /** How the call went. */
  readonly stats: FusedAllReduceStats;
}

interface Timed<T> {
  readonly value: T;
  readonly seconds: number;
  /** performance.now() at the end, in ms. */
  readonly endedAt: number;
}

async function timed<T>(run: () => Promise<T>): Promise<Timed<T>> {
  const startedAt = performance.now();
  const value = await run();
  const endedAt = performance.now();
  return { value, seconds: (endedAt - startedAt) / 1000, endedAt };
}

/**
 * Sum all-reduces the concatenation of `parts` bucket by bucket with `reduce`, reading the
 * parts of bucket k+1 while bucket k is being reduced, and resolves with the reduced
 * concatenation.
 *
 * Copies: each part is read once and copied once, whole, into its place in the output;
 * the buckets are views of the output (no bucket buffers), reduced in place. That is the
 * minimum, since the result is one flat array and the parts' arrays are not ours to
 * write; with a single bucket it is read-into-output plus one in-place reduce. A part that
 * spans buckets is copied whole when the first of them is filled, so its array is dropped
 * at once rather than cached.
 *
 * Pipelining: bucket k+1's parts are read (all its not-yet-read parts started together,
 * in order) only once bucket k's reduce has been called, and bucket k+2's only once that
 * reduce has resolved: at most one bucket being filled and one being reduced at a time,
 * which bounds the parts' arrays alive to about one bucket's worth plus one part.
 *
 * On failure (a read or reduce rejecting, a read of the wrong length) it waits for the
 * other operation in flight to settle, then rejects with the first error in program order
 * (the reduce's before the next fill's); no later bucket is reduced and the output's
 * contents are unspecified.
 *
 * @throws InvalidArgumentError for a bad part length, bucketBytes or output length, or a
 * read or reduce result of the wrong length.
 */
export async function allReduceFused(
  parts: readonly FusedPart[],
  reduce: BucketReduce,
  options: FusedAllReduceOptions = {},
): Promise<FusedAllReduceResult> {
  const startedAt = performance.now();
  const lengths = parts.map((part) => part.length);
  const buckets = plan(lengths, options.bucketBytes ?? DEFAULT_FUSION_BUCKET_BYTES, (i) => `parts[${i}].length`);
  const offsets: number[] = [];
  let total = 0;
  for (const length of lengths) {
    offsets.push(total);
    total += length;
  }
  const output = options.output ?? new Float32Array(total);
  if (output.length !== total) {
    throw new InvalidArgumentError(`options.output has ${output.length} elements, the parts total ${total}`);
  }

  let nextPart = 0; // first part not read yet
  const fill = async (bucket: FusionBucket): Promise<void> => {
    const end = bucket.start + bucket.length;
    const first = nextPart;
    while (nextPart < parts.length && offsets[nextPart]! < end) nextPart++;
    const indices: number[] = [];
    for (let i = first; i < nextPart; i++) if (lengths[i]! > 0) indices.push(i);
    // Started together so that asynchronous reads (GPU downloads) can overlap each other.
    const arrays = await Promise.all(indices.map(async (i) => parts[i]!.read()));
    arrays.forEach((values, j) => {
      const i = indices[j]!;
      if (values.length !== lengths[i]) {
        throw new InvalidArgumentError(`parts[${i}].read() returned ${values.length} elements, expected ${lengths[i]}`);
      }
      output.set(values, offsets[i]);
    });
  };
  const reduceBucket = async (bucket: FusionBucket): Promise<void> => {
    const view = output.subarray(bucket.start, bucket.start + bucket.length);
    const reduced = await reduce(view, bucket.index);
    if (reduced.buffer === view.buffer && reduced.byteOffset === view.byteOffset && reduced.length === view.length) {
      return;
    }
    if (reduced.length !== view.length) {
      throw new InvalidArgumentError(
        `reduce returned ${reduced.length} elements for bucket ${bucket.index} of ${view.length}`,
      );
    }
    view.set(reduced);
  };

  let readSeconds = 0;
  let reduceSeconds = 0;
  let readWaitSeconds = 0;
  if (buckets.length > 0) {
    const first = await timed(() => fill(buckets[0]!));
    readSeconds += first.seconds;
    readWaitSeconds += first.seconds;
  }
  for (let k = 0; k < buckets.length; k++) {
    // The reduce is called first (synchronously, inside timed) so the collective starts
    // before the reads of the next bucket compete with it.
    const reducing = timed(() => reduceBucket(buckets[k]!));
    const next = buckets[k + 1];
    const filling = next === undefined ? undefined : timed(() => fill(next));
    // Both settle before anything is thrown: nothing may still write into the output after
    // this call has returned.
    const [reduced, filled] = await Promise.allSettled([reducing, filling]);
    if (reduced.status === 'rejected') throw reduced.reason;
    if (filled.status === 'rejected') throw filled.reason;
    reduceSeconds += reduced.value.seconds;
    if (filled.value !== undefined) {
      readSeconds += filled.value.seconds;
      readWaitSeconds += Math.max(0, filled.value.endedAt - reduced.value.endedAt) / 1000;
    }
  }
  return {
    values: output,
    stats: {
      buckets: buckets.length,
      sizeBytes: total * 4,
      seconds: (performance.now() - startedAt) / 1000,
      readSeconds,
      reduceSeconds,
      readWaitSeconds,
    },
  };
}
