import { HeadObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

import { backoffDelayMs, isRetryableS3Error, sleep } from './retry-backoff.ts';
import { getObjectRange } from './s3-range.ts';
import type { ObjectRange } from './s3-range.ts';

/**
 * Manifest splits: a text manifest in S3 (one record per `\n`-terminated line) cut into
 * byte ranges from its size alone, so the coordinator never reads a manifest of billions
 * of lines to shard it, and a worker reads only its own range.
 *
 * Alignment rule (the same one Hadoop's LineRecordReader uses): a record is a maximal run
 * of bytes not containing `\n`, starting at offset 0 or right after a `\n`. Split
 * `[start, end)` owns exactly the records whose FIRST byte lies in `[start, end)`. Since
 * the splits tile `[0, size)` and every record has one first byte, every record is owned by
 * exactly one split, whatever the line lengths and wherever the cuts fall. The record's
 * start offset is therefore its stable id.
 */

/** One byte range of a manifest; owns the records that start inside `[start, end)`. */
export interface ManifestSplit {
  /** Position in the plan, 0-based. */
  readonly index: number;
  /** First byte, inclusive. */
  readonly start: number;
  /** Last byte, exclusive; `start === end` for an empty split. */
  readonly end: number;
}

/** How to cut a manifest: by a target size per split or by a number of splits. */
export type ManifestSplitPlanOptions =
  | {
      /** Manifest size, bytes. */
      readonly sizeBytes: number;
      /** Wanted bytes per split; the count is `max(1, ceil(sizeBytes / targetSplitBytes))`. */
      readonly targetSplitBytes: number;
      readonly splitCount?: never;
    }
  | {
      /** Manifest size, bytes. */
      readonly sizeBytes: number;
      /** Exactly this many splits; some are empty when it exceeds `sizeBytes`. */
      readonly splitCount: number;
      readonly targetSplitBytes?: never;
    };

/** Most splits one plan may hold (a guard against a target size in the wrong unit). */
export const MAX_MANIFEST_SPLITS = 10_000_000;

/** Number of splits a plan has, checking the options. */
export function manifestSplitCount(options: ManifestSplitPlanOptions): number {
  const { sizeBytes } = options;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new RangeError(`sizeBytes must be a non-negative safe integer, got ${sizeBytes}`);
  }
  let count: number;
  if (options.splitCount !== undefined) {
    count = options.splitCount;
    if (!Number.isSafeInteger(count) || count < 1 || count > MAX_MANIFEST_SPLITS) {
      throw new RangeError(`splitCount must be an integer in [1, ${MAX_MANIFEST_SPLITS}], got ${count}`);
    }
  } else {
    const target = options.targetSplitBytes;
    if (!Number.isSafeInteger(target) || target < 1) {
      throw new RangeError(`targetSplitBytes must be a positive integer, got ${target}`);
    }
    count = Math.max(1, Math.ceil(sizeBytes / target));
    if (count > MAX_MANIFEST_SPLITS) {
      throw new RangeError(
        `targetSplitBytes ${target} cuts ${sizeBytes} bytes into ${count} splits, more than ${MAX_MANIFEST_SPLITS}`,
      );
    }
  }
  return count;
}

/**
 * Split `index` of `splitCount` near-equal splits of `[0, sizeBytes)`, in O(1): the first
 * `sizeBytes mod splitCount` splits are one byte longer. Written without `index · size`
 * so it stays exact for any safe size.
 */
export function manifestSplit(sizeBytes: number, splitCount: number, index: number): ManifestSplit {
  if (!Number.isSafeInteger(index) || index < 0 || index >= splitCount) {
    throw new RangeError(`split index must be an integer in [0, ${splitCount}), got ${index}`);
  }
  const base = Math.floor(sizeBytes / splitCount);
  const longer = sizeBytes % splitCount;
  const start = index * base + Math.min(index, longer);
  return { index, start, end: start + base + (index < longer ? 1 : 0) };
}

/**
 * Cuts `[0, sizeBytes)` into contiguous splits that tile it exactly (split i ends where
 * split i+1 starts; the last ends at `sizeBytes`). Needs only the size: O(number of
 * splits) time, no I/O. A 0-byte manifest gives one empty split `[0, 0)`.
 */
export function planManifestSplits(options: ManifestSplitPlanOptions): ManifestSplit[] {
  const count = manifestSplitCount(options);
  return Array.from({ length: count }, (_, index) => manifestSplit(options.sizeBytes, count, index));
}

/** What a HeadObject says about a manifest. */
export interface ManifestObject {
  /** Size, bytes. */
  readonly sizeBytes: number;
  /** ETag, to pin reads to this version of the object (`If-Match`). */
  readonly etag?: string;
}

/** One HeadObject: the manifest's size and ETag. */
export async function statManifest(s3: S3Client, bucket: string, key: string): Promise<ManifestObject> {
  const head = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  if (head.ContentLength === undefined) throw new Error(`s3://${bucket}/${key}: HeadObject returned no Content-Length`);
  return { sizeBytes: head.ContentLength, ...(head.ETag !== undefined && { etag: head.ETag }) };
}

