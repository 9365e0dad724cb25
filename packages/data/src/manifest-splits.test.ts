import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { parseManifestRecord } from './manifest-record.ts';
import {
  ManifestFormatError,
  ManifestReadError,
  manifestSplit,
  planManifestObjectSplits,
  planManifestSplits,
  readSplitRecordBatches,
  readSplitRecords,
} from './manifest-splits.ts';
import { createS3Client, resolveS3Config } from './s3-config.ts';
import type { ManifestRecord, ManifestSplit, ReadSplitOptions } from './manifest-splits.ts';
import { memoryS3 } from './testing/memory-s3.ts';
import { startTestS3 } from './testing/s3.ts';
import type { TestS3 } from './testing/s3.ts';

const encoder = new TextEncoder();

/** The records of a whole manifest, computed the obvious way: split on '\n'. */
function expectedRecords(bytes: Uint8Array): ManifestRecord[] {
  const records: ManifestRecord[] = [];
  let start = 0;
  const decoder = new TextDecoder();
  for (let i = 0; i <= bytes.byteLength; i++) {
    if (i === bytes.byteLength || bytes[i] === 0x0a) {
      if (i === bytes.byteLength && start === i) break;
      let line = bytes.subarray(start, i);
      if (line.byteLength > 0 && line[line.byteLength - 1] === 0x0d) line = line.subarray(0, -1);
      // Decoding drops a leading BOM: a BOM-only line is as empty as an empty one.
      const text = decoder.decode(line);
      if (text !== '') records.push({ offset: start, text });
      start = i + 1;
    }
  }
  return records;
}

/** Deterministic PRNG (mulberry32) so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A manifest with random line lengths, empty lines, CRLF, multi-byte UTF-8, TAB labels. */
function randomManifest(seed: number, lines: number, maxLineBytes: number): Uint8Array {
  const random = rng(seed);
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789/_-.é漢';
  let text = '';
  for (let i = 0; i < lines; i++) {
    const kind = random();
    if (kind < 0.1) {
      text += random() < 0.5 ? '\n' : '\r\n';
      continue;
    }
    const length = 1 + Math.floor(random() ** 3 * maxLineBytes);
    let line = '';
    for (let j = 0; j < length; j++) line += alphabet[Math.floor(random() * alphabet.length)];
    if (random() < 0.3) line += `\t${Math.floor(random() * 10)}`;
    text += line + (random() < 0.2 ? '\r\n' : '\n');
  }
  if (random() < 0.5) text = text.replace(/\r?\n$/, '');
  return encoder.encode(text);
}

async function readAllSplits(
  client: Parameters<typeof readSplitRecords>[0],
  bucket: string,
  key: string,
  splits: readonly ManifestSplit[],
  blockBytes: number,
  options: ReadSplitOptions = {},
): Promise<ManifestRecord[][]> {
  const out: ManifestRecord[][] = [];
  for (const split of splits) {
    const records: ManifestRecord[] = [];
    for await (const record of readSplitRecords(client, bucket, key, split, { blockBytes, ...options })) records.push(record);
    out.push(records);
  }
  return out;
}

/** The arrays readSplitRecordBatches yields for each split. */
async function readAllBatches(
  client: Parameters<typeof readSplitRecordBatches>[0],
  key: string,
  splits: readonly ManifestSplit[],
  options: ReadSplitOptions,
): Promise<ManifestRecord[][][]> {
  const out: ManifestRecord[][][] = [];
  for (const split of splits) {
    const batches: ManifestRecord[][] = [];
    for await (const batch of readSplitRecordBatches(client, 'b', key, split, options)) batches.push(batch);
    out.push(batches);
  }
  return out;
}

