import { InvalidArgumentError } from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';
import { DEFAULT_FUSION_BUCKET_BYTES, allReduceFused, planFusionBuckets } from './tensor-fusion.ts';
import type { FusedPart, FusionBucket } from './tensor-fusion.ts';

/** Each bucket's pieces, as [tensor, tensorOffset, bucketOffset, length]. */
function pieces(buckets: FusionBucket[]): number[][][] {
  return buckets.map((b) => b.pieces.map((p) => [p.tensor, p.tensorOffset, p.bucketOffset, p.length]));
}

/** The plan's invariants: contiguous buckets, full but the last, pieces covering each tensor once, in order. */
function expectConsistent(counts: number[], buckets: FusionBucket[], capacity: number): void {
  let flat = 0;
  const covered = counts.map(() => 0);
  let lastTensor = -1;
  buckets.forEach((b, index) => {
    expect(b.index).toBe(index);
    expect(b.start).toBe(flat);
    expect(b.length).toBe(index < buckets.length - 1 ? capacity : b.length);
    expect(b.length).toBeGreaterThan(0);
    expect(b.length).toBeLessThanOrEqual(capacity);
    let offset = 0;
    for (const p of b.pieces) {
      expect(p.bucketOffset).toBe(offset);
      expect(p.length).toBeGreaterThan(0);
      expect(p.tensorOffset).toBe(covered[p.tensor]);
      expect(p.tensor).toBeGreaterThanOrEqual(lastTensor);
      lastTensor = p.tensor;
      covered[p.tensor]! += p.length;
      offset += p.length;
    }
    expect(offset).toBe(b.length);
    flat += b.length;
  });
  expect(covered).toEqual(counts);
}

