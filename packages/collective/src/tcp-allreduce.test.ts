/**
 * What the conformance suite (ring-allreduce.test.ts) cannot say about the tcp transport:
 * 16-bit wire compression against its error bound, the size rule between recursive
 * doubling and the ring, the settings check in the hello, the link bandwidth probe, and
 * how failures travel: a stalled sender, a killed process, a rank that closes.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import type net from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AbortedError, DinofleetError, UnavailableError } from '@dinofleet/proto';
import { AllReduceAlgorithm } from './allreduce-options.ts';
import type { LinkBandwidth } from './allreduce-options.ts';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import { Compression, allReduceErrorBound, quantizeInPlace } from './compression.ts';
import { FRAME_HEADER_BYTES, FrameKind, decodeAbortReason, encodeHelloReply, writeFrameHeader } from './data-frame.ts';
import type { DataLinkHello } from './data-frame.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import { delay, startTestRing, testVector } from './test-ring.ts';
import type { TestRankSetup } from './test-rank-process.ts';

function bitsOf(values: Float32Array): Buffer {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

/** How a promise settled, and when (ms on performance.now()). */
interface Settled<T> {
  readonly value: T | undefined;
  readonly error: Error | undefined;
  readonly atMs: number;
}

function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ value, error: undefined, atMs: performance.now() }),
    (err: unknown) => ({ value: undefined, error: err as Error, atMs: performance.now() }),
  );
}

/**
 * Every rank has the same bits, and every element is within allReduceErrorBound(n, c) of
 * the float64 sum. Returns how many elements lie outside the float32-only bound (the part
 * of the error that compression adds).
 */
function expectWithinBound(inputs: readonly Float32Array[], results: readonly Float32Array[], c: Compression): number {
  const n = inputs.length;
  const first = results[0] as Float32Array;
  for (const result of results) expect(bitsOf(result).equals(bitsOf(first))).toBe(true);
  const { relative, absolute } = allReduceErrorBound(n, c);
  const float32Only = allReduceErrorBound(n, Compression.None).relative;
  let worstExcess = -Infinity;
  let beyondFloat32 = 0;
  for (let i = 0; i < first.length; i++) {
    let exact = 0;
    let magnitude = 0;
    for (const input of inputs) {
      exact += input[i] as number;
      magnitude += Math.abs(input[i] as number);
    }
    const error = Math.abs((first[i] as number) - exact);
    worstExcess = Math.max(worstExcess, error - (relative * magnitude + absolute));
    if (error > float32Only * magnitude) beyondFloat32++;
  }
  expect(worstExcess).toBeLessThanOrEqual(0);
  return beyondFloat32;
}

function reduceOnAll(rings: readonly RingAllReduce[], inputs: readonly Float32Array[], step: number, op = 0): Promise<Float32Array[]> {
  return Promise.all(rings.map((ring, rank) => ring.allReduceSum(inputs[rank] as Float32Array, { step, op })));
}

describe('TcpAllReduce: compression', () => {
  // 1000 elements (4000 bytes) are under the default smallMessageBytes, 300_000 (1.2 MB) over
  // it; 64 KiB chunks cut each ring segment of the large vector into several chunks.
  const cases = [Compression.Bf16, Compression.Fp16].flatMap((compression) =>
    [3, 4].flatMap((worldSize) => [
      { compression, worldSize, length: 1000, algorithm: AllReduceAlgorithm.RecursiveDoubling, directMaxRanks: 8 },
      { compression, worldSize, length: 300_000, algorithm: AllReduceAlgorithm.Direct, directMaxRanks: 8 },
      { compression, worldSize, length: 300_000, algorithm: AllReduceAlgorithm.Ring, directMaxRanks: 0 },
    ]),
  );

  it.each(cases)(
    '$compression on $worldSize ranks, $length elements ($algorithm): same bits everywhere, within the error bound, really 16-bit',
    async ({ compression, worldSize, length, algorithm, directMaxRanks }) => {
      await using ring = await startTestRing(worldSize, { compression, chunkBytes: 65536, linkProbeBytes: 0, directMaxRanks });
      const inputs = ring.rings.map((_, rank) => testVector(length, 1000 * worldSize + rank));
      const results = await reduceOnAll(ring.rings, inputs, 3);
      const beyondFloat32 = expectWithinBound(inputs, results, compression);
      // Compression is applied: most elements carry more error than float32 sums alone could,
      // and the result is made of 16-bit values (the owner rounds before the all-gather).
      expect(beyondFloat32).toBeGreaterThan(length / 4);
      const requantized = (results[0] as Float32Array).slice();
      quantizeInPlace(compression, requantized, 0, length);
      expect(bitsOf(requantized).equals(bitsOf(results[0] as Float32Array))).toBe(true);
      for (const r of ring.rings) {
        expect(r.lastStats?.compression).toBe(compression);
        expect(r.lastStats?.algorithm).toBe(algorithm);
        expect(r.lastStats?.sizeBytes).toBe(length * 4);
      }
    },
  );
});

