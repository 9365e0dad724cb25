import { HeadObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

import { backoffDelayMs, isRetryableS3Error, sleep } from './retry-backoff.ts';
import { getObjectRange } from './s3-range.ts';
import { readTarMembers, TAR_BLOCK_BYTES, TarFormatError, TarMemberType } from './tar-format.ts';
import type { TarByteSource, TarEntry } from './tar-format.ts';

/**
 * WebDataset shards: tar archives in S3 whose consecutive members with a common name form
 * one sample (`dir/abc.jpg`, `dir/abc.cls` → sample `dir/abc`), the convention of the
 * `webdataset` Python library (`tariterators.group_by_keys`). A manifest of the `webdataset`
 * format lists tar keys; a sample is addressed by the manifest record's offset and the
 * offset of the sample's first header inside the tar, so a reader resumes mid-shard by
 * starting a ranged read at that header.
 */

/** One sample of a shard. */
export interface WebDatasetSample {
  /**
   * Offset of the sample in the tar, a multiple of 512: reading from it yields this sample
   * first. Equal to the previous sample's `nextTarOffset` (or to the offset the read started
   * from), so samples tile the archive.
   */
  readonly tarOffset: number;
  /** Where the next sample's first header starts (the end-of-archive marker after the last sample). */
  readonly nextTarOffset: number;
  /** Sample name: the member path up to the first `.` of its basename (`dir/abc`). */
  readonly name: string;
  /** The first member with an image extension ({@link WEBDATASET_IMAGE_EXTENSIONS}), if any. */
  readonly image?: {
    /** The member's extension after its last `.`, lowercased (`jpg` for `abc.input.JPG`). */
    readonly ext: string;
    /** The member's bytes, undecoded. */
    readonly bytes: Uint8Array;
  };
  /**
   * Label from the `cls` member (its text, trimmed), else from the `label` field of the
   * `json` member (a string, or an integer as decimal text); none when both are absent or empty.
   */
  readonly label?: string;
}

/** Options of {@link readWebDatasetSamples}. */
export interface ReadWebDatasetOptions {
  /** Bytes per ranged GET, 1 to 256 MiB. @default 8 MiB */
  readonly blockBytes?: number;
  /** Retries per request after a retryable failure (network, 5xx, throttling), with jittered backoff. @default 3 */
  readonly retries?: number;
  /** Largest member whose data are kept (image, `cls`, `json`), bytes; a larger one is a {@link TarFormatError}. @default 64 MiB */
  readonly maxMemberBytes?: number;
  /** Cancels the reads. */
  readonly signal?: AbortSignal;
}

/** Default bytes per ranged GET of a tar shard. */
export const DEFAULT_TAR_BLOCK_BYTES = 8 * 1024 * 1024;
/** Default largest tar member kept, bytes. */
export const DEFAULT_MAX_TAR_MEMBER_BYTES = 64 * 1024 * 1024;
/** Default retries per request of a tar shard. */
export const DEFAULT_TAR_READ_RETRIES = 3;
/** Extensions (after the last `.`, lowercased) of the members taken as a sample's image. */
export const WEBDATASET_IMAGE_EXTENSIONS: ReadonlySet<string> = new Set(['jpg', 'jpeg', 'png', 'webp', 'gif', 'bmp', 'tif', 'tiff', 'ppm', 'pgm', 'pbm']);

/** Thrown when a shard's bytes stay unreadable (S3 unreachable, throttling, 5xx) after retries. */
export class TarReadError extends Error {
  override readonly name = 'TarReadError';
  /** Stable code. */
  readonly code = 'tar_unreadable';
}

// Sample ids pack (record offset, tar block index) into one safe integer: 29 bits of record
// offset above 24 bits of 512-byte block index.
const TAR_BLOCK_INDEX_BITS = 24;
const MAX_ID_RECORD_OFFSET = 2 ** 29;
const MAX_ID_TAR_OFFSET = 2 ** (TAR_BLOCK_INDEX_BITS + 9);

/**
 * A sample's stable id: `recordOffset · 2^24 + tarOffset / 512`, unique per (manifest
 * record, sample) and a safe integer. Throws a RangeError when `recordOffset` is 2^29 or
 * more (a manifest of tar keys over 512 MiB), when `tarOffset` is 2^33 or more (a shard over
 * 8 GiB) or not a multiple of 512.
 */
export function webDatasetSampleId(recordOffset: number, tarOffset: number): number {
  if (!Number.isSafeInteger(recordOffset) || recordOffset < 0 || recordOffset >= MAX_ID_RECORD_OFFSET) {
    throw new RangeError(
      `manifest record offset ${recordOffset} is outside [0, 2^29): WebDataset sample ids need a manifest of tar keys under 512 MiB; split the manifest into several jobs`,
    );
  }
  if (!Number.isSafeInteger(tarOffset) || tarOffset < 0 || tarOffset % TAR_BLOCK_BYTES !== 0) {
    throw new RangeError(`tar offset ${tarOffset} is not a header offset (a non-negative multiple of ${TAR_BLOCK_BYTES})`);
  }
  if (tarOffset >= MAX_ID_TAR_OFFSET) {
    throw new RangeError(`tar offset ${tarOffset} is 8 GiB or more: WebDataset sample ids need shards under 8 GiB; reshard into smaller tars`);
  }
  return recordOffset * 2 ** TAR_BLOCK_INDEX_BITS + tarOffset / TAR_BLOCK_BYTES;
}

/**
 * Sample name and extensions of a member path, WebDataset's `base_plus_ext`: the name is the
 * path up to the first `.` of the basename; `kind` is the part after the last `.`,
 * lowercased. Undefined for a basename without a `.` or starting with one (not part of a sample).
 */
function sampleMember(path: string): { readonly name: string; readonly kind: string } | undefined {
  const slash = path.lastIndexOf('/');
  const dot = path.indexOf('.', slash + 1);
  if (dot <= slash + 1) return undefined;
  return { name: path.slice(0, dot), kind: path.slice(path.lastIndexOf('.') + 1).toLowerCase() };
}

const UTF8 = new TextDecoder('utf-8');

/** The `label` of a sample's `json` member: a string, or an integer as decimal text; else none. */
function jsonLabel(bytes: Uint8Array): string | undefined {
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const label = (value as { label?: unknown }).label;
  if (typeof label === 'string') return label.trim() === '' ? undefined : label;
  if (typeof label === 'number' && Number.isSafeInteger(label)) return String(label);
  return undefined;
}

/** Sequential ranged GETs of one object, holding at most one block. */
class RangedTarSource implements TarByteSource {
  position: number;
  readonly sizeBytes: number;
  #block: Uint8Array | undefined;
  #blockStart = 0;
  readonly #fetch: (start: number, end: number) => Promise<Uint8Array>;
  readonly #blockBytes: number;

  constructor(fetch: (start: number, end: number) => Promise<Uint8Array>, sizeBytes: number, position: number, blockBytes: number) {
    this.#fetch = fetch;
    this.sizeBytes = sizeBytes;
    this.position = position;
    this.#blockBytes = blockBytes;
  }

  async read(length: number): Promise<Uint8Array> {
    if (this.position + length > this.sizeBytes) throw new RangeError(`read of ${length} bytes at ${this.position} passes the end (${this.sizeBytes})`);
    // Always a copy: member data outlive the block, and a view would keep the block alive.
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (this.#block === undefined || this.position >= this.#blockStart + this.#block.byteLength) {
        // Drop the old block before the GET, so two blocks are never held at once.
        this.#block = undefined;
        const end = Math.min(this.position + this.#blockBytes, this.sizeBytes);
        this.#block = await this.#fetch(this.position, end);
        this.#blockStart = this.position;
      }
      const at = this.position - this.#blockStart;
      const take = Math.min(length - filled, this.#block.byteLength - at);
      out.set(this.#block.subarray(at, at + take), filled);
      filled += take;
      this.position += take;
    }
    if (this.position >= this.#blockStart + (this.#block?.byteLength ?? 0)) this.#block = undefined;
    return out;
  }

  skip(length: number): Promise<void> {
    this.position += length;
    // Data skipped past the block are never fetched: the next GET starts after them.
    if (this.#block !== undefined && this.position >= this.#blockStart + this.#block.byteLength) this.#block = undefined;
    return Promise.resolve();
  }
}

interface SampleInProgress {
  readonly tarOffset: number;
  readonly name: string;
  /** End of the sample's last member so far: the next sample starts here. */
  end: number;
  image?: { readonly ext: string; readonly bytes: Uint8Array };
  clsLabel?: string;
  sawCls: boolean;
  jsonLabel?: string;
  sawJson: boolean;
}

function finishSample(sample: SampleInProgress): WebDatasetSample {
  const label = sample.clsLabel ?? sample.jsonLabel;
  return {
    tarOffset: sample.tarOffset,
    nextTarOffset: sample.end,
    name: sample.name,
    ...(sample.image !== undefined && { image: sample.image }),
    ...(label !== undefined && { label }),
  };
}

/**
 * Streams the samples of the tar shard `s3://bucket/key` from `fromTarOffset` (a sample's
 * `tarOffset` or `nextTarOffset`, a multiple of 512), in archive order, with one HeadObject
 * (size and ETag; later reads carry `If-Match`) and sequential ranged GETs of `blockBytes`.
 * Holds at most one block plus the current sample's kept members (its first image, `cls`
 * and `json`); other members are skipped without copying, and data past the block are not
 * fetched at all.
 *
 * A sample is yielded once the next member has another sample name or the archive ends.
 * Members that are not files, or whose basename has no `.`, belong to no sample and are
 * skipped. A sample may lack an image (the caller skips it) or a label. A `json` member
 * that does not parse, or whose `label` is not a string or an integer, gives no label.
 *
 * Errors: on a truncated or corrupt tar, every complete sample before the damage is
 * yielded, then {@link TarFormatError} (naming `s3://bucket/key` and the offset) is thrown;
 * also for a kept member larger than `maxMemberBytes` or `fromTarOffset` past the end. A
 * missing object's S3 error (`NotFound` / `NoSuchKey`, 404), and any other error retrying
 * cannot fix (403, 412), propagate unchanged; retryable ones that persist become
 * {@link TarReadError}.
 */
export async function* readWebDatasetSamples(
  s3: S3Client,
  bucket: string,
  key: string,
  fromTarOffset: number,
  options: ReadWebDatasetOptions = {},
): AsyncGenerator<WebDatasetSample, void, undefined> {
  const blockBytes = options.blockBytes ?? DEFAULT_TAR_BLOCK_BYTES;
  const retries = options.retries ?? DEFAULT_TAR_READ_RETRIES;
  const maxMemberBytes = options.maxMemberBytes ?? DEFAULT_MAX_TAR_MEMBER_BYTES;
  const { signal } = options;
  if (!Number.isSafeInteger(blockBytes) || blockBytes < 1 || blockBytes > 256 * 1024 * 1024) {
    throw new RangeError(`blockBytes must be an integer in [1, 268435456], got ${blockBytes}`);
  }
  if (!Number.isSafeInteger(retries) || retries < 0 || retries > 100) throw new RangeError(`retries must be an integer in [0, 100], got ${retries}`);
  if (!Number.isSafeInteger(maxMemberBytes) || maxMemberBytes < 0) {
    throw new RangeError(`maxMemberBytes must be a non-negative integer, got ${maxMemberBytes}`);
  }
  if (!Number.isSafeInteger(fromTarOffset) || fromTarOffset < 0 || fromTarOffset % TAR_BLOCK_BYTES !== 0) {
    throw new RangeError(`fromTarOffset must be a non-negative multiple of ${TAR_BLOCK_BYTES} (a sample's tarOffset), got ${fromTarOffset}`);
  }
  const archive = `s3://${bucket}/${key}`;

  const withRetries = async <T>(what: string, request: () => Promise<T>): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await request();
      } catch (error) {
        if (signal?.aborted === true || !isRetryableS3Error(error)) throw error;
        if (attempt >= retries) {
          const message = error instanceof Error ? error.message : String(error);
          throw new TarReadError(`S3 ${archive} (${what}): ${message} after ${attempt + 1} attempts`, { cause: error });
        }
        await sleep(backoffDelayMs(attempt), signal);
      }
    }
  };

  const head = await withRetries('HeadObject', () =>
    s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), signal === undefined ? {} : { abortSignal: signal }),
  );
  const sizeBytes = head.ContentLength;
  if (sizeBytes === undefined) throw new TarReadError(`S3 ${archive}: HeadObject returned no Content-Length`);
  if (fromTarOffset > sizeBytes) {
    throw new TarFormatError(
      archive,
      fromTarOffset,
      `the read starts past the end of the ${sizeBytes}-byte object; the shard was replaced or the offset belongs to another shard`,
    );
  }
  const rangeOptions = { ...(head.ETag !== undefined && { etag: head.ETag }), ...(signal !== undefined && { signal }) };
  const fetch = (start: number, end: number): Promise<Uint8Array> =>
    withRetries(`tar bytes ${start}-${end}`, async () => (await getObjectRange(s3, bucket, key, start, end, rangeOptions)).bytes);
  const source = new RangedTarSource(fetch, sizeBytes, fromTarOffset, blockBytes);

  const keep = async (entry: TarEntry): Promise<Uint8Array> => {
    if (entry.sizeBytes > maxMemberBytes) {
      throw new TarFormatError(
        archive,
        entry.headerOffset,
        `member "${entry.path}" is ${entry.sizeBytes} bytes, more than maxMemberBytes (${maxMemberBytes}); raise the limit or reshard`,
      );
    }
    return entry.readData();
  };

  let sample: SampleInProgress | undefined;
  let sampleStart = fromTarOffset;
  for await (const entry of readTarMembers(source, { archiveName: archive })) {
    if (entry.type !== TarMemberType.File) continue;
    const member = sampleMember(entry.path);
    if (member === undefined) continue;
    if (sample !== undefined && member.name !== sample.name) {
      // The next member's header proves the sample complete, whatever follows.
      yield finishSample(sample);
      sampleStart = sample.end;
      sample = undefined;
    }
    sample ??= { tarOffset: sampleStart, name: member.name, end: entry.nextOffset, sawCls: false, sawJson: false };
    sample.end = entry.nextOffset;
    if (sample.image === undefined && WEBDATASET_IMAGE_EXTENSIONS.has(member.kind)) {
      sample.image = { ext: member.kind, bytes: await keep(entry) };
    } else if (member.kind === 'cls' && !sample.sawCls) {
      sample.sawCls = true;
      const text = UTF8.decode(await keep(entry)).trim();
      if (text !== '') sample.clsLabel = text;
    } else if (member.kind === 'json' && !sample.sawJson) {
      sample.sawJson = true;
      const label = jsonLabel(await keep(entry));
      if (label !== undefined) sample.jsonLabel = label;
    }
  }
  if (sample !== undefined) yield finishSample(sample);
}