describe('planFusionBuckets', () => {
  it('defaults to Horovod’s 64 MiB', () => {
    expect(DEFAULT_FUSION_BUCKET_BYTES).toBe(67_108_864);
    expect(planFusionBuckets([10, 20])).toEqual([
      {
        index: 0,
        start: 0,
        length: 30,
        pieces: [
          { tensor: 0, tensorOffset: 0, bucketOffset: 0, length: 10 },
          { tensor: 1, tensorOffset: 0, bucketOffset: 10, length: 20 },
        ],
      },
    ]);
  });

  it('gives no buckets for no elements', () => {
    expect(planFusionBuckets([])).toEqual([]);
    expect(planFusionBuckets([0, 0, 0], 16)).toEqual([]);
  });

  it('skips zero-length tensors', () => {
    const buckets = planFusionBuckets([0, 3, 0, 0, 2, 0], 16);
    expect(pieces(buckets)).toEqual([
      [
        [1, 0, 0, 3],
        [4, 0, 3, 1],
      ],
      [[4, 1, 0, 1]],
    ]);
  });

  it('closes a bucket on an exact fit and starts the next tensor in a fresh one', () => {
    const buckets = planFusionBuckets([2, 2, 4, 1], 16);
    expect(buckets.map((b) => [b.start, b.length])).toEqual([
      [0, 4],
      [4, 4],
      [8, 1],
    ]);
    expect(pieces(buckets)).toEqual([
      [
        [0, 0, 0, 2],
        [1, 0, 2, 2],
      ],
      [[2, 0, 0, 4]],
      [[3, 0, 0, 1]],
    ]);
  });

  it('splits one giant tensor over many full buckets', () => {
    const buckets = planFusionBuckets([1, 1000, 1], 400);
    expect(buckets.map((b) => b.length)).toEqual([100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 2]);
    expect(pieces(buckets)[0]).toEqual([
      [0, 0, 0, 1],
      [1, 0, 1, 99],
    ]);
    expect(pieces(buckets)[5]).toEqual([[1, 499, 0, 100]]);
    expect(pieces(buckets)[10]).toEqual([
      [1, 999, 0, 1],
      [2, 0, 1, 1],
    ]);
    expectConsistent([1, 1000, 1], buckets, 100);
  });

  it('keeps its invariants on random tensor lists', () => {
    let seed = 42;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let trial = 0; trial < 50; trial++) {
      const counts = Array.from({ length: next(20) }, () => (next(4) === 0 ? 0 : next(300)));
      const capacity = 1 + next(100);
      expectConsistent(counts, planFusionBuckets(counts, capacity * 4), capacity);
    }
  });

  it('rejects bad sizes, naming the field', () => {
    expect(() => planFusionBuckets([4], 6)).toThrow(InvalidArgumentError);
    expect(() => planFusionBuckets([4], 6)).toThrow(/bucketBytes must be a multiple of 4/);
    expect(() => planFusionBuckets([4], 0)).toThrow(/bucketBytes/);
    expect(() => planFusionBuckets([4], 4.5 * 4)).toThrow(/bucketBytes/);
    expect(() => planFusionBuckets([4, -1], 16)).toThrow(/elementCounts\[1\] must be an integer >= 0, got -1/);
    expect(() => planFusionBuckets([1.5], 16)).toThrow(/elementCounts\[0\]/);
    expect(() => planFusionBuckets([NaN], 16)).toThrow(/elementCounts\[0\]/);
    expect(() => planFusionBuckets([2 ** 52, 2 ** 52], 16)).toThrow(InvalidArgumentError);
  });
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Parts with known values, each recording when it was read. */
function makeParts(
  lengths: number[],
  events: string[],
  readDelayMs = 0,
): { parts: FusedPart[]; reads: number[]; concat: Float32Array } {
  const reads = lengths.map(() => 0);
  const arrays = lengths.map((length, p) => Float32Array.from({ length }, (_, i) => p * 1000 + i * 0.25 + 0.1));
  const parts = lengths.map(
    (length, p): FusedPart => ({
      length,
      read: async () => {
        reads[p]!++;
        events.push(`read ${p}`);
        if (readDelayMs > 0) await sleep(readDelayMs);
        return arrays[p]!;
      },
    }),
  );
  const concat = new Float32Array(lengths.reduce((a, b) => a + b, 0));
  let offset = 0;
  for (const a of arrays) {
    concat.set(a, offset);
    offset += a.length;
  }
  return { parts, reads, concat };
}

describe('allReduceFused', () => {
  it('reduces every bucket in order, one at a time, overlapping the next reads, each part read once', async () => {
    const lengths = [3, 0, 10, 2, 25, 1, 0, 4];
    const bucketBytes = 8 * 4;
    const events: string[] = [];
    const { parts, reads, concat } = makeParts(lengths, events);
    let inFlight = 0;
    let maxInFlight = 0;
    const order: number[] = [];
    let seed = 1;
    const result = await allReduceFused(
      parts,
      async (bucket, index) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        order.push(index);
        events.push(`reduce ${index}`);
        seed = (seed * 16807) % 2147483647;
        await sleep(seed % 3);
        for (let i = 0; i < bucket.length; i++) bucket[i] = bucket[i]! * 3;
        events.push(`reduced ${index}`);
        inFlight--;
        return bucket;
      },
      { bucketBytes },
    );
    expect(Array.from(result.values)).toEqual(Array.from(concat, (v) => Math.fround(3 * v)));
    const buckets = planFusionBuckets(lengths, bucketBytes);
    expect(order).toEqual(buckets.map((b) => b.index));
    expect(maxInFlight).toBe(1);
    expect(reads).toEqual(lengths.map((l) => (l > 0 ? 1 : 0)));
    expect(result.stats).toMatchObject({ buckets: 6, sizeBytes: 45 * 4 });

    // Part p is first needed by the bucket holding its first element: its read starts
    // after that bucket's predecessor's reduce was called (overlap) and after the reduce
    // two buckets back resolved (at most one bucket filling while one reduces).
    let offset = 0;
    lengths.forEach((length, p) => {
      const bucket = Math.floor(offset / 8);
      offset += length;
      if (length === 0) return;
      const readAt = events.indexOf(`read ${p}`);
      if (bucket >= 1) {
        expect(readAt).toBeGreaterThan(events.indexOf(`reduce ${bucket - 1}`));
        expect(readAt).toBeLessThan(events.indexOf(`reduced ${bucket - 1}`));
      }
      if (bucket >= 2) expect(readAt).toBeGreaterThan(events.indexOf(`reduced ${bucket - 2}`));
    });
  });

  it('starts reading bucket 1 before bucket 0’s reduce resolves', async () => {
    const events: string[] = [];
    const { parts } = makeParts([4, 4, 4], events);
    await allReduceFused(
      parts,
      async (bucket, index) => {
        events.push(`reduce ${index}`);
        await sleep(5);
        events.push(`reduced ${index}`);
        return bucket;
      },
      { bucketBytes: 16 },
    );
    expect(events).toEqual([
      ...['read 0', 'reduce 0', 'read 1', 'reduced 0'],
      ...['reduce 1', 'read 2', 'reduced 1'],
      ...['reduce 2', 'reduced 2'],
    ]);
  });

  it('reads a giant part once and reduces it bucket by bucket', async () => {
    const events: string[] = [];
    const { parts, reads, concat } = makeParts([2, 50, 3], events);
    const seen: number[] = [];
    const result = await allReduceFused(
      parts,
      async (bucket, index) => {
        seen.push(bucket.length);
        expect(index).toBe(seen.length - 1);
        for (let i = 0; i < bucket.length; i++) bucket[i] = bucket[i]! * 3;
        return Promise.resolve(bucket);
      },
      { bucketBytes: 40 },
    );
    expect(seen).toEqual([10, 10, 10, 10, 10, 5]);
    expect(reads).toEqual([1, 1, 1]);
    expect(Array.from(result.values)).toEqual(Array.from(concat, (v) => Math.fround(3 * v)));
  });

  it('with one bucket, reduces the output itself in place (no extra copy) and fills a given output', async () => {
    const events: string[] = [];
    const { parts, concat } = makeParts([5, 7], events);
    const output = new Float32Array(12);
    let reducedBuffer: ArrayBufferLike | undefined;
    const result = await allReduceFused(
      parts,
      (bucket) => {
        reducedBuffer = bucket.buffer;
        expect(bucket.length).toBe(12);
        expect(Array.from(bucket)).toEqual(Array.from(concat));
        return Promise.resolve(bucket);
      },
      { output },
    );
    expect(result.values).toBe(output);
    expect(reducedBuffer).toBe(output.buffer);
    expect(Array.from(output)).toEqual(Array.from(concat));
  });

  it('copies back a reduce result that is a new array', async () => {
    const { parts, concat } = makeParts([6, 6], []);
    const result = await allReduceFused(parts, (bucket) => Promise.resolve(bucket.map((v) => -v)), { bucketBytes: 20 });
    expect(Array.from(result.values)).toEqual(Array.from(concat, (v) => -v));
    await expect(allReduceFused(parts, () => Promise.resolve(new Float32Array(1)), { bucketBytes: 20 })).rejects.toThrow(
      /reduce returned 1 elements for bucket 0 of 5/,
    );
  });

  it('accepts synchronous reads and no parts', async () => {
    const parts: FusedPart[] = [{ length: 2, read: () => Float32Array.from([1, 2]) }];
    const result = await allReduceFused(parts, (b) => Promise.resolve(b));
    expect(Array.from(result.values)).toEqual([1, 2]);
    const none = await allReduceFused([], () => Promise.reject(new Error('never called')));
    expect(none.values.length).toBe(0);
    expect(none.stats).toMatchObject({ buckets: 0, sizeBytes: 0, readSeconds: 0, reduceSeconds: 0 });
  });

  it('attributes time to exposed reads or to reduces', async () => {
    // Slow reads, fast reduces: the reads are the critical path.
    const slowReads = makeParts([4, 4, 4], [], 15);
    const readBound = await allReduceFused(slowReads.parts, (b) => Promise.resolve(b), { bucketBytes: 16 });
    expect(readBound.stats.readWaitSeconds).toBeGreaterThan(0.035);
    expect(readBound.stats.readSeconds).toBeGreaterThan(0.035);
    const { seconds, readWaitSeconds, reduceSeconds } = readBound.stats;
    expect(seconds).toBeGreaterThanOrEqual(readWaitSeconds + reduceSeconds - 0.002);

    // Fast reads, slow reduces: only the first read is exposed.
    const fastReads = makeParts([4, 4, 4], []);
    const reduceBound = await allReduceFused(
      fastReads.parts,
      async (b) => {
        await sleep(15);
        return b;
      },
      { bucketBytes: 16 },
    );
    expect(reduceBound.stats.reduceSeconds).toBeGreaterThan(0.035);
    expect(reduceBound.stats.readWaitSeconds).toBeLessThan(0.01);
  });

  it('fails with a reduce error after the fill in flight settles, reducing nothing more', async () => {
    const events: string[] = [];
    const { parts } = makeParts([4, 4, 4, 4], events, 3);
    const failure = new Error('ring broke');
    const calls: number[] = [];
    await expect(
      allReduceFused(
        parts,
        (bucket, index) => {
          calls.push(index);
          return index === 1 ? Promise.reject(failure) : Promise.resolve(bucket);
        },
        { bucketBytes: 16 },
      ),
    ).rejects.toBe(failure);
    expect(calls).toEqual([0, 1]);
    expect(events).toEqual(['read 0', 'read 1', 'read 2']); // bucket 2's fill ran; bucket 3's never started
  });

  it('fails with a read error without reducing the bucket it belongs to', async () => {
    const calls: number[] = [];
    const parts: FusedPart[] = [
      { length: 4, read: () => new Float32Array(4) },
      {
        length: 4,
        read: () => {
          throw new Error('GPU lost');
        },
      },
    ];
    await expect(
      allReduceFused(
        parts,
        (b, index) => {
          calls.push(index);
          return Promise.resolve(b);
        },
        { bucketBytes: 16 },
      ),
    ).rejects.toThrow('GPU lost');
    expect(calls).toEqual([0]);
  });

  it('rejects a read of the wrong length, a bad output and bad part lengths', async () => {
    const reduce = (b: Float32Array): Promise<Float32Array> => Promise.resolve(b);
    await expect(allReduceFused([{ length: 3, read: () => new Float32Array(2) }], reduce)).rejects.toThrow(
      /parts\[0\]\.read\(\) returned 2 elements, expected 3/,
    );
    await expect(
      allReduceFused([{ length: 3, read: () => new Float32Array(3) }], reduce, { output: new Float32Array(4) }),
    ).rejects.toThrow(/options.output has 4 elements, the parts total 3/);
    await expect(allReduceFused([{ length: -1, read: () => new Float32Array(0) }], reduce)).rejects.toThrow(
      /parts\[0\]\.length must be an integer >= 0/,
    );
    await expect(allReduceFused([], reduce, { bucketBytes: 2 })).rejects.toThrow(InvalidArgumentError);
  });
});
