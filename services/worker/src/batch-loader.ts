/**
 * Turns shard leases into training batches: lease samples → S3 objects (or the bytes a
 * WebDataset tar carried) → decoded, multi-cropped images, with bounded concurrency,
 * replacing every bad entry by the next sample, and loading batches ahead of the step
 * within a byte budget (docs/cluster.md, step loop item 3; docs/data.md). Decoding and
 * cropping run in a {@link CropPool}'s threads, straight into the batch's shared buffers.
 * The step loop only sees {@link BatchSource}, so tests can feed it from memory.
 */
import { setMaxListeners } from 'node:events';
import type { S3Client } from '@aws-sdk/client-s3';
import type { CropBatch, Image, MultiCropConfig } from '@dinofleet/dino';
import { stepCropSeed } from '@dinofleet/dino';
import { DEFAULT_FETCH_CONCURRENCY, DEFAULT_MAX_IMAGE_OBJECT_BYTES, DecodeError, FetchSkipReason, allocateCropBatch, cropBatchBytes, decodeImage, fetchObjects } from '@dinofleet/data';
import { ObjectReadError } from '@dinofleet/data';
import type { BackoffOptions, CropPool, DecodeErrorCode, FetchedObject, ImageSource, S3Config } from '@dinofleet/data';
import { UnavailableError } from '@dinofleet/proto';
import type { DataCursor, SkippedSample } from '@dinofleet/proto';
import { SkipReason } from '@dinofleet/telemetry';
import type { LeaseReader, LeaseSample } from './lease-reader.ts';

/** One rank's images of one step and where they came from. */
export interface TrainingBatch {
  /** The decoded images, in batch order; empty when the loader built {@link crops}. */
  readonly images: readonly Image[];
  /** The batch's multi-crop views, built by the loader for step {@link cropStep}. */
  readonly crops?: CropBatch;
  /** The step the crops were drawn for (their random streams depend on it). */
  readonly cropStep?: number;
  /** Sample id of each image, in batch order. */
  readonly sampleIds: readonly number[];
  /** Epoch of the lease each image came from, in batch order (CommitStep.sample_epochs). */
  readonly sampleEpochs: readonly number[];
  /** Entries skipped while filling the batch (replaced by later samples). */
  readonly skipped: readonly SkippedSample[];
  /** Every lease read for the batch, in read order, with its position after it. */
  readonly cursors: readonly DataCursor[];
}

/** Images in a batch. */
export function batchImageCount(batch: TrainingBatch): number {
  return batch.crops?.batchSize ?? batch.images.length;
}

/** Bytes a batch holds in memory (its crops, or its decoded images). */
export function batchBytes(batch: TrainingBatch): number {
  if (batch.crops !== undefined) return cropBatchBytes(batch.crops);
  return batch.images.reduce((sum, image) => sum + image.data.byteLength, 0);
}

/** Where the step loop takes its batches from: one batch of the rank's size per call. */
export interface BatchSource {
  /** The next batch. Calls must not overlap. */
  next(): Promise<TrainingBatch>;
  /** Stops loading; a pending `next()` may reject. Idempotent. */
  close(): Promise<void>;
}

/** What the loader reports for the data metrics (TrainingMetrics has these). */
export interface LoaderMetrics {
  recordLoaded(images: number, bytes: number): void;
  observeImageSeconds(stage: 'decode' | 'augment', seconds: number): void;
}

/** Crops built by the loader instead of the step loop. */
export interface LoaderCrops {
  /** The recipe's multi-crop. */
  readonly config: MultiCropConfig;
  /** The run's seed (the DinoState's). */
  readonly seed: number;
  /** The step the first batch is for; batch k is for step `firstStep + k`. */
  readonly firstStep: number;
  /** Position of this rank's first image in the global batch. */
  readonly batchOffset: number;
  /** The threads that decode and crop. */
  readonly pool: CropPool;
  /**
   * Settings of the threads' own S3 clients: with them the threads GET the images too, so
   * loading goes on while the main thread runs the step. @default the main thread GETs
   */
  readonly s3?: S3Config;
}

