import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';

import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';

import { createS3Client, describeS3Config, resolveS3Config, S3ConfigError } from './s3-config.ts';

describe('resolveS3Config', () => {
  it('defaults to AWS S3 with the SDK credential chain', () => {
    expect(resolveS3Config({}, {})).toEqual({ region: 'us-east-1', forcePathStyle: false, maxAttempts: 3, requestTimeoutMs: 30_000 });
  });

  it('reads MinIO/s3rver settings from the environment', () => {
    const config = resolveS3Config(
      {},
      {
        DINOFLEET_S3_ENDPOINT: 'http://127.0.0.1:9000/',
        AWS_REGION: 'eu-west-1',
        AWS_ACCESS_KEY_ID: 'minio',
        AWS_SECRET_ACCESS_KEY: 'minio-secret',
        DINOFLEET_S3_MAX_ATTEMPTS: '5',
        DINOFLEET_S3_REQUEST_TIMEOUT_MS: '1500',
      },
    );
    expect(config).toEqual({
      endpoint: 'http://127.0.0.1:9000',
      region: 'eu-west-1',
      credentials: { accessKeyId: 'minio', secretAccessKey: 'minio-secret' },
      forcePathStyle: true,
      maxAttempts: 5,
      requestTimeoutMs: 1500,
    });
    expect(describeS3Config(config)).not.toContain('minio-secret');
    expect(resolveS3Config({}, { AWS_DEFAULT_REGION: 'ap-south-1', DINOFLEET_S3_FORCE_PATH_STYLE: 'true' })).toMatchObject({
      region: 'ap-south-1',
      forcePathStyle: true,
    });
  });

  it('lets options win over the environment', () => {
    const config = resolveS3Config(
      { endpoint: 'https://s3.example.com', region: 'us-west-2', forcePathStyle: false, maxAttempts: 1 },
      { DINOFLEET_S3_ENDPOINT: 'not a url', AWS_REGION: 'eu-west-1', DINOFLEET_S3_MAX_ATTEMPTS: 'x' },
    );
    expect(config).toMatchObject({ endpoint: 'https://s3.example.com', region: 'us-west-2', forcePathStyle: false, maxAttempts: 1 });
  });

  it('fails naming the bad field and never echoes a secret', () => {
    const fails = (options: Parameters<typeof resolveS3Config>[0], env: NodeJS.ProcessEnv, field: RegExp): S3ConfigError => {
      let caught: unknown;
      try {
        resolveS3Config(options, env);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(S3ConfigError);
      expect((caught as S3ConfigError).message).toMatch(field);
      return caught as S3ConfigError;
    };
    fails({}, { DINOFLEET_S3_ENDPOINT: 'localhost:9000' }, /endpoint \(DINOFLEET_S3_ENDPOINT\).*http/);
    fails({ endpoint: 'ftp://host' }, {}, /endpoint: must use http or https/);
    const withPassword = fails({}, { DINOFLEET_S3_ENDPOINT: 'http://key:hunter2@minio:9000' }, /endpoint.*credentials/);
    expect(withPassword.message).not.toContain('hunter2');
    const unparsable = fails({}, { DINOFLEET_S3_ENDPOINT: 'http://key:hunter2@[bad' }, /endpoint/);
    expect(unparsable.message).not.toContain('hunter2');
    fails({}, { AWS_ACCESS_KEY_ID: 'id' }, /AWS_SECRET_ACCESS_KEY.*missing/);
    const missingId = fails({}, { AWS_SECRET_ACCESS_KEY: 'topsecret' }, /AWS_ACCESS_KEY_ID.*missing/);
    expect(missingId.message).not.toContain('topsecret');
    fails({}, { DINOFLEET_S3_MAX_ATTEMPTS: '0' }, /maxAttempts \(DINOFLEET_S3_MAX_ATTEMPTS\).*\[1, 20\]/);
    fails({ requestTimeoutMs: 1.5 }, {}, /requestTimeoutMs/);
    fails({}, { DINOFLEET_S3_FORCE_PATH_STYLE: 'yes' }, /forcePathStyle/);
    fails({}, { AWS_REGION: 'EU West' }, /region \(AWS_REGION\)/);
  });

  it('builds a client that uses the resolved settings', async () => {
    const client = createS3Client(resolveS3Config({ endpoint: 'http://127.0.0.1:1', region: 'eu-central-1' }, {}));
    try {
      expect(await client.config.region()).toBe('eu-central-1');
      expect(client.config.forcePathStyle).toBe(true);
    } finally {
      client.destroy();
    }
  });

  it('gives up on a server that never answers after requestTimeoutMs', async () => {
    const sockets: Socket[] = [];
    const server = createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const client = createS3Client(
      resolveS3Config(
        { endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1, requestTimeoutMs: 200, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } },
        {},
      ),
    );
    const started = performance.now();
    try {
      await expect(client.send(new HeadObjectCommand({ Bucket: 'bucket', Key: 'key' }))).rejects.toThrow();
      expect(performance.now() - started).toBeLessThan(5_000);
    } finally {
      client.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
