/**
 * Reads samples from a rank's shard leases, in order, from each lease's cursor, calling
 * AcquireLease when one is used up (docs/cluster.md, step loop item 3), and says how far
 * each lease has been read, for the step's DataCursors.
 *
 * A lease is a byte range of the manifest. Its samples are the manifest's entries (`lines`,
 * `csv`, `jsonl`: one per line) or the samples inside the tar shards its lines name
 * (`webdataset`). They are taken in shuffle windows: the next `shuffleWindow` samples are
 * read, permuted by a seed derived from (job seed, epoch, shard, window start) and handed
 * out in that order. A cursor is therefore (window start, samples consumed): a resume
 * reads the same window again, permutes it the same way and skips what was consumed, so
 * no sample is trained twice or skipped whatever the window size.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import {
  ManifestRecordError,
  TarFormatError,
  createRecordParser,
  isNoSuchKeyError,
  readManifestHeader,
  readSplitRecords,
  readWebDatasetSamples,
  webDatasetSampleId,
  windowPermutation,
} from '@dinofleet/data';
import type { ManifestRecord, RecordParser } from '@dinofleet/data';
import type { ManifestFormat } from '@dinofleet/config';
import { FailedPreconditionError } from '@dinofleet/proto';
import type { DataCursor, ShardLease } from '@dinofleet/proto';
import { SkipReason } from '@dinofleet/telemetry';

/** A sample that cannot be trained on, found while reading the manifest or a tar. */
export interface SampleSkip {
  readonly reason: SkipReason;
  /** Human-readable cause, for logs. */
  readonly detail: string;
}

/** One sample of a lease, before its image is fetched. */
export interface LeaseSample {
  /** The lease the sample belongs to. */
  readonly lease: ShardLease;
  /**
   * Stable sample id (the sample ledger's): the manifest byte offset of its line, or for
   * WebDataset `webDatasetSampleId(line offset, tar offset)`.
   */
  readonly id: number;
  /** Manifest byte offset of the sample's line. */
  readonly offset: number;
  /** Byte offset inside the tar of the sample's first header (WebDataset), else 0. */
  readonly within: number;
  /** Object key of the image, or `tarKey#sampleName` for WebDataset (for logs). */
  readonly key: string;
  /** Label text, if the manifest or the tar gives one. */
  readonly label?: string;
  /** The encoded image when the manifest format carries it (WebDataset). */
  readonly bytes?: Uint8Array;
  /** Set when the sample is known bad already (an invalid line, a missing or damaged tar). */
  readonly skip?: SampleSkip;
}

/** Settings of a {@link LeaseReader}. */
export interface LeaseReaderOptions {
  /** Client for the manifest's (and the tars') endpoint. */
  s3: S3Client;
  /** Bucket of the manifest object; WebDataset tar keys are relative to it. */
  bucket: string;
  /** Key of the manifest object. */
  key: string;
  /** ETag the shards were planned against; reads fail if the object changed. "" for none. */
  etag?: string;
  /** How the manifest is written. @default 'lines' */
  format?: ManifestFormat;
  /** The job's seed (`spec.training.seed`): seeds the shuffle windows. @default 0 */
  seed?: number;
  /** Samples per shuffle window (`spec.data.shuffleWindow`); 1 keeps manifest order. @default 1 */
  shuffleWindow?: number;
  /** A window also ends once its carried image bytes (WebDataset) reach this. @default 256 MiB */
  maxWindowBytes?: number;
  /** The lease to read first (from the Assignment), resumed at its cursor. */
  firstLease: ShardLease;
  /** Asks the coordinator for the next lease once the current one is used up. */
  acquireLease: () => Promise<ShardLease>;
  /** Cancels the reads. */
  signal?: AbortSignal;
}

/** Default {@link LeaseReaderOptions.maxWindowBytes}. */
export const DEFAULT_MAX_WINDOW_BYTES = 256 * 1024 * 1024;

interface Window {
  readonly offset: number;
  readonly within: number;
  /** The window's samples in hand-out order. */
  readonly samples: readonly LeaseSample[];
  consumed: number;
}

interface OpenLease {
  readonly lease: ShardLease;
  readonly samples: AsyncGenerator<LeaseSample, void, undefined>;
  /** The next sample of the stream, read ahead; null once the lease has none left; undefined when not read yet. */
  peeked: LeaseSample | null | undefined;
  window: Window | undefined;
  /** Whether a DataCursor already said this lease is exhausted. */
  reportedExhausted: boolean;
}