describe('TcpAllReduce: algorithm choice', () => {
  const smallMessageBytes = 4096;
  it.each([
    { worldSize: 3, directMaxRanks: 8, large: AllReduceAlgorithm.Direct },
    { worldSize: 4, directMaxRanks: 8, large: AllReduceAlgorithm.Direct },
    { worldSize: 4, directMaxRanks: 4, large: AllReduceAlgorithm.Direct },
    { worldSize: 4, directMaxRanks: 3, large: AllReduceAlgorithm.Ring },
    { worldSize: 3, directMaxRanks: 0, large: AllReduceAlgorithm.Ring },
  ])('on $worldSize ranks with directMaxRanks $directMaxRanks, smallMessageBytes bytes use recursive doubling and 4 more $large', async ({ worldSize, directMaxRanks, large }) => {
    await using ring = await startTestRing(worldSize, { smallMessageBytes, chunkBytes: 1024, linkProbeBytes: 0, directMaxRanks });
    let step = 0;
    for (const [length, algorithm] of [
      [smallMessageBytes / 4, AllReduceAlgorithm.RecursiveDoubling],
      [smallMessageBytes / 4 + 1, large],
      [smallMessageBytes / 4 - 1, AllReduceAlgorithm.RecursiveDoubling],
    ] as const) {
      const inputs = ring.rings.map((_, rank) => testVector(length, 10 * length + rank));
      expectWithinBound(inputs, await reduceOnAll(ring.rings, inputs, step++), Compression.None);
      for (const r of ring.rings) {
        expect(r.lastStats?.sizeBytes).toBe(length * 4);
        expect(r.lastStats?.algorithm).toBe(algorithm);
      }
    }
  });
});

describe('TcpAllReduce: settings mismatch', () => {
  it.each([
    { name: 'compression', a: { compression: Compression.Bf16 }, b: {}, texts: ['compression=bf16', 'compression=none'] },
    { name: 'chunkBytes', a: { chunkBytes: 65536 }, b: { chunkBytes: 1024 * 1024 }, texts: ['chunk=65536', 'chunk=1048576'] },
  ])('two ranks with different $name fail their first collective at once, naming both settings', async ({ a, b, texts }) => {
    await using e0 = new CollectiveEndpoint();
    await using e1 = new CollectiveEndpoint();
    const peers = [(await e0.start()).address, (await e1.start()).address];
    const common = { job: 'mismatch', generation: 1, peers, linkProbeBytes: 0, timeoutMs: 20_000 };
    await using ring0 = new RingAllReduce({ ...common, ...a, endpoint: e0, rank: 0 });
    await using ring1 = new RingAllReduce({ ...common, ...b, endpoint: e1, rank: 1 });
    const startedAt = performance.now();
    const outcomes = await Promise.all([
      settle(ring0.allReduceSum(testVector(100, 1), { step: 0, op: 0 })),
      settle(ring1.allReduceSum(testVector(100, 2), { step: 0, op: 0 })),
    ]);
    for (const { error, atMs } of outcomes) {
      expect(atMs - startedAt).toBeLessThan(3_000);
      expect(error).toBeInstanceOf(DinofleetError);
      expect(error?.message).toContain('collective settings differ');
      expect(error?.message).toContain('every rank must use the same');
      for (const text of texts) expect(error?.message).toContain(text);
    }
  });
});

