import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { bytesTarSource, encodeTar, readTarMembers, TarFormatError } from './tar-format.ts';
import type { TarMemberInput } from './tar-format.ts';
import { memoryS3 } from './testing/memory-s3.ts';
import { startTestS3 } from './testing/s3.ts';
import type { TestS3 } from './testing/s3.ts';
import { readWebDatasetSamples, TarReadError, webDatasetSampleId } from './webdataset.ts';
import type { ReadWebDatasetOptions, WebDatasetSample } from './webdataset.ts';

const encoder = new TextEncoder();
const empty = new Uint8Array(0);

function bytesOf(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 13 + seed * 101) & 0xff);
}

const LONG_NAME = `train/${'n'.repeat(150)}`;

/** A shard with every case a reader meets: labels from cls and json, no image, long names, skipped members. */
const SHARD_MEMBERS: TarMemberInput[] = [
  { name: 'train/', bytes: empty, type: 'directory' },
  { name: 'train/s0.jpg', bytes: bytesOf(700, 0) },
  { name: 'train/s0.cls', bytes: encoder.encode('3\n') },
  { name: 'train/s1.png', bytes: bytesOf(1500, 1) },
  { name: 'train/s1.json', bytes: encoder.encode('{"label": 7, "width": 1}') },
  { name: 'train/s2.cls', bytes: encoder.encode('5') },
  { name: `${LONG_NAME}.jpg`, bytes: bytesOf(300, 3) },
  { name: `${LONG_NAME}.cls`, bytes: encoder.encode(' 9 ') },
  { name: 'train/s4.input.JPG', bytes: bytesOf(2000, 4) },
  { name: 'train/s4.seg.png', bytes: bytesOf(100, 44) },
  { name: 'train/s4.npy', bytes: bytesOf(5000, 444) },
  { name: 'train/s4.json', bytes: encoder.encode('{not json') },
  { name: 'train/s4.cls', bytes: encoder.encode('cat') },
  { name: 'README', bytes: encoder.encode('members without a dot belong to no sample') },
  { name: 'train/s5.webp', bytes: bytesOf(513, 5) },
  { name: 'train/s5.json', bytes: encoder.encode('{"label": "dog"}') },
  { name: 'train/s5.cls', bytes: encoder.encode('  ') },
];
const SHARD = encodeTar(SHARD_MEMBERS, { longNames: 'pax' });

/** Header offset of each member (its extension headers included), from the tar parser. */
async function memberOffsets(tar: Uint8Array): Promise<Map<string, { headerOffset: number; dataOffset: number; nextOffset: number }>> {
  const offsets = new Map<string, { headerOffset: number; dataOffset: number; nextOffset: number }>();
  for await (const entry of readTarMembers(bytesTarSource(tar))) offsets.set(entry.path, entry);
  return offsets;
}

/** The samples SHARD holds, with offsets from the tar parser: samples tile the archive. */
async function expectedShardSamples(): Promise<WebDatasetSample[]> {
  const at = await memberOffsets(SHARD);
  const starts = [0, ...['train/s1.png', 'train/s2.cls', `${LONG_NAME}.jpg`, 'train/s4.input.JPG', 'README'].map((path) => at.get(path)!.headerOffset)];
  const next = [...starts.slice(1), SHARD.byteLength - 1024];
  const body: Omit<WebDatasetSample, 'tarOffset' | 'nextTarOffset'>[] = [
    { name: 'train/s0', image: { ext: 'jpg', bytes: bytesOf(700, 0) }, label: '3' },
    { name: 'train/s1', image: { ext: 'png', bytes: bytesOf(1500, 1) }, label: '7' },
    { name: 'train/s2', label: '5' },
    { name: LONG_NAME, image: { ext: 'jpg', bytes: bytesOf(300, 3) }, label: '9' },
    { name: 'train/s4', image: { ext: 'jpg', bytes: bytesOf(2000, 4) }, label: 'cat' },
    { name: 'train/s5', image: { ext: 'webp', bytes: bytesOf(513, 5) }, label: 'dog' },
  ];
  return body.map((sample, i) => ({ tarOffset: starts[i]!, nextTarOffset: next[i]!, ...sample }));
}

