import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CropPool, decodeImage, encodePng, manifestSplit, resolveS3Config } from '@dinofleet/data';
import { FMNIST_MULTI_CROP, Rng, buildCropBatch } from '@dinofleet/dino';
import { S3RVER_CREDENTIAL, S3RVER_REGION, startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import type { ShardLease, SkippedSample } from '@dinofleet/proto';
import { MemoryBatchSource, PrefetchingBatchSource, S3BatchLoader } from './batch-loader.ts';
import type { TrainingBatch } from './batch-loader.ts';
import { LeaseReader } from './lease-reader.ts';
import { randomImages } from './testing/recipes.ts';

/** 11 records; record 2's object is missing, record 5's is not an image. */
const RECORDS = 11;
const MISSING = 2;
const CORRUPT = 5;

interface Line {
  readonly offset: number;
  readonly key: string;
}

describe('S3BatchLoader on shard leases', () => {
  let s3: TestS3;
  const lines: Line[] = [];
  let manifestBytes = 0;
  const images = randomImages(RECORDS, 42);

  beforeAll(async () => {
    s3 = await startTestS3();
    let text = '';
    for (let i = 0; i < RECORDS; i++) {
      const key = `images/fmnist-${String(i).padStart(3, '0')}.png`;
      lines.push({ offset: Buffer.byteLength(text), key });
      text += `${key}\t${i % 10}\n`;
      if (i === MISSING) continue;
      const body = i === CORRUPT ? Buffer.from('this is not a png') : await encodePng(images[i] as (typeof images)[number]);
      await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
    }
    manifestBytes = Buffer.byteLength(text);
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'manifest.txt', Body: text }));
  });

  afterAll(() => s3?.close());

  /** Lease i of the manifest cut into 3 byte ranges (boundaries fall inside records). */
  function lease(epoch: number, shard: number): ShardLease {
    const split = manifestSplit(manifestBytes, 3, shard);
    return { leaseId: `e${epoch}-s${shard}`, epoch, shard, begin: split.start, end: split.end, cursor: split.start, cursorWithin: 0, cursorConsumed: 0 };
  }

  /** The records a lease owns: those whose first byte lies in [begin, end). */
  function owned(l: ShardLease): Line[] {
    return lines.filter((line) => line.offset >= l.cursor && line.offset < l.end);
  }

  it('skips a missing and a corrupt image with reasons, replaces them, reports cursors, and acquires leases at the end', async () => {
    const leases = [lease(0, 0), lease(0, 1), lease(0, 2), lease(1, 0)];
    const acquired: string[] = [];
    let nextLease = 1;
    const reader = new LeaseReader({
      s3: s3.client,
      bucket: s3.bucket,
      key: 'manifest.txt',
      firstLease: leases[0] as ShardLease,
      acquireLease: () => {
        const l = leases[nextLease++];
        if (l === undefined) return Promise.reject(new Error('no lease left'));
        acquired.push(l.leaseId);
        return Promise.resolve(l);
      },
    });
    const skips: { skipped: SkippedSample; detail: string }[] = [];
    const loader = new S3BatchLoader({
      reader,
      s3: s3.client,
      bucket: s3.bucket,
      batchSize: 3,
      concurrency: 2,
      channels: 1,
      onSkip: (skipped, detail) => skips.push({ skipped, detail }),
    });

    // What the batches must be: the leases' records in order, bad ones dropped.
    const sequence = leases.flatMap((l) => owned(l).map((line) => ({ ...line, lease: l })));
    const good = sequence.filter((_, i) => i % RECORDS !== MISSING && i % RECORDS !== CORRUPT);

    const batches: TrainingBatch[] = [];
    const acquiredBefore: number[] = [];
    for (let b = 0; b < 4; b++) {
      acquiredBefore.push(acquired.length);
      batches.push(await loader.next());
    }
    await loader.close();

    // Images and sample ids: the good records in manifest order, across leases.
    const ids = batches.flatMap((batch) => batch.sampleIds);
    expect(ids).toEqual(good.slice(0, 12).map((g) => g.offset));
    // Each image's epoch is its lease's (the sample ledger's epochs).
    expect(batches.flatMap((batch) => batch.sampleEpochs)).toEqual(good.slice(0, 12).map((g) => g.lease.epoch));
    for (const batch of batches) expect(batch.images).toHaveLength(3);
    const first = batches[0]?.images[0];
    expect(first?.width).toBe(28);
    expect(first?.channels).toBe(1);
    // PNG is lossless at 8 bits: the decoded image is the uploaded one up to rounding.
    const original = images[0]?.data ?? new Float32Array(0);
    let worst = 0;
    first?.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - (original[i] as number)))));
    expect(worst).toBeLessThanOrEqual(0.5 / 255 + 1e-6);

    // The skipped entries, with reasons, in the batch that replaced them.
    const skippedEverywhere = batches.flatMap((batch) => batch.skipped);
    expect(skippedEverywhere).toEqual([
      { sampleId: lines[MISSING]?.offset, key: lines[MISSING]?.key, reason: 'missing' },
      // Not a PNG or JPEG at all.
      { sampleId: lines[CORRUPT]?.offset, key: lines[CORRUPT]?.key, reason: 'not_image' },
      // Epoch 1 reads the manifest again: the missing object is skipped again.
      { sampleId: lines[MISSING]?.offset, key: lines[MISSING]?.key, reason: 'missing' },
    ]);
    expect(skips.map((s) => s.skipped.reason)).toEqual(['missing', 'not_image', 'missing']);
    expect(skips[1]?.detail).not.toBe('');

    // Cursors: every lease a batch read, in order; its position is its next unread
    // record (or its end, exhausted).
    let consumed = 0;
    for (const [b, batch] of batches.entries()) {
      // Records this batch read: up to and including its last image (replacements included).
      const lastId = batch.sampleIds.at(-1);
      const upTo = sequence.findIndex((entry, i) => i >= consumed && entry.offset === lastId);
      const read = sequence.slice(consumed, upTo + 1);
      consumed = upTo + 1;
      const touched = [...new Set(read.map((entry) => entry.lease))];
      // A lease used up by the previous batch's last record was reported then.
      const expected = touched.map((l) => {
        const next = sequence.slice(consumed).find((entry) => entry.lease === l);
        return { leaseId: l.leaseId, epoch: l.epoch, position: next?.offset ?? l.end, positionWithin: 0, windowConsumed: 0, exhausted: next === undefined };
      });
      expect(batch.cursors, `batch ${b}`).toEqual(expected);
    }
    // Every lease read to its end is reported exhausted exactly once (the 12th good
    // image is the last record of e1-s0, the first lease of epoch 1).
    const exhausted = batches.flatMap((batch) => batch.cursors.filter((c) => c.exhausted).map((c) => c.leaseId));
    expect(exhausted).toEqual(['e0-s0', 'e0-s1', 'e0-s2', 'e1-s0']);
    expect(good[11]).toEqual({ ...lines[owned(lease(1, 0)).length - 1], lease: leases[3] });
    // AcquireLease only once a lease is used up: never before the first batch.
    expect(acquiredBefore[0]).toBe(0);
    expect(acquired).toEqual(['e0-s1', 'e0-s2', 'e1-s0']);
  });

  it('resumes a lease at its cursor and reports an empty lease exhausted', async () => {
    const l = lease(0, 1);
    const ownedLines = owned(l);
    // Resume at the lease's third record (its second is the corrupt one).
    expect(ownedLines.length).toBeGreaterThanOrEqual(3);
    expect(ownedLines[1]?.offset).toBe(lines[CORRUPT]?.offset);
    const resumed: ShardLease = { ...l, cursor: (ownedLines[2] as Line).offset };
    const empty: ShardLease = { ...lease(0, 0), cursor: lease(0, 0).end };
    const reader = new LeaseReader({
      s3: s3.client,
      bucket: s3.bucket,
      key: 'manifest.txt',
      firstLease: empty,
      acquireLease: () => Promise.resolve(resumed),
    });
    const loader = new S3BatchLoader({ reader, s3: s3.client, bucket: s3.bucket, batchSize: 1, channels: 1 });
    const batch = await loader.next();
    expect(batch.sampleIds).toEqual([ownedLines[2]?.offset]);
    expect(batch.cursors).toEqual([
      { leaseId: 'e0-s0', epoch: 0, position: empty.end, positionWithin: 0, windowConsumed: 0, exhausted: true },
      { leaseId: 'e0-s1', epoch: 0, position: ownedLines[3]?.offset ?? l.end, positionWithin: 0, windowConsumed: 0, exhausted: ownedLines.length <= 3 },
    ]);
    await loader.close();
  });

  it('shares one abort signal across more GETs in flight than Node warns about, without a listener-leak warning', async () => {
    // 12 records in one round (the whole manifest, then the next lease's first record) with
    // 16 GETs allowed at once: 12 'abort' listeners on the loader's signal at the same time.
    const whole: ShardLease = { leaseId: 'e0-s0', epoch: 0, shard: 0, begin: 0, end: manifestBytes, cursor: 0, cursorWithin: 0, cursorConsumed: 0 };
    let epoch = 0;
    const reader = new LeaseReader({
      s3: s3.client,
      bucket: s3.bucket,
      key: 'manifest.txt',
      firstLease: whole,
      acquireLease: () => Promise.resolve({ ...whole, leaseId: `e${++epoch}-s0`, epoch }),
    });
    const loader = new S3BatchLoader({ reader, s3: s3.client, bucket: s3.bucket, batchSize: 12, concurrency: 16, channels: 1 });
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning);
    process.on('warning', onWarning);
    try {
      for (let i = 0; i < 3; i++) expect((await loader.next()).images).toHaveLength(12);
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', onWarning);
      await loader.close();
    }
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message)).toEqual([]);
  });

  /** A client whose GETs of `failing` fail with a 503 `failures` times before reaching s3rver. */
  function flakyClient(failing: string, failures: number): { client: S3Client; gets: () => number } {
    let gets = 0;
    const client = {
      send: (command: { input?: { Key?: string } }, options?: unknown) => {
        if (command instanceof GetObjectCommand && command.input.Key === failing) {
          gets++;
          if (gets <= failures) {
            return Promise.reject(Object.assign(new Error('We encountered an internal error. Please try again.'), { name: 'InternalError', $metadata: { httpStatusCode: 503 } }));
          }
        }
        return (s3.client.send as (c: unknown, o?: unknown) => Promise<unknown>)(command, options);
      },
    } as unknown as S3Client;
    return { client, gets: () => gets };
  }

  function loaderOn(client: S3Client, retries: { key: string; attempt: number }[]): S3BatchLoader {
    const whole: ShardLease = { leaseId: 'e0-s0', epoch: 0, shard: 0, begin: 0, end: manifestBytes, cursor: 0, cursorWithin: 0, cursorConsumed: 0 };
    const reader = new LeaseReader({ s3: s3.client, bucket: s3.bucket, key: 'manifest.txt', firstLease: whole, acquireLease: () => Promise.reject(new Error('none')) });
    return new S3BatchLoader({
      reader,
      s3: client,
      bucket: s3.bucket,
      batchSize: 2,
      channels: 1,
      readRetries: 3,
      readBackoff: { baseMs: 5 },
      onReadRetry: (key, attempt) => retries.push({ key, attempt }),
    });
  }

  it('retries an image whose read fails (5xx) and trains on it once it reads', async () => {
    const flaky = flakyClient(lines[1]!.key, 2);
    const retries: { key: string; attempt: number }[] = [];
    const loader = loaderOn(flaky.client, retries);
    const batch = await loader.next();
    await loader.close();
    expect(batch.sampleIds).toEqual([lines[0]!.offset, lines[1]!.offset]);
    expect(batch.skipped).toEqual([]);
    expect(retries).toEqual([
      { key: lines[1]!.key, attempt: 1 },
      { key: lines[1]!.key, attempt: 2 },
    ]);
    expect(flaky.gets()).toBe(3);
  });

  it('fails the batch naming the object once the read tries are used up', async () => {
    const flaky = flakyClient(lines[1]!.key, 100);
    const loader = loaderOn(flaky.client, []);
    await expect(loader.next()).rejects.toThrow(
      new RegExp(`^S3 s3://${s3.bucket}/${lines[1]!.key.replace(/\./g, '\\.')}: InternalError: We encountered an internal error\\. Please try again\\. after 4 attempts$`),
    );
    await loader.close();
    // One try and three retries, each one request here (the SDK's own retries are the client's business).
    expect(flaky.gets()).toBe(4);
  });

  it('crops in its thread pool exactly what the step loop would crop, a bad image leaving its slot to the next sample', async () => {
    await using pool = new CropPool({ threads: 2 });
    const whole: ShardLease = { leaseId: 'e0-s0', epoch: 0, shard: 0, begin: 0, end: manifestBytes, cursor: 0, cursorWithin: 0, cursorConsumed: 0 };
    const reader = new LeaseReader({ s3: s3.client, bucket: s3.bucket, key: 'manifest.txt', firstLease: whole, acquireLease: () => Promise.reject(new Error('none')) });
    const seed = 5;
    const firstStep = 3;
    const batchOffset = 2;
    const loader = new S3BatchLoader({
      reader,
      s3: s3.client,
      bucket: s3.bucket,
      batchSize: 4,
      channels: 1,
      crops: { config: FMNIST_MULTI_CROP, seed, firstStep, batchOffset, pool },
    });
    try {
      for (let b = 0; b < 2; b++) {
        const batch = await loader.next();
        expect(batch.images).toEqual([]);
        expect(batch.cropStep).toBe(firstStep + b);
        // Batch 0 loses record 2 (missing), batch 1 record 5 (not an image, found in a
        // thread): the next record takes the slot, so the ids come in slot order.
        expect(batch.skipped.map((skipped) => skipped.sampleId)).toEqual([lines[b === 0 ? MISSING : CORRUPT]?.offset]);
        const slotOrder = b === 0 ? [0, 1, 3, 4] : [9, 6, 7, 8];
        expect(batch.sampleIds).toEqual(slotOrder.map((i) => lines[i]?.offset));
        // The reference: decode the same objects here and crop them as the step loop does.
        const decoded = await Promise.all(
          batch.sampleIds.map(async (id) => {
            const key = lines.find((line) => line.offset === id)?.key as string;
            const body = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
            return decodeImage(await (body.Body as { transformToByteArray: () => Promise<Uint8Array> }).transformToByteArray(), { channels: 1 });
          }),
        );
        const expected = buildCropBatch(decoded, FMNIST_MULTI_CROP, new Rng(seed).fork(firstStep + b + 1), batchOffset);
        expect(Buffer.from(batch.crops?.global.buffer as ArrayBufferLike).equals(Buffer.from(expected.global.buffer)), `batch ${b} global`).toBe(true);
        expect(Buffer.from(batch.crops?.local.buffer as ArrayBufferLike).equals(Buffer.from(expected.local.buffer)), `batch ${b} local`).toBe(true);
      }
    } finally {
      await loader.close();
    }
  });

  it('lets the pool threads GET the images themselves (same crops, missing objects skipped)', async () => {
    await using pool = new CropPool({ threads: 2 });
    const whole: ShardLease = { leaseId: 'e0-s0', epoch: 0, shard: 0, begin: 0, end: manifestBytes, cursor: 0, cursorWithin: 0, cursorConsumed: 0 };
    const reader = new LeaseReader({ s3: s3.client, bucket: s3.bucket, key: 'manifest.txt', firstLease: whole, acquireLease: () => Promise.reject(new Error('none')) });
    const s3Config = resolveS3Config({ endpoint: s3.endpoint, forcePathStyle: true }, { AWS_REGION: S3RVER_REGION, AWS_ACCESS_KEY_ID: S3RVER_CREDENTIAL, AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIAL });
    const loader = new S3BatchLoader({
      reader,
      s3: s3.client,
      bucket: s3.bucket,
      batchSize: 4,
      channels: 1,
      crops: { config: FMNIST_MULTI_CROP, seed: 1, firstStep: 0, batchOffset: 0, pool, s3: s3Config },
    });
    try {
      const batch = await loader.next();
      // Record 2 is missing: found in a thread, its slot goes to record 4.
      expect(batch.skipped).toEqual([{ sampleId: lines[MISSING]?.offset, key: lines[MISSING]?.key, reason: 'missing' }]);
      expect(batch.sampleIds).toEqual([0, 1, 4, 3].map((i) => lines[i]?.offset));
      const decoded = await Promise.all(
        [0, 1, 4, 3].map(async (i) => {
          const body = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: lines[i]?.key }));
          return decodeImage(await (body.Body as { transformToByteArray: () => Promise<Uint8Array> }).transformToByteArray(), { channels: 1 });
        }),
      );
      const expected = buildCropBatch(decoded, FMNIST_MULTI_CROP, new Rng(1).fork(1), 0);
      expect(Buffer.from(batch.crops?.global.buffer as ArrayBufferLike).equals(Buffer.from(expected.global.buffer))).toBe(true);
      expect(Buffer.from(batch.crops?.local.buffer as ArrayBufferLike).equals(Buffer.from(expected.local.buffer))).toBe(true);
    } finally {
      await loader.close();
    }
  });

  it('prefetches the next batch while the current one is used', async () => {
    const samples = randomImages(6, 1).map((image, i) => ({ sampleId: i * 10, image }));
    let calls = 0;
    const memory = new MemoryBatchSource(samples, 2);
    const counting = {
      next: () => {
        calls++;
        return memory.next();
      },
      close: () => memory.close(),
    };
    const source = new PrefetchingBatchSource(counting, Number.POSITIVE_INFINITY, { maxBatches: 1 });
    const a = await source.next();
    await new Promise((resolve) => setImmediate(resolve));
    // The second batch was requested before anyone asked for it.
    expect(calls).toBe(2);
    const b = await source.next();
    expect([...a.sampleIds, ...b.sampleIds]).toEqual([0, 10, 20, 30]);
    await source.close();
  });

  it('loads no batch past the last step', async () => {
    const samples = randomImages(6, 1).map((image, i) => ({ sampleId: i, image }));
    const memory = new MemoryBatchSource(samples, 1);
    let calls = 0;
    const source = new PrefetchingBatchSource({ next: () => (calls++, memory.next()), close: () => memory.close() }, 2);
    await source.next();
    await source.next();
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls).toBe(2);
    await expect(source.next()).rejects.toThrow(/no batch left/);
  });
});