describe('TcpAllReduce: link bandwidth probe', () => {
  const PROBE_BYTES = 2 * 1024 * 1024;

  it.each([
    { worldSize: 2, length: 1000 },
    { worldSize: 3, length: 100_000 },
  ])('on $worldSize ranks each rank measures its left neighbour once', async ({ worldSize, length }) => {
    const measured: LinkBandwidth[] = [];
    await using ring = await startTestRing(worldSize, {
      linkProbeBytes: PROBE_BYTES,
      onLinkBandwidth: (link) => measured.push(link),
    });
    for (let step = 0; step < 3; step++) {
      const inputs = ring.rings.map((_, rank) => testVector(length, step * 10 + rank));
      expectWithinBound(inputs, await reduceOnAll(ring.rings, inputs, step), Compression.None);
    }
    // One call per rank, whatever the number of collectives; rank r's is about r - 1.
    expect(measured.map((link) => link.peerRank).sort()).toEqual(ring.rings.map((_, rank) => rank).sort());
    ring.rings.forEach((r, rank) => {
      const left = (rank + worldSize - 1) % worldSize;
      const link = r.linkBandwidth;
      expect(link).toBeDefined();
      expect(link?.peerRank).toBe(left);
      expect(link?.peerAddress).toBe(ring.peers[left]);
      expect(link?.bytes).toBe(PROBE_BYTES);
      expect(link?.bandwidthGBps).toBeGreaterThan(0);
      expect(Number.isFinite(link?.bandwidthGBps)).toBe(true);
      expect(measured).toContainEqual(link);
    });
  });

  it('with linkProbeBytes 0 nothing is measured', async () => {
    const measured: LinkBandwidth[] = [];
    await using ring = await startTestRing(2, { linkProbeBytes: 0, onLinkBandwidth: (link) => measured.push(link) });
    const inputs = ring.rings.map((_, rank) => testVector(100_000, rank));
    expectWithinBound(inputs, await reduceOnAll(ring.rings, inputs, 0), Compression.None);
    for (const r of ring.rings) expect(r.linkBandwidth).toBeUndefined();
    expect(measured).toEqual([]);
  });

  // The probe arrives at link set-up; it must not start the stall clock of the first
  // collective, or a neighbour whose first step is slow fails the generation.
  it('a neighbour that reaches the first collective late is not taken for stalled because of the probe', async () => {
    await using ring = await startTestRing(2, { linkProbeBytes: 64 * 1024, stallTimeoutMs: 300, timeoutMs: 10_000 });
    const inputs = ring.rings.map((_, rank) => testVector(100_000, rank));
    const early = settle((ring.rings[0] as RingAllReduce).allReduceSum(inputs[0] as Float32Array, { step: 0, op: 0 }));
    await delay(800);
    const late = settle((ring.rings[1] as RingAllReduce).allReduceSum(inputs[1] as Float32Array, { step: 0, op: 0 }));
    const [r0, r1] = await Promise.all([early, late]);
    expect(r0.error?.message).toBeUndefined();
    expect(r1.error?.message).toBeUndefined();
  });

  it('without the probe, a neighbour that reaches the first collective late is waited for', async () => {
    await using ring = await startTestRing(2, { linkProbeBytes: 0, stallTimeoutMs: 300, timeoutMs: 10_000 });
    const inputs = ring.rings.map((_, rank) => testVector(100_000, rank));
    const early = settle((ring.rings[0] as RingAllReduce).allReduceSum(inputs[0] as Float32Array, { step: 0, op: 0 }));
    await delay(800);
    const late = settle((ring.rings[1] as RingAllReduce).allReduceSum(inputs[1] as Float32Array, { step: 0, op: 0 }));
    const [r0, r1] = await Promise.all([early, late]);
    expect(r0.error?.message).toBeUndefined();
    expect(r1.error?.message).toBeUndefined();
    expectWithinBound(inputs, [r0.value as Float32Array, r1.value as Float32Array], Compression.None);
  });
});