async function collect(
  client: S3Client,
  bucket: string,
  key: string,
  from: number,
  options: ReadWebDatasetOptions = {},
): Promise<{ samples: WebDatasetSample[]; error: unknown }> {
  const samples: WebDatasetSample[] = [];
  try {
    for await (const sample of readWebDatasetSamples(client, bucket, key, from, options)) samples.push(sample);
  } catch (error) {
    return { samples, error };
  }
  return { samples, error: undefined };
}

describe('readWebDatasetSamples (s3rver)', () => {
  let s3: TestS3;
  const put = (key: string, body: Uint8Array): Promise<unknown> => s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
  beforeAll(async () => {
    s3 = await startTestS3();
    await put('shard.tar', SHARD);
  });
  afterAll(async () => {
    await s3.close();
  });

  it('yields every sample with its image, label and offsets, samples tiling the archive', async () => {
    const expected = await expectedShardSamples();
    for (const options of [{}, { blockBytes: 700 }]) {
      const { samples, error } = await collect(s3.client, s3.bucket, 'shard.tar', 0, options);
      expect(error).toBeUndefined();
      expect(samples, JSON.stringify(options)).toEqual(expected);
    }
  });

  it('resumes from any sample offset with exactly the remaining samples', async () => {
    const expected = await expectedShardSamples();
    for (const [i, sample] of expected.entries()) {
      const { samples } = await collect(s3.client, s3.bucket, 'shard.tar', sample.tarOffset, { blockBytes: 1024 });
      expect(samples, `from sample ${i}`).toEqual(expected.slice(i));
    }
    expect((await collect(s3.client, s3.bucket, 'shard.tar', expected.at(-1)!.nextTarOffset)).samples).toEqual([]);
  });

  it('yields the complete samples of a truncated shard, then a TarFormatError naming the key and offset', async () => {
    const expected = await expectedShardSamples();
    const longImage = (await memberOffsets(SHARD)).get(`${LONG_NAME}.jpg`)!;
    // Cut inside the long-named sample's image: the sample before it is proven complete by the image's header.
    await put('cut.tar', SHARD.subarray(0, longImage.dataOffset + 100));
    const { samples, error } = await collect(s3.client, s3.bucket, 'cut.tar', 0, { blockBytes: 700 });
    expect(samples).toEqual(expected.slice(0, 3));
    expect(error).toBeInstanceOf(TarFormatError);
    expect(error).toMatchObject({ code: 'invalid_tar', offset: expected[3]!.tarOffset, archive: `s3://${s3.bucket}/cut.tar` });
    expect((error as Error).message).toContain(`s3://${s3.bucket}/cut.tar at byte ${expected[3]!.tarOffset}: the archive ends at byte ${longImage.dataOffset + 100}`);
  });

  it('stops at a corrupt header checksum after the samples proven complete', async () => {
    const expected = await expectedShardSamples();
    const s2 = (await memberOffsets(SHARD)).get('train/s2.cls')!;
    const corrupt = SHARD.slice();
    corrupt[s2.dataOffset - 512 + 10] = corrupt[s2.dataOffset - 512 + 10]! ^ 0x20;
    await put('corrupt.tar', corrupt);
    const { samples, error } = await collect(s3.client, s3.bucket, 'corrupt.tar', 0);
    // Sample 1 ends where sample 2's header is unreadable: whether more of sample 1 followed is unknown.
    expect(samples).toEqual(expected.slice(0, 1));
    expect(error).toMatchObject({ name: 'TarFormatError', offset: s2.headerOffset, message: expect.stringMatching(/checksum mismatch/) as unknown });
  });

  it('lets the missing-object error through unchanged', async () => {
    const { samples, error } = await collect(s3.client, s3.bucket, 'no-such.tar', 0);
    expect(samples).toEqual([]);
    expect(error).not.toBeInstanceOf(TarFormatError);
    expect(error).not.toBeInstanceOf(TarReadError);
    expect(error).toMatchObject({ $metadata: { httpStatusCode: 404 } });
  });

  it('fails on a member over maxMemberBytes after the samples before it, and on bad offsets', async () => {
    const expected = await expectedShardSamples();
    const big = await collect(s3.client, s3.bucket, 'shard.tar', 0, { maxMemberBytes: 1000 });
    expect(big.samples).toEqual(expected.slice(0, 1));
    expect(big.error).toMatchObject({ name: 'TarFormatError', offset: expected[1]!.tarOffset, message: expect.stringMatching(/1500 bytes, more than maxMemberBytes \(1000\)/) as unknown });
    // The 5000-byte .npy member is skipped, not kept, so it does not count.
    expect((await collect(s3.client, s3.bucket, 'shard.tar', 0, { maxMemberBytes: 2000 })).samples).toEqual(expected);

    expect((await collect(s3.client, s3.bucket, 'shard.tar', 100)).error).toBeInstanceOf(RangeError);
    const past = await collect(s3.client, s3.bucket, 'shard.tar', SHARD.byteLength + 512);
    expect(past.error).toMatchObject({ name: 'TarFormatError', message: expect.stringMatching(/past the end/) as unknown });
  });
});

