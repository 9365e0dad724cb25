import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeTar, webDatasetSampleId } from '@dinofleet/data';
import { startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import type { DataCursor, ShardLease } from '@dinofleet/proto';
import { LeaseReader } from './lease-reader.ts';
import type { LeaseReaderOptions, LeaseSample } from './lease-reader.ts';

const LINES = 23;

function wholeLease(end: number, epoch = 0): ShardLease {
  return { leaseId: `e${epoch}-s0`, epoch, shard: 0, begin: 0, end, cursor: 0, cursorWithin: 0, cursorConsumed: 0 };
}

/** The lease as the coordinator hands it back after a commit that reported `cursor`. */
function resumedAt(lease: ShardLease, cursor: DataCursor): ShardLease {
  return { ...lease, cursor: cursor.position, cursorWithin: cursor.positionWithin, cursorConsumed: cursor.windowConsumed };
}

describe('LeaseReader', () => {
  let s3: TestS3;
  const offsets: number[] = [];
  let linesBytes = 0;
  let csvBytes = 0;
  let jsonlBytes = 0;
  let tarManifestBytes = 0;

  beforeAll(async () => {
    s3 = await startTestS3();
    let text = '';
    for (let i = 0; i < LINES; i++) {
      offsets.push(Buffer.byteLength(text));
      text += `img/${i}.png\t${i % 5}\n`;
    }
    linesBytes = Buffer.byteLength(text);
    const csv = `label,key,extra\n${Array.from({ length: 5 }, (_, i) => `${i},"img/${i},a.png",x`).join('\n')}\n`;
    csvBytes = Buffer.byteLength(csv);
    const jsonl = `${Array.from({ length: 4 }, (_, i) => JSON.stringify({ key: `img/${i}.png`, label: i })).join('\n')}\nnot json\n`;
    jsonlBytes = Buffer.byteLength(jsonl);
    // Three tars: 3 samples, a missing one, 4 samples (one without an image).
    const tar = (names: string[]): Uint8Array =>
      encodeTar(names.flatMap((name) => [{ name: `${name}.jpg`, bytes: new TextEncoder().encode(`jpeg of ${name}`) }, { name: `${name}.cls`, bytes: new TextEncoder().encode('7') }]));
    const first = tar(['a/0', 'a/1', 'a/2']);
    const third = encodeTar([
      ...['c/0', 'c/1', 'c/3'].flatMap((name) => [{ name: `${name}.png`, bytes: new TextEncoder().encode(name) }]),
      { name: 'c/2.txt', bytes: new TextEncoder().encode('caption only') },
    ]);
    const tarManifest = 'shards/a.tar\nshards/missing.tar\nshards/c.tar\n';
    tarManifestBytes = Buffer.byteLength(tarManifest);
    const put = (key: string, body: string | Uint8Array): Promise<unknown> => s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
    await Promise.all([put('lines.txt', text), put('manifest.csv', csv), put('manifest.jsonl', jsonl), put('tars.txt', tarManifest), put('shards/a.tar', first), put('shards/c.tar', third)]);
  });

  afterAll(() => s3?.close());

  function reader(key: string, lease: ShardLease, options: Partial<LeaseReaderOptions> = {}): LeaseReader {
    return new LeaseReader({ s3: s3.client, bucket: s3.bucket, key, firstLease: lease, acquireLease: () => Promise.reject(new Error('no more leases')), ...options });
  }

  async function readAll(r: LeaseReader, count: number): Promise<LeaseSample[]> {
    const out: LeaseSample[] = [];
    for (let i = 0; i < count; i++) out.push(await r.next());
    return out;
  }

  it('hands out each shuffle window as a seeded permutation of consecutive samples, every sample once', async () => {
    const a = await readAll(reader('lines.txt', wholeLease(linesBytes), { shuffleWindow: 5, seed: 3 }), LINES);
    const b = await readAll(reader('lines.txt', wholeLease(linesBytes), { shuffleWindow: 5, seed: 3 }), LINES);
    const ids = a.map((s) => s.id);
    expect(ids).toEqual(b.map((s) => s.id));
    expect([...ids].sort((x, y) => x - y)).toEqual(offsets);
    expect(ids).not.toEqual(offsets);
    for (let w = 0; w < LINES; w += 5) expect(new Set(ids.slice(w, w + 5))).toEqual(new Set(offsets.slice(w, w + 5)));
    const other = (await readAll(reader('lines.txt', wholeLease(linesBytes), { shuffleWindow: 5, seed: 4 }), LINES)).map((s) => s.id);
    expect(other).not.toEqual(ids);
    // Window 1 keeps manifest order.
    expect((await readAll(reader('lines.txt', wholeLease(linesBytes)), LINES)).map((s) => s.id)).toEqual(offsets);
  });

  it('resumes exactly from the cursor after any number of samples', async () => {
    const options = { shuffleWindow: 4, seed: 9 };
    const lease = wholeLease(linesBytes);
    const reference = (await readAll(reader('lines.txt', lease, options), LINES)).map((s) => s.id);
    for (let k = 0; k <= LINES; k++) {
      const first = reader('lines.txt', lease, options);
      const head = (await readAll(first, k)).map((s) => s.id);
      const [cursor] = await first.takeCursors();
      const tail: number[] = [];
      // Nothing read: nothing to report, the lease stays where it was.
      if (k === 0) expect(cursor).toBeUndefined();
      if (k < LINES) {
        expect(cursor?.exhausted ?? false).toBe(false);
        const second = reader('lines.txt', cursor === undefined ? lease : resumedAt(lease, cursor), options);
        tail.push(...(await readAll(second, LINES - k)).map((s) => s.id));
        // And nothing after it.
        await expect(second.next()).rejects.toThrow(/no more leases/);
      } else if (k > 0) {
        expect(cursor).toMatchObject({ exhausted: true, position: linesBytes });
      }
      expect([...head, ...tail], `resumed after ${k}`).toEqual(reference);
    }
  });

  it('reads CSV (header, quoted fields) and JSON lines, skipping invalid lines with a reason', async () => {
    const csv = await readAll(reader('manifest.csv', wholeLease(csvBytes), { format: 'csv' }), 5);
    expect(csv.map((s) => [s.key, s.label])).toEqual(Array.from({ length: 5 }, (_, i) => [`img/${i},a.png`, String(i)]));
    const jsonl = await readAll(reader('manifest.jsonl', wholeLease(jsonlBytes), { format: 'jsonl' }), 5);
    expect(jsonl.slice(0, 4).map((s) => [s.key, s.label])).toEqual(Array.from({ length: 4 }, (_, i) => [`img/${i}.png`, String(i)]));
    expect(jsonl[4]?.skip?.reason).toBe('invalid_record');
  });

  it('reads WebDataset tars with their bytes, skips a missing tar and image-less samples, and resumes inside a tar', async () => {
    const lease = wholeLease(tarManifestBytes);
    const all = await readAll(reader('tars.txt', lease, { format: 'webdataset' }), 8);
    expect(all.map((s) => s.key)).toEqual([
      'shards/a.tar#a/0',
      'shards/a.tar#a/1',
      'shards/a.tar#a/2',
      'shards/missing.tar#@0',
      'shards/c.tar#c/0',
      'shards/c.tar#c/1',
      'shards/c.tar#c/3',
      'shards/c.tar#c/2',
    ]);
    expect(new TextDecoder().decode(all[1]?.bytes)).toBe('jpeg of a/1');
    expect(all[1]?.label).toBe('7');
    expect(all[3]?.skip?.reason).toBe('missing');
    expect(all[7]?.skip?.reason).toBe('not_image');
    expect(all[0]?.id).toBe(webDatasetSampleId(0, 0));
    expect(new Set(all.map((s) => s.id)).size).toBe(8);

    // Shuffled and resumed after every prefix.
    const options = { format: 'webdataset' as const, shuffleWindow: 3, seed: 2 };
    const reference = (await readAll(reader('tars.txt', lease, options), 8)).map((s) => s.id);
    expect(new Set(reference)).toEqual(new Set(all.map((s) => s.id)));
    for (let k = 1; k < 8; k++) {
      const first = reader('tars.txt', lease, options);
      const head = (await readAll(first, k)).map((s) => s.id);
      const [cursor] = await first.takeCursors();
      const tail = (await readAll(reader('tars.txt', resumedAt(lease, cursor as DataCursor), options), 8 - k)).map((s) => s.id);
      expect([...head, ...tail], `resumed after ${k}`).toEqual(reference);
    }
  });

  it('refuses a cursor that consumed more than its window holds', async () => {
    const lease = { ...wholeLease(linesBytes), cursor: offsets[20] as number, cursorConsumed: 5 };
    await expect(reader('lines.txt', lease, { shuffleWindow: 8 }).next()).rejects.toThrow(/shuffle window that holds 3/);
  });
});
