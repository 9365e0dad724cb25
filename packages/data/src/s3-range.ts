import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

/** The bytes of one ranged GET and what the response said about the whole object. */
export interface ObjectRange {
  /** Exactly the requested bytes `[start, end)`. */
  readonly bytes: Uint8Array;
  /** Size of the whole object, bytes (from `Content-Range`). */
  readonly objectSizeBytes: number;
}

/** Options of {@link getObjectRange}. */
export interface ObjectRangeOptions {
  /** Sent as `If-Match`, so a replaced object fails (412) instead of yielding mixed bytes. */
  readonly etag?: string;
  /** Cancels the request. */
  readonly signal?: AbortSignal;
}

/** Thrown when a ranged GET answers with other bytes than the ones asked for. */
export class RangeReadError extends Error {
  override readonly name = 'RangeReadError';
  /** Stable code. */
  readonly code = 'range_mismatch';
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+)$/;

/**
 * Reads bytes `[start, end)` of an object with one ranged GET (`end > start`). At most
 * `end − start` bytes are ever held: a server that sends more (s3rver answers `bytes=0-0`
 * with the whole object) is cut off once the range is complete.
 */
export async function getObjectRange(
  s3: S3Client,
  bucket: string,
  key: string,
  start: number,
  end: number,
  options: ObjectRangeOptions = {},
): Promise<ObjectRange> {
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && end > start)) {
    throw new RangeError(`byte range [${start}, ${end}) must be non-empty and non-negative`);
  }
  const response = await s3.send(
    new GetObjectCommand({
      Bucket: bucket,
      Key: key,
      Range: `bytes=${start}-${end - 1}`,
      ...(options.etag !== undefined && { IfMatch: options.etag }),
    }),
    options.signal === undefined ? {} : { abortSignal: options.signal },
  );
  const body = response.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
  const where = `s3://${bucket}/${key} bytes [${start}, ${end})`;
  if (body === undefined) throw new RangeReadError(`${where}: the response has no body`);

  let objectSizeBytes: number;
  const match = response.ContentRange === undefined ? null : CONTENT_RANGE.exec(response.ContentRange);
  if (match !== null) {
    const [, first, , total] = match;
    if (Number(first) !== start) {
      body.destroy?.();
      throw new RangeReadError(`${where}: the server sent Content-Range ${response.ContentRange}`);
    }
    objectSizeBytes = Number(total);
  } else if (start === 0 && response.ContentLength !== undefined) {
    // A server that ignores Range sends the whole object from byte 0 with status 200.
    objectSizeBytes = response.ContentLength;
  } else {
    body.destroy?.();
    throw new RangeReadError(`${where}: the server ignored the Range header`);
  }

  const bytes = new Uint8Array(end - start);
  let filled = 0;
  // A body of exactly the range is read to its end, so the connection goes back to the
  // agent's keep-alive pool; cutting it off would cost a new TCP connection per GET.
  const exact = response.ContentLength === end - start;
  for await (const chunk of body) {
    const take = Math.min(chunk.byteLength, bytes.byteLength - filled);
    bytes.set(chunk.subarray(0, take), filled);
    filled += take;
    if (filled === bytes.byteLength && !exact) break;
  }
  // A server that sends more than the range (s3rver answers `bytes=0-0` with the whole
  // object) is cut off: leaving the loop early does not always end the HTTP response.
  if (!exact) body.destroy?.();
  if (filled !== bytes.byteLength) {
    throw new RangeReadError(`${where}: the body ended after ${filled} bytes (object is ${objectSizeBytes} bytes)`);
  }
  return { bytes, objectSizeBytes };
}