/** Settings of {@link S3BatchLoader}. */
export interface S3BatchLoaderOptions {
  /** The rank's lease reader (the loader closes it). */
  reader: LeaseReader;
  /** Client for the images' endpoint. */
  s3: S3Client;
  /** Bucket the manifest's keys are relative to. */
  bucket: string;
  /** Images per batch (the rank's per-rank batch), >= 1. */
  batchSize: number;
  /** Objects in flight at once. @default 16 */
  concurrency?: number;
  /** Channels of the decoded images (the model's input channels). @default 3 */
  channels?: 1 | 3;
  /** Build the batches' crops in a thread pool; without it batches carry decoded images. */
  crops?: LoaderCrops;
  /** Called for every skipped entry (logging, the skipped-samples metric). */
  onSkip?: (skipped: SkippedSample, detail: string) => void;
  /** Data metrics. */
  metrics?: LoaderMetrics;
  /**
   * Retries of an object whose read failed (not a missing object nor an undecodable one),
   * done by `fetchObjects` with `readBackoff`; once they are used up the batch fails with
   * `S3 s3://bucket/key: <error> after N attempts`. Each try is one request with the S3
   * client's own retries. @default {@link READ_RETRIES}
   */
  readRetries?: number;
  /** Backoff between those retries. @default {@link READ_BACKOFF}: 0.5, 1, 2 s upper bounds, jittered */
  readBackoff?: BackoffOptions;
  /** Logs each retry of a failed read. */
  onReadRetry?: (key: string, attempt: number, detail: string) => void;
}

/** Default of {@link S3BatchLoaderOptions.readRetries} (docs/cluster.md, worker item 9). */
export const READ_RETRIES = 3;
/** Default of {@link S3BatchLoaderOptions.readBackoff}: retry k waits up to 0.5 · 2^k s. */
export const READ_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 5_000 };

/** A batch could not be read: an object kept failing (not missing, not undecodable). */
export class ImageReadError extends UnavailableError {}

/** The skip reason of an image that does not decode. */
export function decodeSkipReason(code: DecodeErrorCode): SkipReason {
  switch (code) {
    case 'unsupported_format':
      return SkipReason.NotImage;
    case 'too_large':
      return SkipReason.TooLarge;
    case 'empty':
    case 'corrupt':
      return SkipReason.DecodeError;
  }
}

/** A sample whose encoded bytes are in hand. */
interface ReadSample {
  readonly sample: LeaseSample;
  readonly bytes: Uint8Array;
}

/** Loads batches from shard leases in S3. */
export class S3BatchLoader implements BatchSource {
  readonly #options: S3BatchLoaderOptions;
  readonly #abort = new AbortController();
  /** Batches handed out so far (batch k is for step crops.firstStep + k). */
  #batches = 0;