describe('TcpAllReduce: failures travel with their reason', () => {
  it('a sender that stops after one chunk fails the receiver after stallTimeoutMs, naming it', async () => {
    await using e0 = new CollectiveEndpoint();
    await using e1 = new CollectiveEndpoint();
    const peers = [(await e0.start()).address, (await e1.start()).address];
    const tag = { step: 4, op: 1 };
    // Rank 1 by hand: accept rank 0's data link, send the first reduce-scatter chunk it
    // expects (segment 1 of a 1000-element vector, offset 0, 16 floats), then nothing.
    const hellos: DataLinkHello[] = [];
    let upstream = Buffer.alloc(0);
    const upstreamEnded = new Promise<void>((resolve) => {
      const unregister = e1.register('stall', 1, {
        acceptDataLink(socket: net.Socket, hello: DataLinkHello) {
          hellos.push(hello);
          socket.on('data', (data: Buffer) => {
            upstream = Buffer.concat([upstream, data]);
          });
          socket.once('close', () => resolve());
          const header = Buffer.alloc(FRAME_HEADER_BYTES);
          writeFrameHeader(header, { kind: FrameKind.ReduceScatter, ...tag, sequence: 0, segment: 1, offset: 0, payloadBytes: 64 });
          socket.write(Buffer.concat([encodeHelloReply(), header, Buffer.from(new Float32Array(16).fill(1).buffer)]));
        },
        abort() {
          unregister();
        },
      });
    });
    await using ring0 = new RingAllReduce({
      job: 'stall', generation: 1, rank: 0, peers, endpoint: e0,
      chunkBytes: 64, smallMessageBytes: 0, directMaxRanks: 0, linkProbeBytes: 0, stallTimeoutMs: 300, timeoutMs: 20_000,
    });
    const startedAt = performance.now();
    const { error, atMs } = await settle(ring0.allReduceSum(testVector(1000, 1), tag));
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error?.message).toContain(`rank 1 (${peers[1]})`);
    expect(error?.message).toContain('sent nothing for 300 ms');
    expect(atMs - startedAt).toBeGreaterThanOrEqual(250);
    expect(atMs - startedAt).toBeLessThan(2_000);
    // Rank 0 dialed as receiver 0 of sender 1 with its settings, and on failing told the
    // sender why before closing the link.
    expect(hellos).toHaveLength(1);
    expect(hellos[0]).toMatchObject({ job: 'stall', generation: 1, senderRank: 1, receiverRank: 0, worldSize: 2 });
    expect(hellos[0]?.settings).toContain('chunk=64');
    await upstreamEnded;
    const reason = decodeAbortReason(upstream);
    expect(reason.code).toBe('UNAVAILABLE');
    expect(reason.message).toContain('sent nothing for 300 ms');
  });

  it('a rank whose process is killed mid-collective fails both survivors within 2 s, naming it', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./test-rank-process.ts', import.meta.url))], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
    let stderr = '';
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
    try {
      const messages = childMessages(child);
      const { address: childAddress } = (await nextMessage(messages, (m) => 'address' in m, () => stderr)) as { address: string };
      await using e0 = new CollectiveEndpoint();
      await using e1 = new CollectiveEndpoint();
      const peers = [(await e0.start()).address, (await e1.start()).address, childAddress];
      const elements = 4 * 1024 * 1024; // 16 MiB
      const options = { linkProbeBytes: 0, timeoutMs: 30_000, stallTimeoutMs: 20_000 };
      const setup: TestRankSetup = { rank: 2, peers, elements, options };
      child.stdin.write(`${JSON.stringify(setup)}\n`);
      await using ring0 = new RingAllReduce({ job: 'test-job', generation: 1, ...options, peers, rank: 0, endpoint: e0 });
      await using ring1 = new RingAllReduce({ job: 'test-job', generation: 1, ...options, peers, rank: 1, endpoint: e1 });
      const inputs = [new Float32Array(elements).fill(1), new Float32Array(elements).fill(2)];
      // Collective 0 completes on all three ranks: 1 + 2 + 3 everywhere.
      const [sum0] = await Promise.all([
        ring0.allReduceSum(inputs[0] as Float32Array, { step: 0, op: 0 }),
        ring1.allReduceSum(inputs[1] as Float32Array, { step: 0, op: 0 }),
      ]);
      expect(sum0?.[0]).toBe(6);
      expect(sum0?.[elements - 1]).toBe(6);
      await nextMessage(messages, (m) => m.entered === 1, () => stderr); // the child waits in collective 1
      // Rank 0 enters collective 1 and the child dies before rank 1's contribution could
      // reach it, so the child can never send rank 0 its part: the kill is mid-collective
      // whatever the timing (a rank that already sent everything its peers need may die
      // without failing them).
      const first = settle(ring0.allReduceSum(inputs[0] as Float32Array, { step: 1, op: 0 }));
      await delay(5);
      const killedAt = performance.now();
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      const survivors = [first, settle(ring1.allReduceSum(inputs[1] as Float32Array, { step: 1, op: 0 }))];
      for (const { error, atMs } of await Promise.all(survivors)) {
        expect(error).toBeInstanceOf(DinofleetError);
        expect(error?.message).toContain(`rank 2 (${childAddress})`);
        expect(atMs - killedAt).toBeLessThan(2_000);
      }
      // The generation is abandoned on both: later calls reject at once.
      for (const ring of [ring0, ring1]) {
        const laterAt = performance.now();
        const later = await settle(ring.allReduceSum(new Float32Array(4), { step: 2, op: 0 }));
        expect(later.error).toBeInstanceOf(AbortedError);
        expect(later.atMs - laterAt).toBeLessThan(100);
      }
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });

  it.each([
    { algorithm: AllReduceAlgorithm.Ring, length: 300_000 },
    { algorithm: AllReduceAlgorithm.RecursiveDoubling, length: 1000 },
  ])('$algorithm: a rank that closes mid-collective passes its reason to every other rank', async ({ length }) => {
    await using ring = await startTestRing(4, { linkProbeBytes: 0, chunkBytes: 65536, timeoutMs: 30_000, stallTimeoutMs: 20_000 });
    const others = [0, 1, 3];
    const pending = others.map((rank) =>
      settle((ring.rings[rank] as RingAllReduce).allReduceSum(testVector(length, rank), { step: 0, op: 0 })),
    );
    await delay(100); // the links are up and the three wait for rank 2
    const closedAt = performance.now();
    await (ring.rings[2] as RingAllReduce).close();
    for (const { error, atMs } of await Promise.all(pending)) {
      expect(error).toBeInstanceOf(DinofleetError);
      expect(error?.message).toContain(`rank 2 (${ring.peers[2]})`);
      expect(error?.message).toContain('closed its collective');
      expect(atMs - closedAt).toBeLessThan(2_000);
    }
  });
});

type ChildMessage = Record<string, unknown>;

/** The child's stdout, one parsed JSON object per line, in order. */
function childMessages(child: ChildProcessWithoutNullStreams): AsyncIterator<ChildMessage> {
  const lines = createInterface({ input: child.stdout });
  const iterator = lines[Symbol.asyncIterator]();
  return {
    async next() {
      const line = await iterator.next();
      return line.done === true ? { done: true, value: undefined } : { done: false, value: JSON.parse(line.value) as ChildMessage };
    },
  };
}

/** The child's next message that `wanted` accepts; fails with its stderr if it ends first. */
async function nextMessage(
  messages: AsyncIterator<ChildMessage>,
  wanted: (message: ChildMessage) => boolean,
  stderr: () => string,
): Promise<ChildMessage> {
  for (;;) {
    const message = await messages.next();
    if (message.done === true) throw new Error(`the rank process ended early: ${stderr()}`);
    if (wanted(message.value)) return message.value;
    if ('failed' in message.value) throw new Error(`the rank process failed: ${String(message.value.failed)}`);
  }
}
