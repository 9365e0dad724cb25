/**
 * Turns shard leases into training batches: manifest records → S3 objects → decoded
 * images, with bounded concurrency, replacing every bad entry by the next record, and
 * prefetching the next batch while the step runs (docs/cluster.md, step loop item 3). The
 * step loop only sees {@link BatchSource}, so tests can feed it from memory.
 */
import { setMaxListeners } from 'node:events';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Image } from '@dinofleet/dino';
import { DEFAULT_FETCH_CONCURRENCY, FetchSkipReason, ManifestRecordError, fetchImages, parseManifestRecord } from '@dinofleet/data';
import type { BackoffOptions, FetchedImage } from '@dinofleet/data';
import { UnavailableError } from '@dinofleet/proto';
import type { DataCursor, SkippedSample } from '@dinofleet/proto';
import type { LeaseReader } from './lease-reader.ts';

/** One rank's images of one step and where they came from. */
export interface TrainingBatch {
  /** The images, in batch order. */
  readonly images: readonly Image[];
  /** Sample id (manifest byte offset) of each image, in batch order. */
  readonly sampleIds: readonly number[];
  /** Epoch of the lease each image came from, in batch order (CommitStep.sample_epochs). */
  readonly sampleEpochs: readonly number[];
  /** Entries skipped while filling the batch (replaced by later records). */
  readonly skipped: readonly SkippedSample[];
  /** Every lease read for the batch, in read order, with its position after it. */
  readonly cursors: readonly DataCursor[];
}

/** Where the step loop takes its batches from: one batch of the rank's size per call. */
export interface BatchSource {
  /** The next batch. Calls must not overlap. */
  next(): Promise<TrainingBatch>;
  /** Stops loading; a pending `next()` may reject. Idempotent. */
  close(): Promise<void>;
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
  /** Called for every skipped entry (logging, the skipped-samples metric). */
  onSkip?: (skipped: SkippedSample, detail: string) => void;
  /**
   * Retries of an object whose read failed (not a missing object nor an undecodable one),
   * done by `fetchImages` with `readBackoff`; once they are used up the batch fails with
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


/** Reason of a manifest line that is not `key[<TAB>label]`. */
export const INVALID_RECORD_REASON = 'invalid_record';

/** Loads batches from shard leases in S3. */
export class S3BatchLoader implements BatchSource {
  readonly #options: S3BatchLoaderOptions;
  readonly #abort = new AbortController();

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
    const { reader, batchSize, onSkip } = this.#options;
    const images: Image[] = [];
    const sampleIds: number[] = [];
    const sampleEpochs: number[] = [];
    const skipped: SkippedSample[] = [];
    const skip = (entry: SkippedSample, detail: string): void => {
      skipped.push(entry);
      onSkip?.(entry, detail);
    };
    while (images.length < batchSize) {
      // Read exactly as many records as images are missing: a replacement is the next
      // record, so the batch (and the cursor) never runs past what it trains on.
      const wanted: { offset: number; key: string; epoch: number }[] = [];
      while (wanted.length < batchSize - images.length) {
        const { lease, record } = await reader.next();
        try {
          const entry = parseManifestRecord(record);
          wanted.push({ offset: entry.offset, key: entry.key, epoch: lease.epoch });
        } catch (err) {
          if (!(err instanceof ManifestRecordError)) throw err;
          skip({ sampleId: record.offset, key: record.text.slice(0, 256), reason: INVALID_RECORD_REASON }, err.message);
        }
      }
      const fetched = await this.#fetch(wanted.map((w) => w.key));
      fetched.forEach((result, i) => {
        const { offset, epoch } = wanted[i] as { offset: number; epoch: number };
        if ('image' in result) {
          images.push(result.image);
          sampleIds.push(offset);
          sampleEpochs.push(epoch);
        } else {
          skip({ sampleId: offset, key: result.key, reason: result.skipped }, result.detail);
        }
      });
    }
    return { images, sampleIds, sampleEpochs, skipped, cursors: await reader.takeCursors() };
  }

  /**
   * Fetches `keys`: a missing or undecodable object comes back skipped; one whose read
   * fails otherwise (5xx, throttling, network, denied) is retried by `fetchImages` and then
   * fails the batch, since skipping it would make the sample ledger depend on S3's mood
   * rather than on the data.
   */
  async #fetch(keys: readonly string[]): Promise<FetchedImage[]> {
    const { s3, bucket } = this.#options;
    const retries = this.#options.readRetries ?? READ_RETRIES;
    const results = await fetchImages(s3, bucket, keys, {
      concurrency: this.#options.concurrency ?? DEFAULT_FETCH_CONCURRENCY,
      channels: this.#options.channels ?? 3,
      retries,
      backoff: this.#options.readBackoff ?? READ_BACKOFF,
      ...(this.#options.onReadRetry !== undefined && { onRetry: this.#options.onReadRetry }),
      signal: this.#abort.signal,
    });
    const failed = results.find((r): r is Extract<FetchedImage, { skipped: string }> => 'skipped' in r && r.skipped === FetchSkipReason.ReadError);
    if (failed !== undefined) {
      throw new ImageReadError(`S3 s3://${bucket}/${failed.key}: ${failed.detail.replace(/^after \d+ attempt\(s\): /, '')} after ${retries + 1} attempts`);
    }
    return results;
  }


  async close(): Promise<void> {
    this.#abort.abort(new Error('batch loader closed'));
    await this.#options.reader.close().catch(() => undefined);
  }
}

/**
 * Loads the next batch while the current one is trained on: `next()` hands out the
 * prefetched batch and starts loading the one after it.
 */
export class PrefetchingBatchSource implements BatchSource {
  readonly #source: BatchSource;
  #pending: Promise<TrainingBatch> | undefined;
  #closed = false;
  /** Batches that may still be loaded. */
  #remaining: number;

  /**
   * @param source the loader.
   * @param batches how many batches will be asked for at most (the steps left in the job),
   *   so nothing is read, and no lease acquired, past the last step. @default unlimited
   */
  constructor(source: BatchSource, batches = Number.POSITIVE_INFINITY) {
    this.#source = source;
    this.#remaining = batches;
  }

  #load(): Promise<TrainingBatch> {
    if (this.#remaining <= 0) return Promise.reject(new RangeError('no batch left: the job has no step left'));
    this.#remaining--;
    const loading = this.#source.next();
    // The rejection is seen by whoever takes this batch; until then it must not count as
    // unhandled (a prefetch failing while the loader is closed is expected).
    loading.catch(() => undefined);
    return loading;
  }

  next(): Promise<TrainingBatch> {
    if (this.#closed) return Promise.reject(new Error('batch source closed'));
    const current = this.#pending ?? this.#load();
    // Start the next batch once this one is loaded (the inner source takes no overlapping calls).
    this.#pending = current.then(
      () => this.#load(),
      (err: unknown) => Promise.reject(err instanceof Error ? err : new Error(String(err))),
    );
    this.#pending.catch(() => undefined);
    return current;
  }

  async close(): Promise<void> {
    this.#closed = true;
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
