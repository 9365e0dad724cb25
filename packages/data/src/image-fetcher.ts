import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

import type { DecodedImage } from './fashion-mnist.ts';
import { DecodeError, decodeImage } from './image-decode.ts';
import { backoffDelayMs, httpStatusOf, isRetryableS3Error, sleep } from './retry-backoff.ts';
import type { BackoffOptions } from './retry-backoff.ts';

/**
 * Batch image loading: GET each object, decode it, keep going when one is bad. A missing
 * or corrupt image in a billion-image manifest must cost one sample, not the job; the
 * caller (the sample ledger) records the skip so the image is not retried every epoch.
 */

/** Why an image was skipped. */
export const FetchSkipReason = {
  /** The object does not exist (`NoSuchKey`). */
  Missing: 'missing',
  /** The bytes are not a decodable PNG/JPEG, or the object is too large to accept. */
  DecodeError: 'decode_error',
  /** The GET kept failing (after retries), or failed in a way retrying cannot fix (403). */
  ReadError: 'read_error',
} as const;
/** Why an image was skipped. */
export type FetchSkipReason = (typeof FetchSkipReason)[keyof typeof FetchSkipReason];

/** One key's outcome: the image, or why it was skipped. */
export type FetchedImage =
  | { readonly key: string; readonly image: DecodedImage }
  | {
      readonly key: string;
      readonly skipped: FetchSkipReason;
      /** Human-readable cause, for logs (no credentials in it). */
      readonly detail: string;
    };