/** Splits of the manifest object at `s3://bucket/key`, planned from one HeadObject (no body read). */
export async function planManifestObjectSplits(
  s3: S3Client,
  bucket: string,
  key: string,
  options: { readonly targetSplitBytes: number } | { readonly splitCount: number },
): Promise<ManifestObject & { readonly splits: ManifestSplit[] }> {
  const object = await statManifest(s3, bucket, key);
  const splits = planManifestSplits(
    'splitCount' in options
      ? { sizeBytes: object.sizeBytes, splitCount: options.splitCount }
      : { sizeBytes: object.sizeBytes, targetSplitBytes: options.targetSplitBytes },
  );
  return { ...object, splits };
}

/** One manifest line. */
export interface ManifestRecord {
  /** Byte offset of the record's first byte in the manifest object: its stable id. */
  readonly offset: number;
  /** The line without its `\n` or `\r\n`, decoded as UTF-8 (invalid bytes become U+FFFD). */
  readonly text: string;
}

/** Options of {@link readSplitRecords}. */
export interface ReadSplitOptions {
  /** Bytes per ranged GET, 1 to 256 MiB. @default 4 MiB */
  readonly blockBytes?: number;
  /** Longest record accepted, bytes; a longer one means a corrupt manifest. @default 1 MiB */
  readonly maxRecordBytes?: number;
  /** ETag from planning; reads fail (412) if the object was replaced since. */
  readonly etag?: string;
  /** Retries per GET after a retryable failure, with jittered backoff. @default 3 */
  readonly retries?: number;
  /** Cancels the reads. */
  readonly signal?: AbortSignal;
}

/** Default bytes per ranged GET when reading a split. */
export const DEFAULT_SPLIT_BLOCK_BYTES = 4 * 1024 * 1024;
/** Default longest manifest record, bytes. */
export const DEFAULT_MAX_RECORD_BYTES = 1024 * 1024;
// Reads past a split's end only finish its last record, usually a few dozen bytes away,
// so they start small and double instead of fetching whole blocks.
const TAIL_FIRST_BYTES = 4 * 1024;

/** Thrown when the manifest's bytes stay unreadable (S3 unreachable, throttling, 5xx) after retries. */
export class ManifestReadError extends Error {
  override readonly name = 'ManifestReadError';
  /** Stable code. */
  readonly code = 'manifest_unreadable';
}

/** Thrown when a manifest cannot be read as records. */
export class ManifestFormatError extends Error {
  override readonly name = 'ManifestFormatError';
  /** Stable code. */
  readonly code = 'invalid_manifest';
}

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
const UTF8 = new TextDecoder('utf-8');

/** Joins the pieces of one record, drops a trailing `\r` and decodes it. */
function recordText(pieces: readonly Uint8Array[], length: number): string {
  let bytes: Uint8Array;
  if (pieces.length === 1 && pieces[0] !== undefined) {
    bytes = pieces[0];
  } else {
    bytes = new Uint8Array(length);
    let at = 0;
    for (const piece of pieces) {
      bytes.set(piece, at);
      at += piece.byteLength;
    }
  }
  if (bytes.byteLength > 0 && bytes[bytes.byteLength - 1] === CARRIAGE_RETURN) bytes = bytes.subarray(0, -1);
  // '\n' (0x0A) never occurs inside a multi-byte UTF-8 sequence, so cutting at it and
  // decoding each record alone is exact.
  return UTF8.decode(bytes);
}

/**
 * Streams the records a split owns (see the alignment rule above), in order, skipping
 * empty lines (also `\r\n`-only ones). Reads with ranged GETs of at most `blockBytes` and
 * holds at most one block plus one record.
 *
 * Where it reads: a split starting at 0 owns the record at 0. A split starting at s > 0
 * reads from s − 1: its first record starts right after the first `\n` at or after s − 1
 * (a `\n` at s − 1 means a record starts exactly at s; otherwise the record crossing s
 * belongs to an earlier split). Only `[s − 1, end − 1)` is searched for that `\n`: one at
 * end − 1 or later starts a record at end or later, which the next split owns. After the
 * first record it reads on past `end` only to finish the last record that started before
 * `end`, and stops at its `\n` or at the end of the object.
 */
