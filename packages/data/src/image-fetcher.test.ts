import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { DecodedImage } from './fashion-mnist.ts';
import { encodePng } from './image-decode.ts';
import { fetchImages } from './image-fetcher.ts';
import { startTestS3 } from './testing/s3.ts';
import type { TestS3 } from './testing/s3.ts';

function greyImage(level: number, size = 8): DecodedImage {
  return { data: new Float32Array(size * size).fill(level / 255), height: size, width: size, channels: 1 };
}

describe('fetchImages', () => {
  let s3: TestS3;
  beforeAll(async () => {
    s3 = await startTestS3();
  });
  afterAll(async () => {
    await s3.close();
  });

  it('returns images in input order and skips exactly the missing and corrupt objects', async () => {
    const keys: string[] = [];
    for (let i = 0; i < 12; i++) {
      const key = `img/${i}.png`;
      keys.push(key);
      await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: await encodePng(greyImage(i * 20)) }));
    }
    const png = await encodePng(greyImage(0));
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'img/corrupt.png', Body: png.subarray(0, 30) }));
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'img/text.png', Body: 'hello' }));
    const requested = [...keys.slice(0, 4), 'img/missing.png', ...keys.slice(4, 8), 'img/corrupt.png', ...keys.slice(8), 'img/text.png'];

    const results = await fetchImages(s3.client, s3.bucket, requested, { concurrency: 3, retries: 1, channels: 1 });
    expect(results.map((r) => r.key)).toEqual(requested);
    const skipped = results.filter((r) => 'skipped' in r).map((r) => [r.key, 'skipped' in r ? r.skipped : '']);
    expect(skipped).toEqual([
      ['img/missing.png', 'missing'],
      ['img/corrupt.png', 'decode_error'],
      ['img/text.png', 'decode_error'],
    ]);
    for (const result of results) {
      if (!('image' in result)) continue;
      const i = keys.indexOf(result.key);
      expect(result.image).toMatchObject({ height: 8, width: 8, channels: 1 });
      expect(result.image.data[0]).toBeCloseTo((i * 20) / 255, 6);
    }
  });

  it('retries failed reads with backoff and reports read_error when they keep failing', async () => {
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'flaky.png', Body: await encodePng(greyImage(7)) }));
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'broken.png', Body: await encodePng(greyImage(9)) }));
    const attempts = new Map<string, number>();
    s3.client.middlewareStack.add(
      (next) => async (args) => {
        const key = (args.input as { Key?: string }).Key ?? '';
        const attempt = (attempts.get(key) ?? 0) + 1;
        attempts.set(key, attempt);
        if ((key === 'flaky.png' && attempt <= 2) || key === 'broken.png') {
          throw Object.assign(new Error('socket hang up'), { name: 'ECONNRESET' });
        }
        if (key === 'denied.png') {
          throw Object.assign(new Error('Access Denied'), { name: 'AccessDenied', $metadata: { httpStatusCode: 403 } });
        }
        return next(args);
      },
      { step: 'initialize', name: 'injectFailures' },
    );
    try {
      const results = await fetchImages(s3.client, s3.bucket, ['flaky.png', 'broken.png', 'denied.png'], {
        retries: 3,
        channels: 3,
        backoff: { baseMs: 1, capMs: 5 },
      });
      expect(results[0]).toMatchObject({ key: 'flaky.png', image: { channels: 3, height: 8, width: 8 } });
      expect(results[1]).toMatchObject({ key: 'broken.png', skipped: 'read_error' });
      expect(results[2]).toMatchObject({ key: 'denied.png', skipped: 'read_error' });
      expect(attempts.get('flaky.png')).toBe(3);
      expect(attempts.get('broken.png')).toBe(4);
      // A 403 does not get better by retrying.
      expect(attempts.get('denied.png')).toBe(1);
    } finally {
      s3.client.middlewareStack.remove('injectFailures');
    }
  });

  it('keeps at most `concurrency` GETs in flight', async () => {
    const keys = Array.from({ length: 20 }, (_, i) => `c/${i}.png`);
    const body = await encodePng(greyImage(1));
    for (const key of keys) await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
    let inFlight = 0;
    let peak = 0;
    s3.client.middlewareStack.add(
      (next) => async (args) => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        try {
          return await next(args);
        } finally {
          inFlight--;
        }
      },
      { step: 'initialize', name: 'countInFlight' },
    );
    try {
      const results = await fetchImages(s3.client, s3.bucket, keys, { concurrency: 4 });
      expect(results.every((r) => 'image' in r)).toBe(true);
      expect(peak).toBe(4);
    } finally {
      s3.client.middlewareStack.remove('countInFlight');
    }
  });

  it('skips objects larger than maxObjectBytes as decode_error without decoding them', async () => {
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'large.png', Body: await encodePng(greyImage(3, 64)) }));
    const [result] = await fetchImages(s3.client, s3.bucket, ['large.png'], { maxObjectBytes: 10 });
    expect(result).toMatchObject({ key: 'large.png', skipped: 'decode_error' });
    expect('detail' in result! && result.detail).toMatch(/maxObjectBytes/);
  });
});