/** Options of {@link fetchImages}. */
export interface FetchImagesOptions {
  /** Objects in flight at once, 1–1024. @default 16 */
  readonly concurrency?: number;
  /** Retries per object after a retryable failure (network, 5xx, throttling). @default 3 */
  readonly retries?: number;
  /** Output channels. @default 3 */
  readonly channels?: 1 | 3;
  /** Largest object accepted, bytes; larger ones are skipped as `decode_error`. @default 64 MiB */
  readonly maxObjectBytes?: number;
  /** Backoff between retries. @default 100 ms base, 5 s cap, full jitter */
  readonly backoff?: BackoffOptions;
  /** Called before each retry of an object's read (`attempt` counts from 1), e.g. to log it. */
  readonly onRetry?: (key: string, attempt: number, detail: string) => void;
  /** Aborts the batch: the returned promise rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** Default objects in flight. */
export const DEFAULT_FETCH_CONCURRENCY = 16;
/** Default retries per object. */
export const DEFAULT_FETCH_RETRIES = 3;
/** Default largest object accepted, bytes. */
export const DEFAULT_MAX_IMAGE_OBJECT_BYTES = 64 * 1024 * 1024;

class ObjectTooLargeError extends Error {}

/** True when an S3 error says the object does not exist (`NoSuchKey`, `NotFound`, HTTP 404). */
export function isNoSuchKeyError(error: unknown): boolean {
  const name = typeof error === 'object' && error !== null ? (error as { name?: unknown }).name : undefined;
  return name === 'NoSuchKey' || name === 'NotFound' || httpStatusOf(error) === 404;
}

function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

async function getObjectBytes(s3: S3Client, bucket: string, key: string, maxBytes: number, signal?: AbortSignal): Promise<Uint8Array> {
  const response = await s3.send(
    new GetObjectCommand({ Bucket: bucket, Key: key }),
    signal === undefined ? {} : { abortSignal: signal },
  );
  const body = response.Body;
  if (body === undefined) throw new Error('the response has no body');
  if (response.ContentLength !== undefined && response.ContentLength > maxBytes) {
    (body as { destroy?: () => void }).destroy?.();
    throw new ObjectTooLargeError(`the object is ${response.ContentLength} bytes, more than maxObjectBytes (${maxBytes})`);
  }
  const bytes = await body.transformToByteArray();
  if (response.ContentLength !== undefined && bytes.byteLength !== response.ContentLength) {
    // A connection cut mid-body can end the stream early without an error; retry it.
    throw new Error(`the body ended after ${bytes.byteLength} of ${response.ContentLength} bytes`);
  }
  return bytes;
}

type FetchConfig = Required<Omit<FetchImagesOptions, 'signal' | 'backoff' | 'onRetry'>> & Pick<FetchImagesOptions, 'signal' | 'backoff' | 'onRetry'>;

/** One key's bytes, or why they could not be read. */
export type FetchedObject =
  | { readonly key: string; readonly bytes: Uint8Array }
  | {
      readonly key: string;
      readonly skipped: FetchSkipReason;
      /** Human-readable cause, for logs (no credentials in it). */
      readonly detail: string;
    };

async function readOne(s3: S3Client, bucket: string, key: string, config: FetchConfig): Promise<FetchedObject> {
  for (let attempt = 0; ; attempt++) {
    try {
      return { key, bytes: await getObjectBytes(s3, bucket, key, config.maxObjectBytes, config.signal) };
    } catch (error) {
      if (config.signal?.aborted === true) throw config.signal.reason;
      if (isNoSuchKeyError(error)) return { key, skipped: FetchSkipReason.Missing, detail: describe(error) };
      if (error instanceof ObjectTooLargeError) return { key, skipped: FetchSkipReason.DecodeError, detail: error.message };
      if (attempt >= config.retries || !isRetryableS3Error(error)) {
        return { key, skipped: FetchSkipReason.ReadError, detail: `after ${attempt + 1} attempt(s): ${describe(error)}` };
      }
      config.onRetry?.(key, attempt + 1, describe(error));
      await sleep(backoffDelayMs(attempt, config.backoff), config.signal);
    }
  }
}

async function fetchOne(s3: S3Client, bucket: string, key: string, config: FetchConfig): Promise<FetchedImage> {
  const read = await readOne(s3, bucket, key, config);
  if ('skipped' in read) return read;
  try {
    return { key, image: await decodeImage(read.bytes, { channels: config.channels }) };
  } catch (error) {
    if (error instanceof DecodeError) return { key, skipped: FetchSkipReason.DecodeError, detail: `${error.code}: ${error.message}` };
    throw error;
  }
}

function resolveFetchConfig(options: FetchImagesOptions): FetchConfig {
  const concurrency = options.concurrency ?? DEFAULT_FETCH_CONCURRENCY;
  const retries = options.retries ?? DEFAULT_FETCH_RETRIES;
  const maxObjectBytes = options.maxObjectBytes ?? DEFAULT_MAX_IMAGE_OBJECT_BYTES;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 1024) {
    throw new RangeError(`concurrency must be an integer in [1, 1024], got ${concurrency}`);
  }
  if (!Number.isInteger(retries) || retries < 0 || retries > 100) throw new RangeError(`retries must be an integer in [0, 100], got ${retries}`);
  if (!Number.isSafeInteger(maxObjectBytes) || maxObjectBytes < 1) {
    throw new RangeError(`maxObjectBytes must be a positive integer, got ${maxObjectBytes}`);
  }
  return {
    concurrency,
    retries,
    maxObjectBytes,
    channels: options.channels ?? 3,
    ...(options.signal !== undefined && { signal: options.signal }),
    ...(options.backoff !== undefined && { backoff: options.backoff }),
    ...(options.onRetry !== undefined && { onRetry: options.onRetry }),
  };
}

/** Runs `task` over `items` with at most `concurrency` at once; results in input order. */
async function mapBounded<T, R>(items: readonly T[], concurrency: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  // A pool of `concurrency` loops that each take the next index: bounded in-flight work
  // and results written by index, so the output order is the input order.
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}

/**
 * GETs `keys` from `bucket` (no decoding) with at most `concurrency` objects in flight and
 * the same retries and skip rules as {@link fetchImages}. Resolves to one
 * {@link FetchedObject} per key, in input order.
 */
export async function fetchObjects(s3: S3Client, bucket: string, keys: readonly string[], options: FetchImagesOptions = {}): Promise<FetchedObject[]> {
  const config = resolveFetchConfig(options);
  return mapBounded(keys, config.concurrency, (key) => readOne(s3, bucket, key, config));
}

/**
 * GETs and decodes `keys` from `bucket` with at most `concurrency` objects in flight.
 * Resolves to one {@link FetchedImage} per key, in input order; bad objects are skipped
 * with a reason, never thrown. Rejects only on bad options or when `signal` aborts.
 */
export async function fetchImages(
  s3: S3Client,
  bucket: string,
  keys: readonly string[],
  options: FetchImagesOptions = {},
): Promise<FetchedImage[]> {
  const config = resolveFetchConfig(options);
  return mapBounded(keys, config.concurrency, (key) => fetchOne(s3, bucket, key, config));
}