export async function* readSplitRecords(
  s3: S3Client,
  bucket: string,
  key: string,
  split: ManifestSplit,
  options: ReadSplitOptions = {},
): AsyncGenerator<ManifestRecord, void, undefined> {
  const blockBytes = options.blockBytes ?? DEFAULT_SPLIT_BLOCK_BYTES;
  const maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const retries = options.retries ?? 3;
  if (!Number.isSafeInteger(blockBytes) || blockBytes < 1 || blockBytes > 256 * 1024 * 1024) {
    throw new RangeError(`blockBytes must be an integer in [1, 268435456], got ${blockBytes}`);
  }
  if (!Number.isSafeInteger(maxRecordBytes) || maxRecordBytes < 1) {
    throw new RangeError(`maxRecordBytes must be a positive integer, got ${maxRecordBytes}`);
  }
  if (!Number.isSafeInteger(retries) || retries < 0) throw new RangeError(`retries must be a non-negative integer, got ${retries}`);
  const { start, end } = split;
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && end >= start)) {
    throw new RangeError(`split ${split.index} has an invalid range [${start}, ${end})`);
  }
  if (start === end) return;

  const read = async (from: number, to: number): Promise<ObjectRange> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await getObjectRange(s3, bucket, key, from, to, {
          ...(options.etag !== undefined && { etag: options.etag }),
          ...(options.signal !== undefined && { signal: options.signal }),
        });
      } catch (error) {
        if (!isRetryableS3Error(error)) throw error;
        if (attempt >= retries) {
          const message = error instanceof Error ? error.message : String(error);
          throw new ManifestReadError(`S3 s3://${bucket}/${key} (manifest bytes ${from}-${to}): ${message} after ${attempt + 1} attempts`, { cause: error });
        }
        await sleep(backoffDelayMs(attempt), options.signal);
      }
    }
  };

  // `seeking`: looking for the '\n' that ends the record crossing `start` (none to skip when
  // start = 0). Afterwards `recordStart` is the offset of the record being assembled.
  let seeking = start > 0;
  let position = seeking ? start - 1 : start;
  let recordStart = start;
  let pieces: Uint8Array[] = [];
  let pieceBytes = 0;
  // Before the first response only the split's own range is known to exist.
  let objectSizeBytes = Number.POSITIVE_INFINITY;
  let tailBytes = Math.min(TAIL_FIRST_BYTES, blockBytes);

  for (;;) {
    let requestEnd: number;
    if (seeking) {
      requestEnd = Math.min(position + blockBytes, end - 1);
    } else if (position < end) {
      requestEnd = Math.min(position + blockBytes, end);
    } else {
      requestEnd = position + tailBytes;
      tailBytes = Math.min(tailBytes * 2, blockBytes);
    }
    requestEnd = Math.min(requestEnd, objectSizeBytes);

    if (requestEnd > position) {
      const { bytes, objectSizeBytes: size } = await read(position, requestEnd);
      if (size < end) {
        throw new ManifestFormatError(`s3://${bucket}/${key} is ${size} bytes, shorter than split ${split.index} [${start}, ${end})`);
      }
      objectSizeBytes = size;
      let at = 0;
      if (seeking) {
        const newline = bytes.indexOf(NEWLINE);
        if (newline === -1) {
          position = requestEnd;
          // No '\n' in [start − 1, end − 1): the record crossing `start` also crosses
          // `end − 1`, so no record starts inside this split.
          if (position >= end - 1) return;
          continue;
        }
        seeking = false;
        at = newline + 1;
        recordStart = position + at;
        if (recordStart >= end || recordStart >= objectSizeBytes) return;
      }
      for (;;) {
        const newline = bytes.indexOf(NEWLINE, at);
        const pieceEnd = newline === -1 ? bytes.byteLength : newline;
        if (pieceEnd > at) {
          // A record continued in the next block is copied out: a view would keep this
          // whole block alive next to the next one.
          pieces.push(newline === -1 ? bytes.slice(at, pieceEnd) : bytes.subarray(at, pieceEnd));
          pieceBytes += pieceEnd - at;
        }
        if (pieceBytes > maxRecordBytes) {
          throw new ManifestFormatError(
            `s3://${bucket}/${key}: the record at byte ${recordStart} is longer than maxRecordBytes (${maxRecordBytes})`,
          );
        }
        if (newline === -1) break;
        const text = recordText(pieces, pieceBytes);
        if (text !== '') yield { offset: recordStart, text };
        pieces = [];
        pieceBytes = 0;
        at = newline + 1;
        recordStart = position + at;
        // The next record starts at or after `end`: the next split owns it.
        if (recordStart >= end || recordStart >= objectSizeBytes) return;
      }
      position = requestEnd;
    }

    if (position >= objectSizeBytes) {
      // End of the object: the last line has no trailing '\n' and is still a record.
      // (A split that owns nothing returned above, so recordStart < end here.)
      const text = recordText(pieces, pieceBytes);
      if (text !== '') yield { offset: recordStart, text };
      return;
    }
  }
}

/**
 * Every record offset (sample id) of a manifest object, in order: the reference a sample
 * ledger is checked against. Reads the whole object; for tests, benchmarks and audits.
 */
export async function listManifestOffsets(s3: S3Client, bucket: string, key: string, options: ReadSplitOptions = {}): Promise<number[]> {
  const { sizeBytes, etag } = await statManifest(s3, bucket, key);
  const offsets: number[] = [];
  const split: ManifestSplit = { index: 0, start: 0, end: sizeBytes };
  for await (const record of readSplitRecords(s3, bucket, key, split, { ...(etag !== undefined && { etag }), ...options })) offsets.push(record.offset);
  return offsets;
}
