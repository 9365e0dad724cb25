import { GetObjectCommand, ListBucketsCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';

import { s3ClientFromEnv, startS3 } from './s3-server.ts';

describe('startS3', () => {
  it('serves put and get through a client built from env()', async () => {
    await using s3 = await startS3({ buckets: ['alpha'] });
    expect(s3.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(s3.env()).toEqual({
      DINOFLEET_S3_ENDPOINT: s3.endpoint,
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'S3RVER',
      AWS_SECRET_ACCESS_KEY: 'S3RVER',
      DINOFLEET_S3_FORCE_PATH_STYLE: 'true',
    });
    const client = s3ClientFromEnv(s3.env());
    try {
      await client.send(new PutObjectCommand({ Bucket: 'alpha', Key: 'a/b.txt', Body: 'hello s3' }));
      const object = await client.send(new GetObjectCommand({ Bucket: 'alpha', Key: 'a/b.txt' }));
      expect(await object.Body?.transformToString()).toBe('hello s3');

      await s3.createBucket('beta');
      await s3.createBucket('beta'); // exists already: fine
      const buckets = await client.send(new ListBucketsCommand({}));
      expect(buckets.Buckets?.map((b) => b.Name).sort()).toEqual(['alpha', 'beta']);
    } finally {
      client.destroy();
    }
  });

  it('gives two servers different endpoints and stops idempotently', async () => {
    const a = await startS3();
    const b = await startS3();
    expect(a.endpoint).not.toBe(b.endpoint);
    await a.stop();
    await a.stop();
    await b.stop();
  });
});