describe('planManifestSplits', () => {
  it('tiles [0, size) with near-equal contiguous splits', () => {
    for (const sizeBytes of [0, 1, 2, 7, 100, 1023, 2 ** 40 + 3]) {
      for (const splitCount of [1, 2, 3, 7, 64, 1000]) {
        const splits = planManifestSplits({ sizeBytes, splitCount });
        expect(splits).toHaveLength(splitCount);
        let at = 0;
        const bad = splits.filter((split, i) => {
          const length = split.end - split.start;
          const ok = split.index === i && split.start === at && length >= Math.floor(sizeBytes / splitCount) && length <= Math.ceil(sizeBytes / splitCount);
          at = split.end;
          return !ok;
        });
        expect(bad).toEqual([]);
        expect(at).toBe(sizeBytes);
      }
    }
  });

  it('derives the count from a target size and stays exact for huge objects', () => {
    expect(planManifestSplits({ sizeBytes: 0, targetSplitBytes: 10 })).toEqual([{ index: 0, start: 0, end: 0 }]);
    expect(planManifestSplits({ sizeBytes: 25, targetSplitBytes: 10 }).map((s) => [s.start, s.end])).toEqual([
      [0, 9],
      [9, 17],
      [17, 25],
    ]);
    const size = Number.MAX_SAFE_INTEGER;
    const last = manifestSplit(size, 1_000_003, 1_000_002);
    expect(last.end).toBe(size);
  });

  it('rejects bad options naming the field', () => {
    expect(() => planManifestSplits({ sizeBytes: -1, splitCount: 1 })).toThrow(/sizeBytes/);
    expect(() => planManifestSplits({ sizeBytes: 10, splitCount: 0 })).toThrow(/splitCount/);
    expect(() => planManifestSplits({ sizeBytes: 10, targetSplitBytes: 0.5 })).toThrow(/targetSplitBytes/);
    expect(() => planManifestSplits({ sizeBytes: 2 ** 50, targetSplitBytes: 1 })).toThrow(/targetSplitBytes/);
  });
});

describe('readSplitRecords (in-memory S3, exhaustive cuts)', () => {
  const handmade: Record<string, string> = {
    empty: '',
    oneByte: 'a',
    oneNewline: '\n',
    crlfOnly: '\r\n\r\n',
    noTrailingNewline: 'a\nbb\nccc',
    trailingNewline: 'a\nbb\nccc\n',
    emptyLines: '\n\na\n\n\nb\n\n',
    crlf: 'k1\r\nk2\t3\r\n\r\nk3\r\n',
    bareCarriageReturn: 'a\rb\n\r\nc\r',
    utf8: 'é\n漢字/ü.png\t7\n\u{1f600}\n',
    longLine: `${'x'.repeat(50)}\ny\n${'z'.repeat(37)}`,
    byteOrderMarks: '\uFEFFa\n\uFEFF\nb\uFEFF\r\n\uFEFFc',
    mixed: 'ascii/1\tx\r\nü/2\r\nascii/3\n\n漢/4\t5\nascii/5',
  };

  it('every cut of hand-made manifests yields every record exactly once, in order', async () => {
    for (const [name, text] of Object.entries(handmade)) {
      const bytes = encoder.encode(text);
      const { client } = memoryS3(new Map([['m', bytes]]), 3);
      const expected = expectedRecords(bytes);
      for (let splitCount = 1; splitCount <= bytes.byteLength + 2; splitCount++) {
        for (const blockBytes of [1, 2, 5, 64]) {
          const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount });
          // Alternately with the object's size known from planning (the first GET may then
          // reach past the split's end).
          const sized = (splitCount + blockBytes) % 2 === 0 ? { objectSizeBytes: bytes.byteLength } : {};
          const perSplit = await readAllSplits(client, 'b', 'm', splits, blockBytes, sized);
          expect(perSplit.flat(), `${name} splits=${splitCount} block=${blockBytes} sized=${'objectSizeBytes' in sized}`).toEqual(expected);
          // Each record is owned by the split its first byte falls in.
          for (const [i, records] of perSplit.entries()) {
            for (const record of records) {
              expect(record.offset).toBeGreaterThanOrEqual(splits[i]!.start);
              expect(record.offset).toBeLessThan(splits[i]!.end);
            }
          }
        }
      }
    }
  });

  it('random manifests with lines longer than a block, every split count up to more than the line count', async () => {
    for (let seed = 1; seed <= 8; seed++) {
      const bytes = randomManifest(seed, 30 + seed * 3, 60);
      const { client } = memoryS3(new Map([['m', bytes]]), 7);
      const expected = expectedRecords(bytes);
      expect(expected.length).toBeGreaterThan(20);
      for (let splitCount = 1; splitCount <= 80; splitCount++) {
        const blockBytes = [3, 16, 40, 4096][(seed + splitCount) % 4]!;
        const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount });
        const sized = splitCount % 2 === 0 ? { objectSizeBytes: bytes.byteLength } : {};
        const records = (await readAllSplits(client, 'b', 'm', splits, blockBytes, sized)).flat();
        expect(records, `seed=${seed} splits=${splitCount} block=${blockBytes}`).toEqual(expected);
      }
    }
  });

  it('a split reads little past its end and no GET exceeds the block size', async () => {
    const bytes = randomManifest(99, 2000, 80);
    const { client, requests } = memoryS3(new Map([['m', bytes]]), 1024);
    const blockBytes = 256;
    const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount: 10 });
    const records = (await readAllSplits(client, 'b', 'm', splits, blockBytes)).flat();
    expect(records).toEqual(expectedRecords(bytes));
    const longestLine = Math.max(...expectedRecords(bytes).map((r) => encoder.encode(r.text).byteLength + 2));
    for (const request of requests) {
      const [start, end] = request.range!;
      expect(end - start).toBeLessThanOrEqual(blockBytes);
    }
    const bytesRead = requests.reduce((sum, r) => sum + r.range![1] - r.range![0], 0);
    // Each split re-reads one byte before its start, and after its end only the doubling
    // tail reads (the first is min(4 KiB, blockBytes)) that finish its last record.
    expect(bytesRead).toBeLessThanOrEqual(bytes.byteLength + splits.length * (1 + 2 * Math.max(blockBytes, longestLine)));
  });
});

