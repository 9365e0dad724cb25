import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

/** One request the in-memory S3 answered. */
export interface MemoryS3Request {
  readonly command: 'GetObject' | 'HeadObject';
  readonly key: string;
  /** Requested byte range `[start, end)` of a GET with a Range header. */
  readonly range?: readonly [number, number];
}

/**
 * An S3 stand-in that serves objects from memory with S3's Range semantics, for property
 * tests that issue tens of thousands of ranged GETs (s3rver takes milliseconds each).
 * Bodies arrive in small chunks so readers see chunk boundaries too.
 */
export function memoryS3(objects: ReadonlyMap<string, Uint8Array>, chunkBytes = 5): { client: S3Client; requests: MemoryS3Request[] } {
  const requests: MemoryS3Request[] = [];
  const notFound = (key: string): Error =>
    Object.assign(new Error(`no such key ${key}`), { name: 'NoSuchKey', $metadata: { httpStatusCode: 404 } });
  const send = (command: unknown): Promise<unknown> => {
    if (command instanceof HeadObjectCommand) {
      const key = command.input.Key ?? '';
      requests.push({ command: 'HeadObject', key });
      const object = objects.get(key);
      if (object === undefined) return Promise.reject(notFound(key));
      return Promise.resolve({ ContentLength: object.byteLength, ETag: '"memory"' });
    }
    if (command instanceof GetObjectCommand) {
      const key = command.input.Key ?? '';
      const object = objects.get(key);
      const match = /^bytes=(\d+)-(\d+)$/.exec(command.input.Range ?? '');
      const range = match === null ? undefined : ([Number(match[1]), Number(match[2]) + 1] as const);
      requests.push({ command: 'GetObject', key, ...(range !== undefined && { range }) });
      if (object === undefined) return Promise.reject(notFound(key));
      const [start, end] = range ?? [0, object.byteLength];
      if (start >= object.byteLength) {
        return Promise.reject(Object.assign(new Error('InvalidRange'), { name: 'InvalidRange', $metadata: { httpStatusCode: 416 } }));
      }
      const slice = object.subarray(start, Math.min(end, object.byteLength));
      async function* body(): AsyncGenerator<Uint8Array> {
        for (let at = 0; at < slice.byteLength; at += chunkBytes) {
          await Promise.resolve();
          yield slice.subarray(at, at + chunkBytes);
        }
      }
      return Promise.resolve({
        Body: body(),
        ContentLength: slice.byteLength,
        ...(range !== undefined && { ContentRange: `bytes ${start}-${start + slice.byteLength - 1}/${object.byteLength}` }),
      });
    }
    return Promise.reject(new Error('memoryS3 answers only GetObject and HeadObject'));
  };
  return { client: { send } as unknown as S3Client, requests };
}
