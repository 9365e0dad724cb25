import { describe, expect, it } from 'vitest';
import { AbortedError, DinofleetError, GrpcServer, InvalidArgumentError, UnavailableError } from '@dinofleet/proto';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import { delay, startTestRing, testVector } from './test-ring.ts';
import type { TestRingOptions } from './test-ring.ts';

function bytesOf(values: Float32Array): Buffer {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

/** FLT_EPSILON, 2^-23. */
const FLOAT32_EPS = 2 ** -23;

/**
 * Checks that every rank's result has the same bits, and that it equals the float64 sum of
 * the inputs within float32 rounding: n - 1 float32 additions each err by at most half an
 * ulp of a partial sum, so |result - ref| <= (n - 1) * eps * sum_i |x_i| per element.
 */
function expectRingSum(inputs: readonly Float32Array[], results: readonly Float32Array[]): void {
  const n = inputs.length;
  const length = inputs[0]?.length ?? 0;
  const bits0 = Buffer.from(results[0]?.buffer ?? new ArrayBuffer(0));
  for (const result of results) {
    expect(result.length).toBe(length);
    expect(Buffer.compare(Buffer.from(result.buffer, result.byteOffset, result.byteLength), bits0)).toBe(0);
  }
  const result = results[0] as Float32Array;
  let worst = 0;
  for (let i = 0; i < length; i++) {
    let ref = 0;
    let magnitude = 0;
    for (const input of inputs) {
      ref += input[i] as number;
      magnitude += Math.abs(input[i] as number);
    }
    const excess = Math.abs((result[i] as number) - ref) - (n - 1) * FLOAT32_EPS * magnitude;
    worst = Math.max(worst, excess);
  }
  expect(worst).toBeLessThanOrEqual(0);
}

async function reduceOnAll(rings: readonly RingAllReduce[], inputs: readonly Float32Array[], step: number, op: number) {
  return Promise.all(rings.map((ring, rank) => ring.allReduceSum(inputs[rank] as Float32Array, { step, op })));
}

const FOUR_MIB_PLUS = 1024 * 1024 + 3; // float32 elements: just over 4 MiB, not divisible by 2, 3 or 4

/**
 * The conformance suite runs on every transport and algorithm choice: the gRPC ring, the
 * TCP default (recursive doubling up to 256 KiB, direct above for these small worlds), TCP
 * ring only, TCP direct only, and TCP recursive doubling for everything up to 16 MiB.
 */
const VARIANTS: ReadonlyArray<{ name: string; options: TestRingOptions; large: string }> = [
  { name: 'grpc ring', options: { transport: 'grpc' }, large: 'ring' },
  { name: 'tcp default', options: { transport: 'tcp', linkProbeBytes: 64 * 1024 }, large: 'direct' },
  { name: 'tcp ring only', options: { transport: 'tcp', smallMessageBytes: 0, directMaxRanks: 0 }, large: 'ring' },
  { name: 'tcp direct only', options: { transport: 'tcp', smallMessageBytes: 0, linkProbeBytes: 0 }, large: 'direct' },
  { name: 'tcp recursive doubling', options: { transport: 'tcp', smallMessageBytes: 16 * 1024 * 1024, linkProbeBytes: 0 }, large: 'recursive-doubling' },
];

describe.each(VARIANTS)('RingAllReduce conformance: $name', ({ name, options, large }) => {

describe('sums', () => {
  for (const worldSize of [2, 3, 4]) {
    it(`gives bit-identical sums on ${worldSize} ranks for lengths 0, 1, 7, 1000 and ~4 MiB`, async () => {
      await using ring = await startTestRing(worldSize, options);
      let op = 0;
      for (const length of [0, 1, 7, 1000, FOUR_MIB_PLUS]) {
        const inputs = ring.rings.map((_, rank) => testVector(length, 100 * length + rank));
        const copies = inputs.map((input) => input.slice());
        const results = await reduceOnAll(ring.rings, inputs, 7, op++);
        expectRingSum(inputs, results);
        // The input is left alone and the result is a new array.
        inputs.forEach((input, rank) => expect(bytesOf(input).equals(bytesOf(copies[rank] as Float32Array))).toBe(true));
        expect(results[0]).not.toBe(inputs[0]);
      }
      const stats = ring.rings[0]?.lastStats;
      expect(stats?.sizeBytes).toBe(FOUR_MIB_PLUS * 4);
      expect(stats?.step).toBe(7);
      expect(stats?.busbwGBps).toBeCloseTo((((stats?.algbwGBps ?? 0) * 2 * (worldSize - 1)) / worldSize), 12);
      expect(stats?.algbwGBps).toBeCloseTo(FOUR_MIB_PLUS * 4 / (stats?.seconds ?? 1) / 1e9, 9);
      expect(stats?.algorithm).toBe(large);
    });
  }

  it('splits segments into many small chunks (3 floats, unaligned payload views) and still agrees', async () => {
    await using ring = await startTestRing(3, { ...options, chunkBytes: 12 });
    for (const length of [1, 7, 1000]) {
      const inputs = ring.rings.map((_, rank) => testVector(length, rank + 9));
      expectRingSum(inputs, await reduceOnAll(ring.rings, inputs, 1, length));
    }
  });

  it('reduces in place when asked', async () => {
    await using ring = await startTestRing(3, { ...options, chunkBytes: 40 });
    const inputs = ring.rings.map((_, rank) => testVector(101, rank + 3));
    const buffers = inputs.map((input) => input.slice());
    const results = await Promise.all(
      ring.rings.map((r, rank) => r.allReduceSumInPlace(buffers[rank] as Float32Array, { step: 0, op: 0 })),
    );
    results.forEach((result, rank) => expect(result).toBe(buffers[rank]));
    expectRingSum(inputs, results);
  });

  it('returns a copy for a single rank', async () => {
    await using endpoint = new CollectiveEndpoint();
    await using ring = new RingAllReduce({ ...options, endpoint, job: 'j', generation: 0, rank: 0, peers: ['127.0.0.1:1'] });
    const input = testVector(5, 1);
    const result = await ring.allReduceSum(input, { step: 0, op: 0 });
    expect(result).not.toBe(input);
    expect(result).toEqual(input);
    expect(ring.lastStats?.busbwGBps).toBe(0);
  });

  it('runs consecutive collectives, and ranks that run ahead have their chunks buffered', async () => {
    await using ring = await startTestRing(3, { ...options, chunkBytes: 400 });
    const [r0, r1, r2] = ring.rings as [RingAllReduce, RingAllReduce, RingAllReduce];
    // In a row: five collectives of two steps.
    for (let op = 0; op < 5; op++) {
      const inputs = ring.rings.map((_, rank) => testVector(1000 + op, 10 * op + rank));
      expectRingSum(inputs, await reduceOnAll(ring.rings, inputs, 2 + (op >> 1), op & 1));
    }
    // Interleaved: ranks 0 and 2 issue op 0 and op 1 at once (the second waits for the
    // first on each rank) while rank 1 joins late, so its left neighbour's op-1 chunks
    // arrive before it has started op 1 (or even op 0).
    const a = ring.rings.map((_, rank) => testVector(999, 50 + rank));
    const b = ring.rings.map((_, rank) => testVector(999, 60 + rank));
    const r0a = r0.allReduceSum(a[0] as Float32Array, { step: 9, op: 0 });
    const r0b = r0.allReduceSum(b[0] as Float32Array, { step: 9, op: 1 });
    const r2a = r2.allReduceSum(a[2] as Float32Array, { step: 9, op: 0 });
    const r2b = r2.allReduceSum(b[2] as Float32Array, { step: 9, op: 1 });
    await delay(100);
    const r1a = await r1.allReduceSum(a[1] as Float32Array, { step: 9, op: 0 });
    await delay(100);
    const r1b = await r1.allReduceSum(b[1] as Float32Array, { step: 9, op: 1 });
    expectRingSum(a, [await r0a, r1a, await r2a]);
    expectRingSum(b, [await r0b, r1b, await r2b]);
  });
});

describe('failures', () => {
  it('fails fast, naming the rank, when a peer was never started', async () => {
    const gone = new GrpcServer();
    const { address: deadAddress } = await gone.start();
    await gone.close(0);
    await using e0 = new CollectiveEndpoint();
    await using e1 = new CollectiveEndpoint();
    const peers = [(await e0.start()).address, (await e1.start()).address, deadAddress];
    const settings = { ...options, job: 'j', generation: 3, peers, timeoutMs: 20_000, stallTimeoutMs: 500 };
    await using ring0 = new RingAllReduce({ ...settings, endpoint: e0, rank: 0 });
    await using ring1 = new RingAllReduce({ ...settings, endpoint: e1, rank: 1 });
    const startedAt = Date.now();
    const results = await Promise.allSettled([
      ring0.allReduceSum(testVector(100, 1), { step: 0, op: 0 }),
      ring1.allReduceSum(testVector(100, 2), { step: 0, op: 0 }),
    ]);
    expect(Date.now() - startedAt).toBeLessThan(3_000);
    const [err0, err1] = results.map((result) => (result.status === 'rejected' ? (result.reason as Error) : undefined));
    // grpc: rank 1 sends to rank 2 itself (UNAVAILABLE); tcp: rank 1 only sends to rank 2,
    // so it learns the cause from rank 0, which gave up on the generation (ABORTED).
    expect(err1).toBeInstanceOf(name === 'grpc ring' ? UnavailableError : DinofleetError);
    expect(['UNAVAILABLE', 'ABORTED']).toContain((err1 as DinofleetError | undefined)?.code);
    expect(err1?.message).toContain(`rank 2 (${deadAddress})`);
    // Rank 0 learns it either from rank 1, which passes the reason on (grpc), or itself,
    // dialing its left neighbour rank 2 (tcp); either way the dead rank is named.
    expect(err0).toBeInstanceOf(DinofleetError);
    expect(err0?.message).toContain(`rank 2 (${deadAddress})`);
    // The generation is abandoned: later calls fail at once.
    await expect(ring1.allReduceSum(testVector(3, 1), { step: 1, op: 0 })).rejects.toBeInstanceOf(AbortedError);
  });

  it('fails the survivors when a peer closes between collectives', async () => {
    await using ring = await startTestRing(3, { ...options, stallTimeoutMs: 500 });
    const inputs = ring.rings.map((_, rank) => testVector(64, rank));
    expectRingSum(inputs, await reduceOnAll(ring.rings, inputs, 0, 0));
    await ring.rings[2]?.close();
    await ring.endpoints[2]?.close();
    const startedAt = Date.now();
    const results = await Promise.allSettled([
      ring.rings[0]?.allReduceSum(inputs[0] as Float32Array, { step: 1, op: 0 }),
      ring.rings[1]?.allReduceSum(inputs[1] as Float32Array, { step: 1, op: 0 }),
    ]);
    expect(Date.now() - startedAt).toBeLessThan(2_000);
    for (const result of results) {
      expect(result.status).toBe('rejected');
      expect(result.status === 'rejected' && String(result.reason)).toContain(`rank 2 (${ring.peers[2]})`);
    }
  });

  it('refuses a neighbour of another generation as stale', async () => {
    await using e0 = new CollectiveEndpoint();
    await using e1 = new CollectiveEndpoint();
    const peers = [(await e0.start()).address, (await e1.start()).address];
    await using ring0 = new RingAllReduce({ ...options, job: 'j', generation: 5, rank: 0, peers, endpoint: e0 });
    await using _ring1 = new RingAllReduce({ ...options, job: 'j', generation: 6, rank: 1, peers, endpoint: e1 });
    const err = await ring0.allReduceSum(testVector(10, 1), { step: 0, op: 0 }).then(() => undefined, (e: unknown) => e as Error);
    expect(err).toBeInstanceOf(AbortedError);
    expect(err?.message).toContain(`rank 1 (${peers[1]})`);
    expect(err?.message).toContain('stale generation 5');
  });

  it('aborts when ranks pass buffers of different lengths', async () => {
    await using ring = await startTestRing(2, { ...options, stallTimeoutMs: 500 });
    const results = await Promise.allSettled([
      ring.rings[0]?.allReduceSum(testVector(8, 1), { step: 0, op: 0 }),
      ring.rings[1]?.allReduceSum(testVector(10, 1), { step: 0, op: 0 }),
    ]);
    for (const result of results) {
      expect(result.status).toBe('rejected');
      expect(result.status === 'rejected' && result.reason).toBeInstanceOf(AbortedError);
    }
  });

  it('rejects settings out of range, naming the field', () => {
    const endpoint = new CollectiveEndpoint();
    const base = { ...options, endpoint, job: 'j', generation: 0, rank: 0, peers: ['a:1', 'b:2'] };
    expect(() => new RingAllReduce({ ...base, chunkBytes: 6 })).toThrow(/chunkBytes/);
    expect(() => new RingAllReduce({ ...base, rank: 2 })).toThrow(InvalidArgumentError);
    expect(() => new RingAllReduce({ ...base, timeoutMs: 100, stallTimeoutMs: 200 })).toThrow(/stallTimeoutMs/);
    return endpoint.close();
  });
});

describe('lifecycle', () => {
  it('closes idempotently, fails later calls, and leaves no sockets open', async () => {
    const before = process.getActiveResourcesInfo().filter((kind) => kind.startsWith('TCP')).length;
    const ring = await startTestRing(2, options);
    const inputs = ring.rings.map((_, rank) => testVector(100, rank));
    expectRingSum(inputs, await reduceOnAll(ring.rings, inputs, 0, 0));
    const r0 = ring.rings[0] as RingAllReduce;
    await Promise.all([r0.close(), r0.close()]);
    await r0.close();
    await expect(r0.allReduceSum(inputs[0] as Float32Array, { step: 1, op: 0 })).rejects.toBeInstanceOf(AbortedError);
    await ring[Symbol.asyncDispose]();
    await ring[Symbol.asyncDispose]();
    let open = Infinity;
    for (let tries = 0; tries < 50 && open > before; tries++) {
      await delay(20);
      open = process.getActiveResourcesInfo().filter((kind) => kind.startsWith('TCP')).length;
    }
    expect(open).toBeLessThanOrEqual(before);
  });
});
});