/** memoryS3, except that GETs from the `stallFrom`-th on never answer until aborted. */
function stallingS3(objects: ReadonlyMap<string, Uint8Array>, stallFrom: number): { client: S3Client; signals: (AbortSignal | undefined)[] } {
  const inner = memoryS3(objects, 1 << 16);
  const signals: (AbortSignal | undefined)[] = [];
  let gets = 0;
  const send = (command: unknown, options?: { abortSignal?: AbortSignal }): Promise<unknown> => {
    if (command instanceof GetObjectCommand && ++gets >= stallFrom) {
      const signal = options?.abortSignal;
      signals.push(signal);
      return new Promise((_, reject) => {
        signal?.addEventListener('abort', () => reject(Object.assign(new Error('Request aborted'), { name: 'AbortError' })), { once: true });
      });
    }
    return inner.client.send(command as GetObjectCommand);
  };
  return { client: { send } as unknown as S3Client, signals };
}

describe('readSplitRecordBatches', () => {
  it('decodes bytes >= 0x80 (valid, invalid, truncated UTF-8, BOMs) exactly as each line decoded alone, for every cut', async () => {
    const bytes = Uint8Array.from([
      0x61, 0xff, 0x0a, // invalid byte
      0xe6, 0xbc, 0x0a, // truncated sequence right before '\n'
      0x62, 0x0d, 0x0a,
      0xc3, 0xa9, 0x0d, 0x0a, // é CRLF
      0xef, 0xbb, 0xbf, 0x63, 0x0a, // BOM + c
      0x0d, 0x0a,
      0x64, 0xe6, 0xbc, 0xa2, 0x09, 0x31, // d漢<TAB>1, no final newline
    ]);
    const { client } = memoryS3(new Map([['m', bytes]]), 2);
    const expected = expectedRecords(bytes);
    expect(expected.map((r) => r.text)).toEqual(['a\ufffd', '\ufffd', 'b', 'é', 'c', 'd漢\t1']);
    for (let splitCount = 1; splitCount <= bytes.byteLength + 1; splitCount++) {
      for (const blockBytes of [1, 3, 7, 64]) {
        const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount });
        const batches = await readAllBatches(client, 'm', splits, { blockBytes, ...(splitCount % 2 === 0 && { objectSizeBytes: bytes.byteLength }) });
        expect(batches.flat(2), `splits=${splitCount} block=${blockBytes}`).toEqual(expected);
      }
    }
  });

  it('yields non-empty arrays of at most 4096 records, never more than one GET of records per array', async () => {
    const lines = Array.from({ length: 20_000 }, (_, i) => (i % 7 === 0 ? '' : `k/${i}${i % 5 === 0 ? '\r' : ''}`));
    const bytes = encoder.encode(`${lines.join('\n')}\n`);
    const expected = expectedRecords(bytes);
    const { client } = memoryS3(new Map([['m', bytes]]), 1 << 16);
    const whole: ManifestSplit = { index: 0, start: 0, end: bytes.byteLength };
    // One block: the records of one GET, cut into arrays of 4096.
    const [oneBlock] = await readAllBatches(client, 'm', [whole], { blockBytes: 1 << 20 });
    expect(oneBlock!.map((batch) => batch.length)).toEqual([4096, 4096, 4096, 4096, expected.length - 4 * 4096]);
    expect(oneBlock!.flat()).toEqual(expected);
    // Many splits and small blocks: arrays never empty, never longer than 4096.
    for (const [splitCount, blockBytes] of [[1, 4096], [7, 1000], [50, 333]] as const) {
      const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount });
      const batches = (await readAllBatches(client, 'm', splits, { blockBytes })).flat();
      expect(batches.every((batch) => batch.length >= 1 && batch.length <= 4096)).toBe(true);
      expect(batches.flat()).toEqual(expected);
      // A split of blockBytes-sized GETs yields at most one partial array per GET.
      expect(batches.length).toBeLessThanOrEqual(Math.ceil(bytes.byteLength / blockBytes) + 2 * splitCount);
    }
  });

  it('fetches the next block while one is consumed, and only blocks the split needs', async () => {
    const bytes = randomManifest(5, 400, 30);
    const { client, requests } = memoryS3(new Map([['m', bytes]]), 1 << 16);
    const blockBytes = 256;
    const records = readSplitRecordBatches(client, 'b', 'm', { index: 0, start: 0, end: bytes.byteLength }, { blockBytes });
    const first = await records.next();
    expect(first.done).toBe(false);
    // The first block is being consumed; the second is already on its way.
    expect(requests.map((r) => r.range)).toEqual([
      [0, blockBytes],
      [blockBytes, 2 * blockBytes],
    ]);
    const rest: ManifestRecord[] = [];
    for await (const batch of records) rest.push(...batch);
    expect([...first.value!, ...rest]).toEqual(expectedRecords(bytes));
    // A split over the whole object: exactly its blocks, each read once, in order.
    const blocks = Math.ceil(bytes.byteLength / blockBytes);
    expect(requests.map((r) => r.range)).toEqual(Array.from({ length: blocks }, (_, i) => [i * blockBytes, Math.min((i + 1) * blockBytes, bytes.byteLength)]));

    // A split whose last record ends exactly at its end needs no GET past the one that
    // reaches its end (which, the size being known by then, takes a few bytes more).
    const exact = encoder.encode('aaaa\nbbbb\ncccc\n');
    const small = memoryS3(new Map([['m', exact]]));
    const owned = await readAllSplits(small.client, 'b', 'm', [{ index: 0, start: 0, end: 10 }], 4);
    expect(owned.flat().map((r) => r.text)).toEqual(['aaaa', 'bbbb']);
    expect(small.requests.map((r) => r.range)).toEqual([[0, 4], [4, 8], [8, 12]]);
    small.requests.length = 0;
    await readAllSplits(small.client, 'b', 'm', [{ index: 0, start: 0, end: 10 }], 64);
    expect(small.requests.map((r) => r.range)).toEqual([[0, 10]]);
  });

  it('with the object size known, a split of one block takes one GET instead of two', async () => {
    const bytes = randomManifest(11, 300, 40);
    const splits = planManifestSplits({ sizeBytes: bytes.byteLength, splitCount: 5 });
    const expected = expectedRecords(bytes);
    const gets: Record<string, number> = {};
    for (const sized of [false, true]) {
      const { client, requests } = memoryS3(new Map([['m', bytes]]), 1 << 16);
      const records = await readAllSplits(client, 'b', 'm', splits, 1 << 20, sized ? { objectSizeBytes: bytes.byteLength } : {});
      expect(records.flat()).toEqual(expected);
      gets[String(sized)] = requests.length;
    }
    // Unknown size: the split's range, then a small read to finish its last record (the
    // last split ends at the object's end and needs none).
    expect(gets).toEqual({ false: 2 * splits.length - 1, true: splits.length });
  });

  it('rejects an objectSizeBytes below the split end or unlike the object', async () => {
    const bytes = encoder.encode('a\nb\nc\n');
    const { client } = memoryS3(new Map([['m', bytes]]));
    const read = (split: ManifestSplit, objectSizeBytes: number): Promise<ManifestRecord[][][]> => readAllBatches(client, 'm', [split], { objectSizeBytes });
    await expect(read({ index: 0, start: 0, end: 6 }, 5)).rejects.toThrow(RangeError);
    await expect(read({ index: 0, start: 0, end: 2 }, 4)).rejects.toThrow(ManifestFormatError);
    await expect(read({ index: 0, start: 0, end: 2 }, 4)).rejects.toThrow(/is 6 bytes, not the 4 bytes it was planned with/);
  });

  it('stopping early cancels the GET in flight; aborting the signal fails the read', async () => {
    const bytes = randomManifest(3, 200, 30);
    const whole: ManifestSplit = { index: 0, start: 0, end: bytes.byteLength };
    const stalling = stallingS3(new Map([['m', bytes]]), 2);
    for await (const batch of readSplitRecordBatches(stalling.client, 'b', 'm', whole, { blockBytes: 256 })) {
      expect(batch.length).toBeGreaterThan(0);
      break;
    }
    expect(stalling.signals).toHaveLength(1);
    expect(stalling.signals[0]?.aborted).toBe(true);

    const aborting = stallingS3(new Map([['m', bytes]]), 2);
    const controller = new AbortController();
    const records = readSplitRecordBatches(aborting.client, 'b', 'm', whole, { blockBytes: 256, signal: controller.signal });
    expect((await records.next()).done).toBe(false);
    controller.abort();
    await expect(records.next()).rejects.toThrow(/aborted/);
    expect(aborting.signals[0]?.aborted).toBe(true);
  });
});

