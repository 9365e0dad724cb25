/**
 * Reads manifest entries from a rank's shard leases, in order, from each lease's cursor,
 * calling AcquireLease when one is used up (docs/cluster.md, step loop item 3). It also
 * says how far each lease has been read, for the step's DataCursors.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { readSplitRecords } from '@dinofleet/data';
import type { ManifestRecord } from '@dinofleet/data';
import type { DataCursor, ShardLease } from '@dinofleet/proto';

/** One manifest record and the lease it came from. */
export interface LeaseRecord {
  /** The lease the record belongs to. */
  readonly lease: ShardLease;
  /** The record (its offset is the sample id). */
  readonly record: ManifestRecord;
}

/** Settings of a {@link LeaseReader}. */
export interface LeaseReaderOptions {
  /** Client for the manifest's endpoint. */
  s3: S3Client;
  /** Bucket of the manifest object. */
  bucket: string;
  /** Key of the manifest object. */
  key: string;
  /** ETag the shards were planned against; reads fail if the object changed. "" for none. */
  etag?: string;
  /** The lease to read first (from the Assignment), resumed at its cursor. */
  firstLease: ShardLease;
  /** Asks the coordinator for the next lease once the current one is used up. */
  acquireLease: () => Promise<ShardLease>;
  /** Cancels the reads. */
  signal?: AbortSignal;
}

interface OpenLease {
  readonly lease: ShardLease;
  readonly records: AsyncGenerator<ManifestRecord, void, undefined>;
  /** The next record, read ahead; null once the lease has none left; undefined when not read yet. */
  peeked: ManifestRecord | null | undefined;
  /** Whether a DataCursor already said this lease is exhausted. */
  reportedExhausted: boolean;
}

/**
 * Streams the records of a sequence of leases. Not safe for concurrent `next()` calls:
 * one batch loader owns it.
 */
export class LeaseReader {
  readonly #options: LeaseReaderOptions;
  #current: OpenLease;
  /** Leases read (or found used up) since the last {@link takeCursors}, in read order. */
  #touched: OpenLease[] = [];

  constructor(options: LeaseReaderOptions) {
    this.#options = options;
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
    const { s3, bucket, key, etag, signal } = this.#options;
    // The cursor is a record's first byte (or the end), so reading the split
    // [cursor, end) yields exactly the records the lease has left.
    const records = readSplitRecords(
      s3,
      bucket,
      key,
      { index: lease.shard, start: lease.cursor, end: lease.end },
      { ...(etag !== undefined && etag !== '' && { etag }), ...(signal !== undefined && { signal }) },
    );
    return { lease, records, peeked: undefined, reportedExhausted: false };
  }

  async #peek(open: OpenLease): Promise<ManifestRecord | null> {
    if (open.peeked === undefined) {
      const result = await open.records.next();
      open.peeked = result.done === true ? null : result.value;
    }
    return open.peeked;
  }

  #touch(open: OpenLease): void {
    if (this.#touched.at(-1) !== open) this.#touched.push(open);
  }

  /** The next record, moving on to a newly acquired lease when the current one is used up. */
  async next(): Promise<LeaseRecord> {
    for (;;) {
      const open = this.#current;
      const record = await this.#peek(open);
      if (record !== null) {
        open.peeked = undefined;
        this.#touch(open);
        return { lease: open.lease, record };
      }
      // Used up: it must still be reported exhausted once, also when nothing was read
      // from it (a lease handed out with cursor == end).
      if (!open.reportedExhausted) this.#touch(open);
      const lease = await this.#options.acquireLease();
      this.#current = this.#open(lease);
    }
  }

  /**
   * Where every lease read since the last call stands now, in read order: its position is
   * the offset of its next unread record, or its end when it has none left (`exhausted`).
   */
  async takeCursors(): Promise<DataCursor[]> {
    const cursors: DataCursor[] = [];
    for (const open of this.#touched) {
      const next = await this.#peek(open);
      const exhausted = next === null;
      if (exhausted) open.reportedExhausted = true;
      cursors.push({ leaseId: open.lease.leaseId, epoch: open.lease.epoch, position: next?.offset ?? open.lease.end, exhausted });
    }
    this.#touched = [];
    return cursors;
  }

  /** Stops reading the current lease. Idempotent. */
  async close(): Promise<void> {
    await this.#current.records.return(undefined);
  }
}