/** 32-bit mix of the window's identity: (seed, epoch, shard, offset, within). */
function windowSeed(seed: number, lease: ShardLease, offset: number, within: number): number {
  let h = seed >>> 0;
  for (const part of [lease.epoch, lease.shard, offset % 2 ** 32, Math.floor(offset / 2 ** 32), within % 2 ** 32, Math.floor(within / 2 ** 32)]) {
    h = Math.imul(h ^ (part >>> 0), 0x9e3779b1);
    h ^= h >>> 15;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
  }
  return h >>> 0;
}

function errorText(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * Streams the samples of a sequence of leases. Not safe for concurrent `next()` calls:
 * one batch loader owns it.
 */
export class LeaseReader {
  readonly #options: LeaseReaderOptions;
  readonly #format: ManifestFormat;
  readonly #windowSize: number;
  #parser: Promise<RecordParser> | undefined;
  #current: OpenLease;
  /** Leases read (or found used up) since the last {@link takeCursors}, in read order. */
  #touched: OpenLease[] = [];

  constructor(options: LeaseReaderOptions) {
    const windowSize = options.shuffleWindow ?? 1;
    if (!Number.isSafeInteger(windowSize) || windowSize < 1) throw new RangeError(`shuffleWindow must be a positive integer, got ${windowSize}`);
    this.#options = options;
    this.#format = options.format ?? 'lines';
    this.#windowSize = windowSize;
    this.#current = this.#open(options.firstLease);
  }

  /** The lease being read. */
  get lease(): ShardLease {
    return this.#current.lease;
  }

  #open(lease: ShardLease): OpenLease {
    if (!(lease.begin <= lease.cursor && lease.cursor <= lease.end)) {
      throw new RangeError(`lease ${lease.leaseId} has cursor ${lease.cursor} outside [${lease.begin}, ${lease.end}]`);
    }
    return { lease, samples: this.#samples(lease), peeked: undefined, window: undefined, reportedExhausted: false };
  }

  /** The manifest's records from the lease's cursor: the split [cursor, end) yields exactly the records it has left. */
  #records(lease: ShardLease): AsyncGenerator<ManifestRecord, void, undefined> {
    const { s3, bucket, key, etag, signal } = this.#options;
    return readSplitRecords(
      s3,
      bucket,
      key,
      { index: lease.shard, start: lease.cursor, end: lease.end },
      { ...(etag !== undefined && etag !== '' && { etag }), ...(signal !== undefined && { signal }) },
    );
  }

  #recordParser(): Promise<RecordParser> {
    this.#parser ??= (async () => {
      const { s3, bucket, key, etag, signal } = this.#options;
      if (this.#format === 'csv') {
        const header = await readManifestHeader(s3, bucket, key, { ...(etag !== undefined && etag !== '' && { etag }), ...(signal !== undefined && { signal }) });
        return createRecordParser('csv', { header });
      }
      // WebDataset manifests list tar keys one per line (`key` or `key<TAB>label`).
      return createRecordParser(this.#format === 'webdataset' ? 'lines' : this.#format);
    })();
    return this.#parser;
  }

  async *#samples(lease: ShardLease): AsyncGenerator<LeaseSample, void, undefined> {
    const parser = await this.#recordParser();
    for await (const record of this.#records(lease)) {
      const base = { lease, offset: record.offset, within: 0 };
      let entry;
      try {
        entry = parser.parse(record);
      } catch (error) {
        if (!(error instanceof ManifestRecordError)) throw error;
        yield { ...base, id: record.offset, key: record.text.slice(0, 256), skip: { reason: SkipReason.InvalidRecord, detail: error.message } };
        continue;
      }
      if (entry === null) continue; // not a sample (the CSV header)
      if (this.#format !== 'webdataset') {
        yield { ...base, id: entry.offset, key: entry.key, ...(entry.label !== undefined && { label: entry.label }) };
        continue;
      }
      // The record at the lease's cursor may be resumed inside its tar.
      const from = record.offset === lease.cursor ? lease.cursorWithin : 0;
      yield* this.#tarSamples(lease, record.offset, entry.key, from);
    }
  }

  async *#tarSamples(lease: ShardLease, offset: number, tarKey: string, from: number): AsyncGenerator<LeaseSample, void, undefined> {
    const { s3, bucket, signal } = this.#options;
    let next = from;
    try {
      for await (const sample of readWebDatasetSamples(s3, bucket, tarKey, from, signal === undefined ? {} : { signal })) {
        next = sample.nextTarOffset;
        const base = { lease, id: webDatasetSampleId(offset, sample.tarOffset), offset, within: sample.tarOffset, key: `${tarKey}#${sample.name}` };
        const label = sample.label === undefined ? {} : { label: sample.label };
        if (sample.image === undefined) {
          yield { ...base, ...label, skip: { reason: SkipReason.NotImage, detail: `WebDataset sample ${sample.name} in ${tarKey} has no image member` } };
        } else {
          yield { ...base, ...label, bytes: sample.image.bytes };
        }
      }
    } catch (error) {
      // A damaged or missing tar costs its samples, not the job: one skip stands for the
      // rest of the tar (its id is where the damage starts, so it is stable on a re-read).
      const id = webDatasetSampleId(offset, next);
      const base = { lease, id, offset, within: next, key: `${tarKey}#@${next}` };
      if (error instanceof TarFormatError) {
        yield { ...base, skip: { reason: SkipReason.CorruptArchive, detail: error.message } };
      } else if (isNoSuchKeyError(error)) {
        yield { ...base, skip: { reason: SkipReason.Missing, detail: `tar s3://${bucket}/${tarKey} does not exist: ${errorText(error)}` } };
      } else {
        throw error;
      }
    }
  }

  async #peek(open: OpenLease): Promise<LeaseSample | null> {
    if (open.peeked === undefined) {
      const result = await open.samples.next();
      open.peeked = result.done === true ? null : result.value;
    }
    return open.peeked;
  }

  /** Reads the next window of `open` (null: the lease has no sample left). */
  async #fillWindow(open: OpenLease): Promise<Window | null> {
    const first = await this.#peek(open);
    if (first === null) return null;
    const { offset, within } = first;
    const samples: LeaseSample[] = [];
    const maxBytes = this.#options.maxWindowBytes ?? DEFAULT_MAX_WINDOW_BYTES;
    let bytes = 0;
    while (samples.length < this.#windowSize && bytes < maxBytes) {
      const sample = await this.#peek(open);
      if (sample === null) break;
      open.peeked = undefined;
      samples.push(sample);
      bytes += sample.bytes?.byteLength ?? 0;
    }
    const order = windowPermutation(samples.length, windowSeed(this.#options.seed ?? 0, open.lease, offset, within));
    const window: Window = { offset, within, samples: Array.from(order, (i) => samples[i] as LeaseSample), consumed: 0 };
    const lease = open.lease;
    if (offset === lease.cursor && within === lease.cursorWithin && lease.cursorConsumed > 0) {
      // The lease resumes inside this window: skip what committed steps consumed.
      if (lease.cursorConsumed > samples.length) {
        throw new FailedPreconditionError(
          `lease ${lease.leaseId}: the committed cursor consumed ${lease.cursorConsumed} samples of a shuffle window that holds ${samples.length}; ` +
            'the manifest or spec.data.shuffleWindow changed since the cursor was written',
        );
      }
      window.consumed = lease.cursorConsumed;
    }
    return window;
  }

  #touch(open: OpenLease): void {
    if (this.#touched.at(-1) !== open) this.#touched.push(open);
  }

  /** The next sample, moving on to a newly acquired lease when the current one is used up. */
  async next(): Promise<LeaseSample> {
    for (;;) {
      const open = this.#current;
      let window = open.window;
      if (window === undefined || window.consumed >= window.samples.length) {
        window = (await this.#fillWindow(open)) ?? undefined;
        open.window = window;
      }
      if (window !== undefined && window.consumed < window.samples.length) {
        const sample = window.samples[window.consumed++] as LeaseSample;
        this.#touch(open);
        return sample;
      }
      // Used up: it must still be reported exhausted once, also when nothing was read
      // from it (a lease handed out with cursor == end).
      if (!open.reportedExhausted) this.#touch(open);
      const lease = await this.#options.acquireLease();
      this.#current = this.#open(lease);
    }
  }

  /**
   * Where every lease read since the last call stands now, in read order: the start of its
   * current shuffle window and the samples consumed from it; after a finished window, the
   * position of the next unread sample; its end when it has none left (`exhausted`).
   */
  async takeCursors(): Promise<DataCursor[]> {
    const cursors: DataCursor[] = [];
    for (const open of this.#touched) {
      const { lease, window } = open;
      const base = { leaseId: lease.leaseId, epoch: lease.epoch };
      if (window !== undefined && window.consumed < window.samples.length) {
        cursors.push({ ...base, position: window.offset, positionWithin: window.within, windowConsumed: window.consumed, exhausted: false });
        continue;
      }
      const next = await this.#peek(open);
      const exhausted = next === null;
      if (exhausted) open.reportedExhausted = true;
      cursors.push({ ...base, position: next?.offset ?? lease.end, positionWithin: next?.within ?? 0, windowConsumed: 0, exhausted });
    }
    this.#touched = [];
    return cursors;
  }

  /** Stops reading the current lease. Idempotent. */
  async close(): Promise<void> {
    await this.#current.samples.return(undefined);
  }
}
