// s3rver ships no types; the reference makes packages that import this file see ours too.
// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- an ambient module has nothing to import
/// <reference path="./s3rver.d.ts" />
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { CreateBucketCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

import { createS3Client, resolveS3Config } from '../s3-config.ts';

/** A running s3rver on loopback with one fresh bucket. */
export interface TestS3 {
  /** A client for the server, path style, static credentials. */
  readonly client: S3Client;
  /** A bucket created for this instance alone (`dinofleet-test-<random>`). */
  readonly bucket: string;
  /** `http://127.0.0.1:<port>`. */
  readonly endpoint: string;
  /** Stops the server and deletes its directory; idempotent, runs every cleanup. */
  close(): Promise<void>;
  /** Same as {@link TestS3.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** A bare s3rver process-in-process on loopback. */
export interface S3rverInstance {
  /** `http://127.0.0.1:<port>`. */
  readonly endpoint: string;
  /** Stops the server and removes its directory when it created it; idempotent, runs every cleanup. */
  stop(): Promise<void>;
}

/** The fixed region and credentials s3rver checks signatures against. */
export const S3RVER_REGION = 'us-east-1';
export const S3RVER_CREDENTIAL = 'S3RVER';

/**
 * Starts s3rver on `127.0.0.1`, port 0 (a free port), keeping objects in `dir` (kept on
 * stop) or in a temporary directory (removed on stop). Both the test helper below and
 * `@dinofleet/local`'s `startS3` (for `dinofleet up`) stand on it.
 */
export async function startS3rver(options: { readonly dir?: string } = {}): Promise<S3rverInstance> {
  const ownDir = options.dir === undefined;
  const directory = options.dir ?? (await mkdtemp(join(tmpdir(), 'dinofleet-s3rver-')));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
  let address;
  try {
    address = await server.run();
  } catch (error) {
    if (ownDir) await rm(directory, { recursive: true, force: true });
    throw error;
  }
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      const failures: unknown[] = [];
      await server.close().catch((error: unknown) => failures.push(error));
      if (ownDir) await rm(directory, { recursive: true, force: true }).catch((error: unknown) => failures.push(error));
      if (failures.length > 0) throw new AggregateError(failures, 'stopping s3rver failed');
    })();
    return stopping;
  };
  return { endpoint: `http://127.0.0.1:${address.port}`, stop };
}

/**
 * Starts s3rver (see {@link startS3rver}) and creates a bucket with a unique name so tests
 * never see each other's objects.
 */
export async function startTestS3(): Promise<TestS3> {
  const server = await startS3rver();
  const { endpoint } = server;
  const client = createS3Client(
    resolveS3Config({ endpoint, region: S3RVER_REGION, credentials: { accessKeyId: S3RVER_CREDENTIAL, secretAccessKey: S3RVER_CREDENTIAL } }, {}),
  );
  const bucket = `dinofleet-test-${randomUUID().slice(0, 18)}`;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const failures: unknown[] = [];
      try {
        client.destroy();
      } catch (error) {
        failures.push(error);
      }
      await server.stop().catch((error: unknown) => failures.push(error));
      if (failures.length > 0) throw new AggregateError(failures, 'closing the test S3 server failed');
    })();
    return closing;
  };
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (error) {
    await close().catch(() => undefined);
    throw error;
  }
  return { client, bucket, endpoint, close, [Symbol.asyncDispose]: close };
}