describe('readSplitRecords failures', () => {
  it('rejects a record longer than maxRecordBytes and an object shorter than the split', async () => {
    const bytes = encoder.encode(`short\n${'x'.repeat(100)}\nend\n`);
    const { client } = memoryS3(new Map([['m', bytes]]));
    const split = { index: 0, start: 0, end: bytes.byteLength };
    const read = async (s: ManifestSplit, options: Parameters<typeof readSplitRecords>[4]): Promise<string[]> => {
      const texts: string[] = [];
      for await (const record of readSplitRecords(client, 'b', 'm', s, options)) texts.push(record.text);
      return texts;
    };
    await expect(read(split, { blockBytes: 16, maxRecordBytes: 64 })).rejects.toThrow(/record at byte 6 is longer than maxRecordBytes/);
    expect(await read(split, { blockBytes: 16, maxRecordBytes: 100 })).toEqual(['short', 'x'.repeat(100), 'end']);
    await expect(read({ index: 3, start: 50, end: bytes.byteLength + 10 }, { blockBytes: 16 })).rejects.toThrow(/shorter than split 3/);
    // Inside one block: the records before the overlong one arrive first, then the error.
    const seen: string[] = [];
    const all = async (): Promise<void> => {
      for await (const record of readSplitRecords(client, 'b', 'm', split, { blockBytes: 4096, maxRecordBytes: 64 })) seen.push(record.text);
    };
    await expect(all()).rejects.toThrow(/record at byte 6 is longer than maxRecordBytes \(64\)/);
    expect(seen).toEqual(['short']);
    await expect(read(split, { blockBytes: 0 })).rejects.toThrow(/blockBytes/);
  });

  it('gives up on an unreachable S3 after its retries with a ManifestReadError naming the object and the attempts', async () => {
    // A port nobody listens on: every GET fails with ECONNREFUSED (retryable).
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const client = createS3Client(resolveS3Config({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1, credentials: { accessKeyId: 'k', secretAccessKey: 's' } }, {}));
    try {
      const records = readSplitRecords(client, 'b', 'manifest.txt', { index: 0, start: 0, end: 100 }, { retries: 2 });
      const error = await records.next().then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(ManifestReadError);
      expect((error as Error).message).toMatch(/^S3 s3:\/\/b\/manifest\.txt \(manifest bytes 0-\d+\): .*ECONNREFUSED.* after 3 attempts$/);
    } finally {
      client.destroy();
    }
  });
});