describe('readWebDatasetSamples (in-memory S3)', () => {
  it('reads with tiny blocks in sequential GETs of at most blockBytes, never fetching skipped data past a block', async () => {
    const expected = await expectedShardSamples();
    const npy = (await memberOffsets(SHARD)).get('train/s4.npy')!;
    for (const blockBytes of [512, 700]) {
      const { client, requests } = memoryS3(new Map([['shard.tar', SHARD]]), 64);
      const { samples, error } = await collect(client, 'b', 'shard.tar', 0, { blockBytes });
      expect(error).toBeUndefined();
      expect(samples, `blockBytes ${blockBytes}`).toEqual(expected);
      expect(requests[0]).toEqual({ command: 'HeadObject', key: 'shard.tar' });
      const ranges = requests.slice(1).map((request) => request.range!);
      expect(requests.slice(1).every((request) => request.command === 'GetObject')).toBe(true);
      expect(ranges.length).toBeGreaterThan(20);
      for (const [i, [start, end]] of ranges.entries()) {
        expect(end - start).toBeLessThanOrEqual(blockBytes);
        if (i > 0) expect(start).toBeGreaterThanOrEqual(ranges[i - 1]![1]);
      }
      // The skipped .npy member's data: at most the rest of the block holding its header is fetched.
      const npyFetched = ranges.reduce((total, [start, end]) => total + Math.max(0, Math.min(end, npy.nextOffset) - Math.max(start, npy.dataOffset)), 0);
      expect(npyFetched).toBeLessThan(blockBytes);
    }
  });

  it('yields exactly the samples proven complete for every cut of a shard', async () => {
    // One member per sample and no extension headers, so completeness has a closed form:
    // sample i is yielded when the object ends at its end, or holds the next header whole.
    const tar = encodeTar(Array.from({ length: 8 }, (_, i) => ({ name: `s${i}.png`, bytes: bytesOf(100 + i * 150, i) })));
    const full = (await collect(memoryS3(new Map([['t', tar]]), 4096).client, 'b', 't', 0)).samples;
    expect(full).toHaveLength(8);
    const endMarker = tar.byteLength - 1024;
    const boundaries = new Set([...full.map((sample) => sample.tarOffset), endMarker]);
    const cuts = new Set<number>();
    for (let cut = 0; cut <= tar.byteLength; cut += 97) cuts.add(cut);
    for (let cut = 0; cut <= tar.byteLength; cut += 512) cuts.add(cut);
    for (const cut of cuts) {
      const { client } = memoryS3(new Map([['t', tar.subarray(0, cut)]]), 4096);
      const { samples, error } = await collect(client, 'b', 't', 0, { blockBytes: 700 });
      const expected = full.filter((sample) => sample.nextTarOffset === cut || sample.nextTarOffset + 512 <= cut);
      expect(samples, `cut ${cut}`).toEqual(expected);
      if (boundaries.has(cut) || cut >= endMarker + 512) {
        expect(error, `cut ${cut}`).toBeUndefined();
      } else {
        expect(error, `cut ${cut}`).toBeInstanceOf(TarFormatError);
        const { offset } = error as TarFormatError;
        expect(offset).toBeGreaterThanOrEqual(expected.at(-1)?.nextTarOffset ?? 0);
        expect(offset).toBeLessThan(cut);
      }
    }
  });

  it('pins GETs to the ETag, retries retryable failures and gives up with TarReadError after the retries', async () => {
    const expected = await expectedShardSamples();
    const { client: inner } = memoryS3(new Map([['shard.tar', SHARD]]), 4096);
    let failuresLeft = 0;
    const ifMatch = new Set<string | undefined>();
    const flaky = {
      send: (command: unknown, options?: unknown) => {
        if (command instanceof GetObjectCommand) {
          ifMatch.add(command.input.IfMatch);
          if (failuresLeft > 0) {
            failuresLeft--;
            return Promise.reject(Object.assign(new Error('service unavailable'), { name: 'ServiceUnavailable', $metadata: { httpStatusCode: 503 } }));
          }
        }
        return (inner.send as (c: unknown, o?: unknown) => Promise<unknown>)(command, options);
      },
    } as unknown as S3Client;
    failuresLeft = 2;
    expect((await collect(flaky, 'b', 'shard.tar', 0, { blockBytes: 4096, retries: 2 })).samples).toEqual(expected);
    // Every GET is pinned to the ETag HeadObject reported.
    expect(ifMatch).toEqual(new Set(['"memory"']));
    failuresLeft = 1;
    const { samples, error } = await collect(flaky, 'b', 'shard.tar', 0, { retries: 0 });
    expect(samples).toEqual([]);
    expect(error).toBeInstanceOf(TarReadError);
    expect(error).toMatchObject({ code: 'tar_unreadable', message: expect.stringMatching(/^S3 s3:\/\/b\/shard\.tar \(tar bytes 0-\d+\): service unavailable after 1 attempts/) as unknown });
  });
});

