import { isAscii } from 'node:buffer';

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

/** Options of {@link readSplitRecordBatches} and {@link readSplitRecords}. */
export interface ReadSplitOptions {
  /** Bytes per ranged GET, 1 to 256 MiB. @default 4 MiB */
  readonly blockBytes?: number;
  /** Longest record accepted, bytes; a longer one means a corrupt manifest. @default 1 MiB */
  readonly maxRecordBytes?: number;
  /** ETag from planning; reads fail (412) if the object was replaced since. */
  readonly etag?: string;
  /**
   * The object's size from planning (`statManifest`), at least the split's end. Lets the
   * first GET already reach a few KiB past the split's end, so a split of one block
   * usually takes one GET instead of two. It must be the size of the object read: a
   * response that reports another size fails with {@link ManifestFormatError} (or, reading
   * past the real end, with the range error of `getObjectRange`).
   * @default unknown until the first response
   */
  readonly objectSizeBytes?: number;
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
// Records per yielded array. Whole-block arrays (~90 k records of a 4 MiB block) outlive
// young-generation collections and get promoted to the old generation: reading was 2-5x
// slower with them than with arrays of a few thousand.
const BATCH_RECORDS = 4096;

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
// A byte >= 0x80 (part of a multi-byte UTF-8 sequence, or invalid) as a char of a latin1 string.
const NON_ASCII = /[\u0080-\u00ff]/g;

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

/** Index of the first char >= 0x80 of `text` at or after `from`, or `Infinity`. */
function nextNonAscii(text: string, from: number): number {
  NON_ASCII.lastIndex = from;
  const match = NON_ASCII.exec(text);
  return match === null ? Number.POSITIVE_INFINITY : match.index;
}

/**
 * Appends to `records` the records of `lines` from index `from` on, skipping empty ones:
 * `lines` holds whole `\n`-terminated lines, the latin1 decoding of `bytes` (one char per
 * byte, so its indices are byte offsets from `offset`). Stops before the first record that
 * starts at or past `stopIndex` (the split's end) or is longer than `maxRecordBytes`, and
 * once `records` holds `limit`; returns the index it stopped at (`lines.length` when done).
 */
function appendLines(
  lines: string,
  bytes: Uint8Array,
  ascii: boolean,
  from: number,
  offset: number,
  stopIndex: number,
  maxRecordBytes: number,
  records: ManifestRecord[],
  limit: number,
): number {
  // ASCII lines are slices of `lines`, already their UTF-8 decoding; a line holding a byte
  // >= 0x80 is decoded from its bytes on its own, exactly as any record was before.
  let nonAscii = ascii ? Number.POSITIVE_INFINITY : nextNonAscii(lines, from);
  let at = from;
  while (at < lines.length && at < stopIndex && records.length < limit) {
    const newline = lines.indexOf('\n', at);
    if (newline - at > maxRecordBytes) return at;
    let lineEnd = newline;
    if (lineEnd > at && lines.charCodeAt(lineEnd - 1) === CARRIAGE_RETURN) lineEnd--;
    if (nonAscii < lineEnd) {
      // Decoding drops a leading BOM, so a BOM-only line is empty too.
      const text = UTF8.decode(bytes.subarray(at, lineEnd));
      if (text !== '') records.push({ offset: offset + at, text });
      nonAscii = nextNonAscii(lines, newline + 1);
    } else if (lineEnd > at) {
      records.push({ offset: offset + at, text: lines.slice(at, lineEnd) });
    }
    at = newline + 1;
  }
  return at;
}

/**
 * Streams the records a split owns (see the alignment rule above), in order, skipping
 * empty lines (also `\r\n`-only ones), in arrays of at most 4096 records; an array never
 * spans two ranged GETs (each of at most `blockBytes`). Each block is decoded once and cut
 * into records with string search (a line with bytes >= 0x80 is decoded on its own, so
 * texts are exactly the UTF-8 decoding of each line). Holds at most two blocks (the one
 * being cut into records, with its text, and the next, fetched meanwhile) plus one record.
 * A record's text may share memory with its block's text: keeping records keeps up to one
 * block's worth of characters alive per block they came from.
 *
 * Where it reads: a split starting at 0 owns the record at 0. A split starting at s > 0
 * reads from s − 1: its first record starts right after the first `\n` at or after s − 1
 * (a `\n` at s − 1 means a record starts exactly at s; otherwise the record crossing s
 * belongs to an earlier split). Only `[s − 1, end − 1)` is searched for that `\n`: one at
 * end − 1 or later starts a record at end or later, which the next split owns. After the
 * first record it reads on past `end` only to finish the last record that started before
 * `end`, and stops at its `\n` or at the end of the object.
 *
 * GETs: once the object's size is known (`objectSizeBytes`, else from the first
 * response), the GET that reaches `end` also takes the first 4 KiB past it when the block
 * has room, so the split's last record rarely needs a GET of its own. While one block is
 * cut into records, the next is already being fetched when the split certainly needs it
 * (the record in progress at the block's end is owned), so the GETs made are the same as
 * without that overlap.
 */
export async function* readSplitRecordBatches(
  s3: S3Client,
  bucket: string,
  key: string,
  split: ManifestSplit,
  options: ReadSplitOptions = {},
): AsyncGenerator<ManifestRecord[], void, undefined> {
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
  const plannedSizeBytes = options.objectSizeBytes;
  if (plannedSizeBytes !== undefined && !(Number.isSafeInteger(plannedSizeBytes) && plannedSizeBytes >= end)) {
    throw new RangeError(`objectSizeBytes must be an integer >= the split's end ${end}, got ${plannedSizeBytes}`);
  }
  if (start === end) return;

  // Every GET of this split answers to `reads`, so one still in flight when the consumer
  // stops early (or a read fails) is cancelled rather than left running.
  const reads = new AbortController();
  const { signal } = options;
  const forwardAbort = (): void => reads.abort(signal?.reason);
  if (signal?.aborted === true) forwardAbort();
  signal?.addEventListener('abort', forwardAbort, { once: true });

  const read = async (from: number, to: number): Promise<ObjectRange> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await getObjectRange(s3, bucket, key, from, to, {
          ...(options.etag !== undefined && { etag: options.etag }),
          signal: reads.signal,
        });
      } catch (error) {
        if (!isRetryableS3Error(error)) throw error;
        if (attempt >= retries) {
          const message = error instanceof Error ? error.message : String(error);
          throw new ManifestReadError(`S3 s3://${bucket}/${key} (manifest bytes ${from}-${to}): ${message} after ${attempt + 1} attempts`, { cause: error });
        }
        await sleep(backoffDelayMs(attempt), reads.signal);
      }
    }
  };
  const tooLong = (recordStart: number): ManifestFormatError =>
    new ManifestFormatError(`s3://${bucket}/${key}: the record at byte ${recordStart} is longer than maxRecordBytes (${maxRecordBytes})`);

  // `seeking`: looking for the '\n' that ends the record crossing `start` (none to skip when
  // start = 0). Afterwards `recordStart` is the offset of the record being assembled, whose
  // bytes before `position` are in `pieces`.
  let seeking = start > 0;
  let position = seeking ? start - 1 : start;
  let recordStart = start;
  let pieces: Uint8Array[] = [];
  let pieceBytes = 0;
  // Before the first response only the split's own range is known to exist, unless the
  // caller knows the size.
  let objectSizeBytes = plannedSizeBytes ?? Number.POSITIVE_INFINITY;
  const firstTailBytes = Math.min(TAIL_FIRST_BYTES, blockBytes);
  let tailBytes = firstTailBytes;
  let next: { readonly from: number; readonly to: number; readonly range: Promise<ObjectRange> } | undefined;

  // Where the GET starting at `from` (< the object's size) ends; called once per GET.
  const requestEndFrom = (from: number): number => {
    let to: number;
    if (from < end) {
      to = Math.min(from + blockBytes, objectSizeBytes === Number.POSITIVE_INFINITY ? end : end + firstTailBytes);
    } else {
      to = from + tailBytes;
      tailBytes = Math.min(tailBytes * 2, blockBytes);
    }
    return Math.min(to, objectSizeBytes);
  };

  try {
    for (;;) {
      if (position >= objectSizeBytes) {
        // End of the object: the last line has no trailing '\n' and is still a record.
        // (A split that owns nothing returned already, so recordStart < end here.)
        const text = recordText(pieces, pieceBytes);
        if (text !== '') yield [{ offset: recordStart, text }];
        return;
      }
      let requestEnd: number;
      let pending: Promise<ObjectRange>;
      if (next !== undefined && next.from === position) {
        ({ to: requestEnd, range: pending } = next);
      } else {
        requestEnd = requestEndFrom(position);
        pending = read(position, requestEnd);
      }
      next = undefined;
      const { bytes: view, objectSizeBytes: size } = await pending;
      if (size < end) {
        throw new ManifestFormatError(`s3://${bucket}/${key} is ${size} bytes, shorter than split ${split.index} [${start}, ${end})`);
      }
      if (plannedSizeBytes !== undefined && size !== plannedSizeBytes) {
        throw new ManifestFormatError(`s3://${bucket}/${key} is ${size} bytes, not the ${plannedSizeBytes} bytes it was planned with`);
      }
      objectSizeBytes = size;
      // A Buffer view for its native search and latin1 decoding; copies are cut from `view`
      // (Buffer's own slice() is a view).
      const bytes = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
      const lastNewline = bytes.lastIndexOf(NEWLINE);

      // Fetch the next block while this one is cut, when the split needs it whatever this
      // block holds: the record in progress at its end is owned (or, while seeking, the
      // '\n' that ends the record crossing `start` may still come before end − 1).
      const needsMore =
        requestEnd < objectSizeBytes &&
        (lastNewline === -1 ? !seeking || requestEnd < end - 1 : position + lastNewline + 1 < end);
      if (needsMore) {
        const to = requestEndFrom(requestEnd);
        next = { from: requestEnd, to, range: read(requestEnd, to) };
        // Awaited on the next turn; until then a failure must not count as unhandled.
        void next.range.catch(() => undefined);
      }

      let at = 0;
      let records: ManifestRecord[] = [];
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
      } else if (pieceBytes > 0) {
        // Finish the record carried over from earlier blocks.
        const newline = lastNewline === -1 ? -1 : bytes.indexOf(NEWLINE);
        const pieceEnd = newline === -1 ? bytes.byteLength : newline;
        if (pieceEnd > 0) {
          // A record continued in the next block is copied out: a view would keep this
          // whole block alive next to the next one.
          pieces.push(newline === -1 ? view.slice(0, pieceEnd) : view.subarray(0, pieceEnd));
          pieceBytes += pieceEnd;
        }
        if (pieceBytes > maxRecordBytes) throw tooLong(recordStart);
        if (newline === -1) {
          position = requestEnd;
          continue;
        }
        const text = recordText(pieces, pieceBytes);
        if (text !== '') records.push({ offset: recordStart, text });
        pieces = [];
        pieceBytes = 0;
        at = newline + 1;
        recordStart = position + at;
        if (recordStart >= end || recordStart >= objectSizeBytes) {
          if (records.length > 0) yield records;
          return;
        }
      }

      // Whole lines: decoded once as latin1 and cut with string search, in batches of at
      // most BATCH_RECORDS.
      if (lastNewline >= at) {
        const lineBytes = bytes.subarray(at, lastNewline + 1);
        const lines = bytes.toString('latin1', at, lastNewline + 1);
        const ascii = isAscii(lineBytes);
        const linesOffset = position + at;
        let index = 0;
        for (;;) {
          index = appendLines(lines, lineBytes, ascii, index, linesOffset, end - linesOffset, maxRecordBytes, records, BATCH_RECORDS);
          recordStart = linesOffset + index;
          if (index === lines.length) break;
          if (records.length >= BATCH_RECORDS) {
            yield records;
            records = [];
            continue;
          }
          // Stopped early: at the split's end or at an overlong record. Records before an
          // overlong one are delivered first, as a record-by-record reader would.
          if (records.length > 0) yield records;
          if (recordStart >= end) return;
          throw tooLong(recordStart);
        }
        at = lastNewline + 1;
        if (recordStart >= end || recordStart >= objectSizeBytes) {
          if (records.length > 0) yield records;
          return;
        }
      }

      // The start of a record that continues in the next block.
      if (at < bytes.byteLength) {
        pieces.push(view.slice(at));
        pieceBytes = bytes.byteLength - at;
        if (pieceBytes > maxRecordBytes) {
          if (records.length > 0) yield records;
          throw tooLong(recordStart);
        }
      }
      position = requestEnd;
      if (records.length > 0) yield records;
    }
  } finally {
    signal?.removeEventListener('abort', forwardAbort);
    // Only a prefetch can still be in flight here (every other GET was awaited).
    if (next !== undefined) reads.abort();
  }
}

/**
 * Streams the records a split owns, one at a time: {@link readSplitRecordBatches}
 * flattened (same reads, same records, same errors).
 */
export async function* readSplitRecords(
  s3: S3Client,
  bucket: string,
  key: string,
  split: ManifestSplit,
  options: ReadSplitOptions = {},
): AsyncGenerator<ManifestRecord, void, undefined> {
  for await (const records of readSplitRecordBatches(s3, bucket, key, split, options)) yield* records;
}

/**
 * Every record offset (sample id) of a manifest object, in order: the reference a sample
 * ledger is checked against. Reads the whole object; for tests, benchmarks and audits.
 */
export async function listManifestOffsets(s3: S3Client, bucket: string, key: string, options: ReadSplitOptions = {}): Promise<number[]> {
  const { sizeBytes, etag } = await statManifest(s3, bucket, key);
  const offsets: number[] = [];
  const split: ManifestSplit = { index: 0, start: 0, end: sizeBytes };
  for await (const records of readSplitRecordBatches(s3, bucket, key, split, { objectSizeBytes: sizeBytes, ...(etag !== undefined && { etag }), ...options })) {
    for (const record of records) offsets.push(record.offset);
  }
  return offsets;
}