describe('readSplitRecords against s3rver', () => {
  let s3: TestS3;
  beforeAll(async () => {
    s3 = await startTestS3();
  });
  afterAll(async () => {
    await s3.close();
  });

  async function put(key: string, body: Uint8Array): Promise<void> {
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
  }

  it('plans from one HeadObject and reads every record exactly once for many split counts', async () => {
    const manifests: [string, Uint8Array][] = [
      ['empty.txt', new Uint8Array(0)],
      ['one-byte.txt', encoder.encode('k')],
      ['crlf.txt', encoder.encode('a/1.png\t0\r\n\r\nb/2.png\t1\r\nc/3.png')],
      ['random.txt', randomManifest(7, 300, 120)],
    ];
    const requests: { command: string; range?: string }[] = [];
    s3.client.middlewareStack.add(
      (next, context) => (args) => {
        const input = args.input as { Range?: string };
        requests.push({ command: String(context.commandName), ...(input.Range !== undefined && { range: input.Range }) });
        return next(args);
      },
      { step: 'initialize', name: 'countRequests' },
    );
    try {
      for (const [key, bytes] of manifests) {
        await put(key, bytes);
        const expected = expectedRecords(bytes);
        for (const splitCount of [1, 2, 3, 7, 40]) {
          requests.length = 0;
          const plan = await planManifestObjectSplits(s3.client, s3.bucket, key, { splitCount });
          expect(requests).toEqual([{ command: 'HeadObjectCommand' }]);
          expect(plan.sizeBytes).toBe(bytes.byteLength);
          const blockBytes = splitCount % 2 === 0 ? 256 : 4096;
          const records = (await readAllSplits(s3.client, s3.bucket, key, plan.splits, blockBytes)).flat();
          expect(records, `${key} splits=${splitCount}`).toEqual(expected);
          expect(requests.every((r) => r.command === 'HeadObjectCommand' || r.range !== undefined)).toBe(true);
        }
      }
    } finally {
      s3.client.middlewareStack.remove('countRequests');
    }
  });

  it('streams a 20 MB manifest in 1 MiB ranged GETs', async () => {
    // ~90 k ASCII lines of 20–420 bytes (building 20 MB of short lines is slow on a busy core).
    const pads = Array.from({ length: 397 }, (_, n) => 'p'.repeat(n));
    const lines: string[] = [];
    let size = 0;
    for (let i = 0; size < 20_000_000; i++) {
      const line = `images/${i}/${pads[i % 397]}.jpg\t${i % 1000}`;
      lines.push(line);
      size += line.length + 1;
    }
    const bytes = Buffer.from(`${lines.join('\n')}\n`, 'latin1');
    await put('big.txt', bytes);
    const ranges: string[] = [];
    s3.client.middlewareStack.add(
      (next) => (args) => {
        const range = (args.input as { Range?: string }).Range;
        if (range !== undefined) ranges.push(range);
        return next(args);
      },
      { step: 'initialize', name: 'recordRanges' },
    );
    try {
      const blockBytes = 1024 * 1024;
      const plan = await planManifestObjectSplits(s3.client, s3.bucket, 'big.txt', { splitCount: 3 });
      let count = 0;
      let expectedOffset = 0;
      let wrongOffsets = 0;
      for (const split of plan.splits) {
        for await (const record of readSplitRecords(s3.client, s3.bucket, 'big.txt', split, { blockBytes, etag: plan.etag! })) {
          if (record.offset !== expectedOffset || record.text !== lines[count]) wrongOffsets++;
          expectedOffset += lines[count]!.length + 1;
          if (count % 20_000 === 0) {
            expect(parseManifestRecord(record)).toEqual({
              offset: record.offset,
              key: lines[count]!.split('\t')[0],
              label: String(count % 1000),
            });
          }
          count++;
        }
      }
      expect(count).toBe(lines.length);
      expect(wrongOffsets).toBe(0);
      const sizes = ranges.map((range) => {
        const [start, end] = range.replace('bytes=', '').split('-').map(Number);
        return end! - start! + 1;
      });
      expect(Math.max(...sizes)).toBeLessThanOrEqual(blockBytes);
      // 20 MB in 1 MiB blocks: 20 full blocks, plus per split one partial block at its end
      // and a small tail read to finish its last record.
      expect(sizes.length).toBeLessThanOrEqual(Math.ceil(bytes.byteLength / blockBytes) + 2 * plan.splits.length);
    } finally {
      s3.client.middlewareStack.remove('recordRanges');
    }
  });
});

describe('parseManifestRecord', () => {
  it('parses key and optional label, rejects malformed lines', () => {
    expect(parseManifestRecord({ offset: 5, text: 'a/b.png' })).toEqual({ offset: 5, key: 'a/b.png' });
    expect(parseManifestRecord({ offset: 0, text: 'a b.png\t3' })).toEqual({ offset: 0, key: 'a b.png', label: '3' });
    expect(() => parseManifestRecord({ offset: 9, text: '\t3' })).toThrow(/byte 9.*key is empty/);
    expect(() => parseManifestRecord({ offset: 9, text: 'k\t' })).toThrow(/empty label/);
    expect(() => parseManifestRecord({ offset: 9, text: 'k\t1\t2' })).toThrow(/more than one TAB/);
  });
});