describe('webDatasetSampleId', () => {
  it('packs record offset and tar block into distinct safe integers', () => {
    expect(webDatasetSampleId(0, 0)).toBe(0);
    expect(webDatasetSampleId(0, 512)).toBe(1);
    expect(webDatasetSampleId(1, 0)).toBe(2 ** 24);
    expect(webDatasetSampleId(3, 1024)).toBe(3 * 2 ** 24 + 2);
    expect(webDatasetSampleId(2 ** 29 - 1, 2 ** 33 - 512)).toBe(Number.MAX_SAFE_INTEGER);
    // The last block of one record and the first of the next do not collide.
    expect(webDatasetSampleId(5, 2 ** 33 - 512) + 1).toBe(webDatasetSampleId(6, 0));
  });

  it('rejects offsets it cannot pack, saying why', () => {
    expect(() => webDatasetSampleId(2 ** 29, 0)).toThrow(/512 MiB/);
    expect(() => webDatasetSampleId(-1, 0)).toThrow(RangeError);
    expect(() => webDatasetSampleId(0, 2 ** 33)).toThrow(/8 GiB/);
    expect(() => webDatasetSampleId(0, 100)).toThrow(/multiple of 512/);
    expect(() => webDatasetSampleId(0.5, 0)).toThrow(RangeError);
  });
});
