/**
 * A throw-away S3 endpoint (s3rver) on loopback, for `dinofleet up` and integration tests.
 */
import { CreateBucketCommand, HeadBucketCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { S3RVER_CREDENTIAL, S3RVER_REGION, startS3rver } from '@dinofleet/data/testing';

/** A running s3rver on `127.0.0.1`. */
export interface S3Server {
  /** `http://127.0.0.1:<port>`. */
  readonly endpoint: string;
  /** Region the clients use (`us-east-1`). */
  readonly region: string;
  /** Access key id s3rver checks signatures against (`S3RVER`). */
  readonly accessKeyId: string;
  /** Secret access key s3rver checks signatures against (`S3RVER`). */
  readonly secretAccessKey: string;
  /**
   * The environment that points `@dinofleet/data`'s `resolveS3Config` at this server:
   * `DINOFLEET_S3_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
   * `DINOFLEET_S3_FORCE_PATH_STYLE=true`.
   */
  env(): Record<string, string>;
  /** Creates a bucket; a bucket that exists already is fine. */
  createBucket(name: string): Promise<void>;
  /** Stops the server and removes its temporary directory; idempotent, runs every cleanup. */
  stop(): Promise<void>;
  /** Same as {@link S3Server.stop}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@link startS3}. */
export interface S3ServerOptions {
  /** Directory holding the objects (kept on stop). @default a temporary directory, removed on stop */
  readonly dir?: string;
  /** Buckets to create at start. @default none */
  readonly buckets?: readonly string[];
}


/** An S3 client for an environment such as {@link S3Server.env}'s. */
export function s3ClientFromEnv(env: Readonly<Record<string, string>>): S3Client {
  return createS3Client(resolveS3Config({}, { ...env }));
}

/** Creates `bucket` unless it exists. */
export async function ensureBucket(client: S3Client, bucket: string): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
    return;
  } catch (error) {
    const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (status !== 404) throw error;
  }
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (error) {
    // Two creators raced: the bucket is there, which is all we wanted.
    const name = (error as { name?: string }).name;
    if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw error;
  }
}

/** Starts s3rver on 127.0.0.1, port 0 (a free port), and creates `options.buckets`. */
export async function startS3(options: S3ServerOptions = {}): Promise<S3Server> {
  const server = await startS3rver(options.dir !== undefined ? { dir: options.dir } : {});
  const { endpoint } = server;
  const env = (): Record<string, string> => ({
    DINOFLEET_S3_ENDPOINT: endpoint,
    AWS_REGION: S3RVER_REGION,
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIAL,
    AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIAL,
    DINOFLEET_S3_FORCE_PATH_STYLE: 'true',
  });
  const client = s3ClientFromEnv(env());
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      const failures: unknown[] = [];
      try {
        client.destroy();
      } catch (error) {
        failures.push(error);
      }
      await server.stop().catch((error: unknown) => failures.push(error));
      if (failures.length > 0) throw new AggregateError(failures, 'stopping the S3 server failed');
    })();
    return stopping;
  };
  const s3: S3Server = {
    endpoint,
    region: S3RVER_REGION,
    accessKeyId: S3RVER_CREDENTIAL,
    secretAccessKey: S3RVER_CREDENTIAL,
    env,
    createBucket: (name) => ensureBucket(client, name),
    stop,
    [Symbol.asyncDispose]: stop,
  };
  try {
    for (const bucket of options.buckets ?? []) await s3.createBucket(bucket);
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
  return s3;
}