  constructor(options: S3BatchLoaderOptions) {
    if (!Number.isSafeInteger(options.batchSize) || options.batchSize < 1) {
      throw new RangeError(`batchSize must be an integer >= 1, got ${options.batchSize}`);
    }
    this.#options = options;
    // One signal is shared by every GET of the loader: each object in flight holds one
    // 'abort' listener (the HTTP request's, or its retry backoff's), removed when it
    // settles. Node warns past 10 listeners ("Possible EventTarget memory leak"), which
    // fetch concurrencies above 10 reach on every batch without leaking anything.
    setMaxListeners(2 * (options.concurrency ?? DEFAULT_FETCH_CONCURRENCY) + 1, this.#abort.signal);
  }

  async next(): Promise<TrainingBatch> {
    const { reader, batchSize, onSkip, crops } = this.#options;
    const channels = this.#options.channels ?? 3;
    const step = crops === undefined ? undefined : crops.firstStep + this.#batches;
    this.#batches++;
    const target = crops === undefined ? undefined : allocateCropBatch(crops.config, batchSize, channels);
    const images: Image[] = [];
    const sampleIds: number[] = [];
    const sampleEpochs: number[] = [];
    const skipped: SkippedSample[] = [];
    let filled = 0;
    let bytesRead = 0;
    const skip = (sample: LeaseSample, reason: string, detail: string): void => {
      const entry = { sampleId: sample.id, key: sample.key.slice(0, 256), reason };
      skipped.push(entry);
      onSkip?.(entry, detail);
    };
    const accept = (sample: LeaseSample): void => {
      sampleIds.push(sample.id);
      sampleEpochs.push(sample.lease.epoch);
      filled++;
    };
    if (crops !== undefined && target !== undefined && step !== undefined) {
      const slots = await this.#cropBatch(crops, target, stepCropSeed(crops.seed, step), skip);
      for (const { sample } of slots) accept(sample);
      bytesRead = slots.reduce((sum, slot) => sum + slot.bytesRead, 0);
    }
    while (filled < batchSize) {
      // Read exactly as many samples as images are missing: a replacement is the next
      // sample, so the batch (and the cursor) never runs past what it trains on.
      const wanted: LeaseSample[] = [];
      while (wanted.length < batchSize - filled) {
        const sample = await reader.next();
        if (sample.skip !== undefined) skip(sample, sample.skip.reason, sample.skip.detail);
        else wanted.push(sample);
      }
      const read = await this.#read(wanted, skip);
      for (const r of read) bytesRead += r.bytes.byteLength;
      for (const { sample, bytes } of read) {
        const started = performance.now();
        try {
          images.push(await decodeImage(bytes, { channels }));
        } catch (error) {
          if (!(error instanceof DecodeError)) throw error;
          skip(sample, decodeSkipReason(error.code), `${error.code}: ${error.message}`);
          continue;
        }
        this.#options.metrics?.observeImageSeconds('decode', (performance.now() - started) / 1000);
        accept(sample);
      }
    }
    this.#options.metrics?.recordLoaded(filled, bytesRead);
    return {
      images,
      ...(target !== undefined && step !== undefined && { crops: target, cropStep: step }),
      sampleIds,
      sampleEpochs,
      skipped,
      cursors: await reader.takeCursors(),
    };
  }

  /**
   * Fills every slot of `target` in the pool: slot k gets the k-th sample read, and a
   * sample that turns out missing or undecodable leaves its slot to the next sample read,
   * so no other image moves (an image's random stream depends on its slot). The samples
   * come back in slot order, which is the order the step reports them in.
   */
  async #cropBatch(
    crops: LoaderCrops,
    target: CropBatch,
    batchSeed: number,
    skip: (sample: LeaseSample, reason: string, detail: string) => void,
  ): Promise<{ sample: LeaseSample; bytesRead: number }[]> {
    const { reader, bucket } = this.#options;
    const { pool, batchOffset, config } = crops;
    const channels = target.channels as 1 | 3;
    const retries = this.#options.readRetries ?? READ_RETRIES;
    const filled = new Array<{ sample: LeaseSample; bytesRead: number } | undefined>(target.batchSize);
    let holes = Array.from({ length: target.batchSize }, (_, slot) => slot);
    while (holes.length > 0) {
      const wanted: LeaseSample[] = [];
      while (wanted.length < holes.length) {
        const sample = await reader.next();
        if (sample.skip !== undefined) skip(sample, sample.skip.reason, sample.skip.detail);
        else wanted.push(sample);
      }
      let sources: { sample: LeaseSample; source: ImageSource }[];
      if (crops.s3 === undefined) {
        sources = (await this.#read(wanted, skip)).map(({ sample, bytes }) => ({ sample, source: { bytes } }));
      } else {
        const s3 = crops.s3;
        const fetch = (key: string): ImageSource => ({
          fetch: { s3, bucket, key, retries, backoff: this.#options.readBackoff ?? READ_BACKOFF, maxObjectBytes: DEFAULT_MAX_IMAGE_OBJECT_BYTES },
        });
        sources = wanted.map((sample) => ({ sample, source: sample.bytes !== undefined ? { bytes: sample.bytes } : fetch(sample.key) }));
      }
      const results = await Promise.allSettled(
        sources.map(({ source }, i) => {
          const slot = holes[i] as number;
          return pool.loadAndCrop(source, channels, { config, batchSeed, globalIndex: batchOffset + slot, slot, batchSize: target.batchSize, global: target.global, local: target.local });
        }),
      );
      const left: number[] = holes.slice(sources.length);
      let failedRead: { key: string; error: ObjectReadError } | undefined;
      results.forEach((result, i) => {
        const { sample } = sources[i] as { sample: LeaseSample };
        const slot = holes[i] as number;
        if (result.status === 'fulfilled') {
          filled[slot] = { sample, bytesRead: result.value.bytesRead };
          result.value.retries.forEach((detail, attempt) => this.#options.onReadRetry?.(sample.key, attempt + 1, detail));
          this.#options.metrics?.observeImageSeconds('decode', result.value.decodeSeconds);
          this.#options.metrics?.observeImageSeconds('augment', result.value.cropSeconds);
          return;
        }
        const error: unknown = result.reason;
        left.push(slot);
        if (error instanceof ObjectReadError) {
          error.retries.forEach((detail, attempt) => this.#options.onReadRetry?.(sample.key, attempt + 1, detail));
          if (error.code === FetchSkipReason.ReadError) failedRead ??= { key: sample.key, error };
          else skip(sample, error.code === FetchSkipReason.DecodeError ? SkipReason.TooLarge : error.code, error.message);
        } else if (error instanceof DecodeError) {
          skip(sample, decodeSkipReason(error.code), `${error.code}: ${error.message}`);
        } else {
          throw error;
        }
      });
      if (failedRead !== undefined) {
        throw new ImageReadError(`S3 s3://${bucket}/${failedRead.key}: ${failedRead.error.message.replace(/^after \d+ attempt\(s\): /, '')} after ${retries + 1} attempts`);
      }
      holes = left.sort((a, b) => a - b);
    }
    return filled as { sample: LeaseSample; bytesRead: number }[];
  }

  /**
   * The encoded bytes of `samples`: those a tar carried, the others fetched. A missing or
   * oversized object is skipped; one whose read fails otherwise (5xx, throttling, network,
   * denied) is retried by `fetchObjects` and then fails the batch, since skipping it would
   * make the sample ledger depend on S3's mood rather than on the data.
   */
  async #read(samples: readonly LeaseSample[], skip: (sample: LeaseSample, reason: string, detail: string) => void): Promise<ReadSample[]> {
    const { s3, bucket } = this.#options;
    const retries = this.#options.readRetries ?? READ_RETRIES;
    const toFetch = samples.filter((sample) => sample.bytes === undefined);
    const fetched = new Map<LeaseSample, FetchedObject>();
    if (toFetch.length > 0) {
      const results = await fetchObjects(
        s3,
        bucket,
        toFetch.map((sample) => sample.key),
        {
          concurrency: this.#options.concurrency ?? DEFAULT_FETCH_CONCURRENCY,
          retries,
          backoff: this.#options.readBackoff ?? READ_BACKOFF,
          ...(this.#options.onReadRetry !== undefined && { onRetry: this.#options.onReadRetry }),
          signal: this.#abort.signal,
        },
      );
      const failed = results.find((r): r is Extract<FetchedObject, { skipped: string }> => 'skipped' in r && r.skipped === FetchSkipReason.ReadError);
      if (failed !== undefined) {
        throw new ImageReadError(`S3 s3://${bucket}/${failed.key}: ${failed.detail.replace(/^after \d+ attempt\(s\): /, '')} after ${retries + 1} attempts`);
      }
      toFetch.forEach((sample, i) => fetched.set(sample, results[i] as FetchedObject));
    }
    const read: ReadSample[] = [];
    for (const sample of samples) {
      if (sample.bytes !== undefined) {
        read.push({ sample, bytes: sample.bytes });
        continue;
      }
      const result = fetched.get(sample) as FetchedObject;
      if ('skipped' in result) skip(sample, result.skipped, result.detail);
      else read.push({ sample, bytes: result.bytes });
    }
    return read;
  }

  async close(): Promise<void> {
    this.#abort.abort(new Error('batch loader closed'));
    await this.#options.reader.close().catch(() => undefined);
  }
}

/** Settings of {@link PrefetchingBatchSource}. */
export interface PrefetchOptions {
  /** Most batches loaded ahead of the step, >= 1. @default 4 */
  readonly maxBatches?: number;
  /** Loading stops while the batches loaded ahead hold this many bytes (one batch always loads). @default 512 MiB */
  readonly maxBytes?: number;
  /** Called with the bytes loaded ahead whenever they change (the prefetch gauge). */
  readonly onQueuedBytes?: (bytes: number) => void;
}

/** Default {@link PrefetchOptions.maxBatches}. */
export const DEFAULT_PREFETCH_BATCHES = 4;
/** Default {@link PrefetchOptions.maxBytes}. */
export const DEFAULT_PREFETCH_BYTES = 512 * 1024 * 1024;

interface Prefetched {
  readonly batch: Promise<TrainingBatch>;
  /** Bytes once loaded (0 while loading). */
  bytes: number;
}

/**
 * Loads batches ahead of the step, one at a time from its source, while fewer than
 * `maxBatches` wait and they hold less than `maxBytes`: backpressure in bytes, so a
 * 224-pixel multi-crop batch (≈ 130 MB at 64 images) and a 28-pixel one are both bounded.
 */
export class PrefetchingBatchSource implements BatchSource {
  readonly #source: BatchSource;
  readonly #maxBatches: number;
  readonly #maxBytes: number;
  readonly #onQueuedBytes: ((bytes: number) => void) | undefined;
  readonly #queue: Prefetched[] = [];
  #loading = false;
  #failed = false;
  #closed = false;
  /** Batches that may still be loaded. */
  #remaining: number;

  /**
   * @param source the loader.
   * @param batches how many batches will be asked for at most (the steps left in the job),
   *   so nothing is read, and no lease acquired, past the last step. @default unlimited
   */
  constructor(source: BatchSource, batches = Number.POSITIVE_INFINITY, options: PrefetchOptions = {}) {
    const maxBatches = options.maxBatches ?? DEFAULT_PREFETCH_BATCHES;
    const maxBytes = options.maxBytes ?? DEFAULT_PREFETCH_BYTES;
    if (!Number.isSafeInteger(maxBatches) || maxBatches < 1) throw new RangeError(`maxBatches must be a positive integer, got ${maxBatches}`);
    if (!(maxBytes > 0)) throw new RangeError(`maxBytes must be positive, got ${maxBytes}`);
    this.#source = source;
    this.#remaining = batches;
    this.#maxBatches = maxBatches;
    this.#maxBytes = maxBytes;
    this.#onQueuedBytes = options.onQueuedBytes;
  }

  #queuedBytes(): number {
    return this.#queue.reduce((sum, entry) => sum + entry.bytes, 0);
  }

  /** Starts the next load when there is room (the source takes no overlapping calls). */
  #fill(): void {
    if (this.#closed || this.#failed || this.#loading || this.#remaining <= 0) return;
    if (this.#queue.length >= this.#maxBatches || (this.#queue.length > 0 && this.#queuedBytes() >= this.#maxBytes)) return;
    this.#remaining--;
    this.#loading = true;
    const entry: Prefetched = { batch: this.#source.next(), bytes: 0 };
    this.#queue.push(entry);
    entry.batch.then(
      (batch) => {
        entry.bytes = batchBytes(batch);
        this.#loading = false;
        this.#onQueuedBytes?.(this.#queuedBytes());
        this.#fill();
      },
      () => {
        // Seen by whoever takes this batch; nothing is loaded after a failure.
        this.#loading = false;
        this.#failed = true;
      },
    );
  }

  next(): Promise<TrainingBatch> {
    if (this.#closed) return Promise.reject(new Error('batch source closed'));
    this.#fill();
    const entry = this.#queue.shift();
    if (entry === undefined) return Promise.reject(new RangeError('no batch left: the job has no step left'));
    return entry.batch.then((batch) => {
      this.#onQueuedBytes?.(this.#queuedBytes());
      this.#fill();
      return batch;
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const entry of this.#queue.splice(0)) entry.batch.catch(() => undefined);
    await this.#source.close();
  }
}

/** One image of a {@link MemoryBatchSource}. */
export interface MemorySample {
  readonly sampleId: number;
  readonly image: Image;
  /** Its epoch. @default 0 */
  readonly epoch?: number;
}

/**
 * Batches of `batchSize` from an in-memory list, in order (for tests and benchmarks):
 * no leases, so the cursors are empty.
 */
export class MemoryBatchSource implements BatchSource {
  readonly #samples: readonly MemorySample[];
  readonly #batchSize: number;
  #position = 0;

  constructor(samples: readonly MemorySample[], batchSize: number) {
    this.#samples = samples;
    this.#batchSize = batchSize;
  }

  next(): Promise<TrainingBatch> {
    if (this.#position + this.#batchSize > this.#samples.length) {
      return Promise.reject(new RangeError(`memory batch source: ${this.#samples.length} samples, no batch left at ${this.#position}`));
    }
    const slice = this.#samples.slice(this.#position, this.#position + this.#batchSize);
    this.#position += this.#batchSize;
    return Promise.resolve({
      images: slice.map((s) => s.image),
      sampleIds: slice.map((s) => s.sampleId),
      sampleEpochs: slice.map((s) => s.epoch ?? 0),
      skipped: [],
      cursors: [],
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
