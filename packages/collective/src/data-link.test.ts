/**
 * The data link's wire format (data-frame.ts) and its gatekeeping (data-listener.ts,
 * collective-endpoint.ts): a raw TCP client speaks to a real endpoint's data listener and
 * reads the sender's reply byte by byte.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AbortedError, InvalidArgumentError, callUnary, createClient } from '@dinofleet/proto';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import type { InboundStreamSink } from './collective-endpoint.ts';
import {
  DATA_LINK_TOKEN_BYTES,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  FrameKind,
  HELLO_MAGIC,
  MAX_ABORT_BYTES,
  decodeAbortReason,
  decodeHello,
  encodeAbortReason,
  encodeHello,
  encodeHelloReply,
  helloSize,
  readFrameHeader,
  writeFrameHeader,
} from './data-frame.ts';
import type { DataLinkHello, FrameHeader } from './data-frame.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import { delay, testVector } from './test-ring.ts';

/** The sender's reply as a receiver reads it: status, message, and whether the sender then closed. */
interface Reply {
  readonly status: number;
  readonly message: string;
  /** Bytes received beyond the reply (none for a refusal). */
  readonly extraBytes: number;
  readonly closed: boolean;
}

function parseReply(received: Buffer, closed: boolean): Reply {
  expect(received.byteLength).toBeGreaterThanOrEqual(8);
  const status = received.readUInt32LE(0);
  const bytes = received.readUInt32LE(4);
  return { status, message: received.toString('utf8', 8, 8 + bytes), extraBytes: received.byteLength - 8 - bytes, closed };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

/**
 * Writes `parts` (with a short pause between them) and reads until the sender closes
 * (a refusal), or for `waitMs` when it does not.
 */
async function exchange(port: number, parts: readonly Buffer[], waitMs = 3_000): Promise<Reply & { socket: net.Socket }> {
  const socket = await connect(port);
  let received = Buffer.alloc(0);
  socket.on('data', (data: Buffer) => {
    received = Buffer.concat([received, data]);
  });
  const closed = new Promise<boolean>((resolve) => {
    socket.once('close', () => resolve(true));
    setTimeout(() => resolve(false), waitMs).unref();
  });
  for (const [i, part] of parts.entries()) {
    if (i > 0) await delay(20);
    socket.write(part);
  }
  const wasClosed = await closed;
  return { ...parseReply(received, wasClosed), socket };
}

/** Reads exactly the 8-byte accept reply, leaving the socket open. */
async function expectAccepted(port: number, parts: readonly Buffer[]): Promise<net.Socket> {
  const reply = await exchange(port, parts, 300);
  expect(reply).toMatchObject({ status: 0, message: '', extraBytes: 0, closed: false });
  return reply.socket;
}

/** A one-time token from the endpoint's OpenDataLink, as a receiver gets it. */
async function openDataLink(
  address: string,
  request: { jobId: string; generation: number; senderRank: number; receiverRank: number },
): Promise<{ port: number; token: Buffer }> {
  const client = createClient(CollectiveExchangeClient, address);
  try {
    return await callUnary(client, 'openDataLink', request, { deadlineMs: 5_000 });
  } finally {
    client.close();
  }
}

function hello(overrides: Partial<DataLinkHello> = {}): DataLinkHello {
  return {
    token: randomBytes(DATA_LINK_TOKEN_BYTES),
    job: 'raw',
    generation: 5,
    senderRank: 0,
    receiverRank: 1,
    worldSize: 2,
    settings: 'chunk=4 small=0 compression=none probe=0',
    ...overrides,
  };
}

/** A sink that accepts every link (writes the accept reply) and records its hello. */
function acceptingSink(accepted: DataLinkHello[]): InboundStreamSink {
  return {
    acceptDataLink(socket: net.Socket, h: DataLinkHello) {
      accepted.push(h);
      socket.write(encodeHelloReply());
    },
    abort() {},
  };
}

/** A real 2-rank collective with `endpoint` as rank 0 gives the right sum. */
async function expectCollectiveWorks(endpoint: CollectiveEndpoint, job: string): Promise<void> {
  await using other = new CollectiveEndpoint();
  const peers = [endpoint.address, (await other.start()).address];
  const settings = { job, generation: 1, peers, chunkBytes: 64, smallMessageBytes: 0, linkProbeBytes: 0, timeoutMs: 10_000 };
  await using ring0 = new RingAllReduce({ ...settings, rank: 0, endpoint });
  await using ring1 = new RingAllReduce({ ...settings, rank: 1, endpoint: other });
  const inputs = [testVector(333, 1), testVector(333, 2)];
  const [r0, r1] = await Promise.all([
    ring0.allReduceSum(inputs[0] as Float32Array, { step: 0, op: 0 }),
    ring1.allReduceSum(inputs[1] as Float32Array, { step: 0, op: 0 }),
  ]);
  for (let i = 0; i < 333; i++) {
    const sum = Math.fround((inputs[0]?.[i] as number) + (inputs[1]?.[i] as number));
    expect(r0[i]).toBe(sum);
    expect(r1[i]).toBe(sum);
  }
}

describe('data listener: what it refuses', () => {
  it('refuses garbage, malformed hellos and unknown tokens with a reply that says why, closes, and keeps serving', async () => {
    await using endpoint = new CollectiveEndpoint();
    await endpoint.start();
    const good = encodeHello(hello());
    const oversized = Buffer.alloc(8);
    oversized.writeUInt32LE(HELLO_MAGIC, 0);
    oversized.writeUInt32LE(1_000_000, 4);
    // The size field claims one byte more than the hello has (a settings length that lies).
    const overlong = Buffer.concat([good, Buffer.from([0x41])]);
    overlong.writeUInt32LE(good.byteLength + 1, 4);
    const cases: ReadonlyArray<{ bytes: Buffer; says: string[] }> = [
      { bytes: Buffer.from('GET / HTTP/1.1\r\nHost: worker\r\n\r\n'), says: ['bad hello magic 0x20544547', 'not a dinofleet rank'] },
      { bytes: oversized, says: ['hello of 1000000 bytes'] },
      { bytes: overlong, says: ['hello settings do not end the hello'] },
      { bytes: Buffer.concat([good, Buffer.alloc(FRAME_HEADER_BYTES)]), says: ['bytes after the hello before the reply'] },
      { bytes: good, says: ['data link token unknown or already used', 'call OpenDataLink first'] },
    ];
    for (const { bytes, says } of cases) {
      const reply = await exchange(endpoint.dataPort, [bytes]);
      expect(reply).toMatchObject({ status: 1, extraBytes: 0, closed: true });
      for (const text of says) expect(reply.message).toContain(text);
    }
    await expectCollectiveWorks(endpoint, 'after-garbage');
  });

  it('accepts a token once (even with the hello split over several writes) and refuses it the second time', async () => {
    await using endpoint = new CollectiveEndpoint();
    const { address } = await endpoint.start();
    const accepted: DataLinkHello[] = [];
    endpoint.register('raw', 5, acceptingSink(accepted));
    const { port, token } = await openDataLink(address, { jobId: 'raw', generation: 5, senderRank: 0, receiverRank: 1 });
    expect(port).toBe(endpoint.dataPort);
    expect(token.byteLength).toBe(DATA_LINK_TOKEN_BYTES);
    const bytes = encodeHello(hello({ token }));
    const first = await expectAccepted(port, [bytes.subarray(0, 5), bytes.subarray(5, 50), bytes.subarray(50)]);
    expect(accepted).toEqual([hello({ token: Uint8Array.from(token) })]);
    const second = await exchange(port, [bytes]);
    expect(second).toMatchObject({ status: 1, closed: true, message: 'data link token unknown or already used: call OpenDataLink first' });
    expect(accepted).toHaveLength(1);
    first.destroy();
    await expectCollectiveWorks(endpoint, 'after-reuse');
  });

  it('refuses a hello whose token was issued for another link, naming both', async () => {
    await using endpoint = new CollectiveEndpoint();
    const { address } = await endpoint.start();
    const accepted: DataLinkHello[] = [];
    endpoint.register('raw', 5, acceptingSink(accepted));
    const request = { jobId: 'raw', generation: 5, senderRank: 0, receiverRank: 1 };
    for (const [wrong, names] of [
      [{ receiverRank: 2 }, 'the hello names job raw generation 5 link 0->2'],
      [{ senderRank: 1, receiverRank: 0 }, 'the hello names job raw generation 5 link 1->0'],
      [{ job: 'other' }, 'the hello names job other generation 5 link 0->1'],
    ] as const) {
      const { port, token } = await openDataLink(address, request);
      const reply = await exchange(port, [encodeHello(hello({ token, ...wrong }))]);
      expect(reply).toMatchObject({ status: 1, closed: true });
      expect(reply.message).toContain('data link token was issued for job raw generation 5 link 0->1');
      expect(reply.message).toContain(names);
      // The token is spent: a correct hello with it is refused too.
      const retry = await exchange(port, [encodeHello(hello({ token }))]);
      expect(retry.message).toContain('unknown or already used');
    }
    expect(accepted).toEqual([]);
  });

  it('lets the registered collective refuse a hello that disagrees with it (world size)', async () => {
    await using endpoint = new CollectiveEndpoint();
    const { address } = await endpoint.start();
    await using _ring = new RingAllReduce({ job: 'raw', generation: 5, rank: 0, peers: [address, '127.0.0.1:1'], endpoint, linkProbeBytes: 0 });
    const { port, token } = await openDataLink(address, { jobId: 'raw', generation: 5, senderRank: 0, receiverRank: 1 });
    const reply = await exchange(port, [encodeHello(hello({ token, worldSize: 3 }))]);
    expect(reply).toMatchObject({ status: 1, closed: true, message: 'world size differs: 3 at the receiver, 2 here' });
  });
});

describe('data listener: lifecycle', () => {
  // A connection that closes before its hello (a TCP health probe, a port scan) must not
  // leave its 10 s hello timer keeping the process alive after the endpoint closed.
  it('a connection that closes before its hello does not keep the process alive after close()', async () => {
    const endpointModule = new URL('./collective-endpoint.ts', import.meta.url).href;
    const script = `
      import net from 'node:net';
      import { CollectiveEndpoint } from '${endpointModule}';
      const endpoint = new CollectiveEndpoint();
      await endpoint.start();
      const socket = net.connect({ host: '127.0.0.1', port: endpoint.dataPort });
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
      await endpoint.close();
      process.stdout.write('closed\\n');
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      const closedAt = await new Promise<number>((resolve, reject) => {
        child.stdout.on('data', (data: Buffer) => {
          if (data.toString().includes('closed')) resolve(performance.now());
        });
        child.once('exit', (code) => reject(new Error(`the script exited with ${code} before closing its endpoint`)));
      });
      const exitedAt = await Promise.race([exited.then(() => performance.now()), delay(2_500).then(() => Infinity)]);
      expect(exitedAt - closedAt).toBeLessThan(2_000);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });
});

describe('data links and generations', () => {
  it('OpenDataLink refuses a generation older than the registered one as stale (ABORTED), and two equal ranks', async () => {
    await using endpoint = new CollectiveEndpoint();
    const { address } = await endpoint.start();
    endpoint.register('raw', 5, acceptingSink([]));
    const stale = await openDataLink(address, { jobId: 'raw', generation: 4, senderRank: 0, receiverRank: 1 }).catch((err: unknown) => err as Error);
    expect(stale).toBeInstanceOf(AbortedError);
    expect((stale as AbortedError).code).toBe('ABORTED');
    expect((stale as Error).message).toContain('stale generation 4 for job raw: this rank is at generation 5');
    const same = await openDataLink(address, { jobId: 'raw', generation: 5, senderRank: 1, receiverRank: 1 }).catch((err: unknown) => err as Error);
    expect(same).toBeInstanceOf(InvalidArgumentError);
    // Another job has generations of its own; a newer generation may be asked for early.
    await expect(openDataLink(address, { jobId: 'other', generation: 1, senderRank: 0, receiverRank: 1 })).resolves.toMatchObject({ port: endpoint.dataPort });
    await expect(openDataLink(address, { jobId: 'raw', generation: 6, senderRank: 0, receiverRank: 1 })).resolves.toMatchObject({ port: endpoint.dataPort });
  });

  it('holds a link for a generation not registered yet and hands it over on registration', async () => {
    await using endpoint = new CollectiveEndpoint();
    const { address } = await endpoint.start();
    const { port, token } = await openDataLink(address, { jobId: 'raw', generation: 6, senderRank: 0, receiverRank: 1 });
    const socket = await connect(port);
    let received = Buffer.alloc(0);
    socket.on('data', (data: Buffer) => (received = Buffer.concat([received, data])));
    socket.write(encodeHello(hello({ token, generation: 6 })));
    await delay(100);
    expect(received.byteLength).toBe(0); // no reply while nobody has registered generation 6
    const accepted: DataLinkHello[] = [];
    endpoint.register('raw', 6, acceptingSink(accepted));
    for (let tries = 0; tries < 50 && received.byteLength < 8; tries++) await delay(10);
    expect(parseReply(received, false)).toMatchObject({ status: 0, extraBytes: 0 });
    expect(accepted).toHaveLength(1);
    socket.destroy();
  });

  it('refuses a held link when a newer generation registers, or when none registers in time', async () => {
    await using endpoint = new CollectiveEndpoint({ unclaimedStreamTimeoutMs: 200 });
    const { address } = await endpoint.start();
    const early = await openDataLink(address, { jobId: 'raw', generation: 6, senderRank: 0, receiverRank: 1 });
    const superseded = exchange(early.port, [encodeHello(hello({ token: early.token, generation: 6 }))]);
    await delay(50);
    endpoint.register('raw', 7, acceptingSink([]));
    expect(await superseded).toMatchObject({ status: 2, closed: true, message: 'stale generation 6 for job raw: this rank is at generation 7' });

    const late = await openDataLink(address, { jobId: 'raw', generation: 9, senderRank: 0, receiverRank: 1 });
    const startedAt = performance.now();
    const unclaimed = await exchange(late.port, [encodeHello(hello({ token: late.token, generation: 9 }))]);
    expect(unclaimed).toMatchObject({ status: 2, closed: true, message: 'no collective for job raw generation 9 registered here within 200 ms' });
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(150);
  });
});

describe('data-frame codecs', () => {
  const headers: FrameHeader[] = [
    { kind: FrameKind.ReduceScatter, step: 0, op: 0, sequence: 0, segment: 0, offset: 0, payloadBytes: 0 },
    { kind: FrameKind.AllGather, step: 2 ** 32 + 7, op: 2 ** 32 - 1, sequence: 123_456, segment: 15, offset: 2 ** 33 + 5, payloadBytes: 1 << 20 },
    { kind: FrameKind.Exchange, step: Number.MAX_SAFE_INTEGER, op: 1, sequence: 2 ** 32 - 1, segment: 2 ** 32 - 1, offset: Number.MAX_SAFE_INTEGER, payloadBytes: 2 ** 32 - 1 },
    { kind: FrameKind.Fold, step: 2 ** 32, op: 3, sequence: 1, segment: 0, offset: 2 ** 32, payloadBytes: 4 },
    { kind: FrameKind.Probe, step: 0, op: 0, sequence: 7, segment: 8, offset: 0, payloadBytes: 1024 * 1024 },
    { kind: FrameKind.Abort, step: 0, op: 0, sequence: 0, segment: 0, offset: 0, payloadBytes: MAX_ABORT_BYTES },
  ];

  it.each(headers)('frame header of kind $kind, step $step, offset $offset round-trips in 40 bytes', (header) => {
    const buffer = Buffer.alloc(FRAME_HEADER_BYTES + 4, 0xee);
    writeFrameHeader(buffer, header);
    expect(buffer.readUInt32LE(0)).toBe(FRAME_MAGIC);
    expect(buffer.subarray(FRAME_HEADER_BYTES).equals(Buffer.alloc(4, 0xee))).toBe(true); // nothing past 40 bytes
    expect(readFrameHeader(buffer)).toEqual(header);
  });

  it('puts the fields where the format says, little-endian, 64-bit step and offset as low then high word', () => {
    const buffer = Buffer.alloc(FRAME_HEADER_BYTES);
    writeFrameHeader(buffer, { kind: FrameKind.AllGather, step: 3 * 2 ** 32 + 9, op: 4, sequence: 5, segment: 6, offset: 7 * 2 ** 32 + 8, payloadBytes: 10 });
    const words = Array.from({ length: 10 }, (_, i) => buffer.readUInt32LE(4 * i));
    expect(words).toEqual([FRAME_MAGIC, 2, 9, 3, 4, 5, 6, 8, 7, 10]);
    expect(buffer.subarray(0, 4).toString('latin1')).toBe('DFF1');
  });

  it('readFrameHeader rejects a bad magic or kind', () => {
    const buffer = Buffer.alloc(FRAME_HEADER_BYTES);
    writeFrameHeader(buffer, headers[1] as FrameHeader);
    const badMagic = Buffer.from(buffer);
    badMagic.writeUInt32LE(0x31434644, 0); // a hello's magic
    expect(() => readFrameHeader(badMagic)).toThrow(InvalidArgumentError);
    expect(() => readFrameHeader(badMagic)).toThrow('bad frame magic 0x31434644');
    for (const kind of [0, 7, 0xffffffff]) {
      const badKind = Buffer.from(buffer);
      badKind.writeUInt32LE(kind, 4);
      expect(() => readFrameHeader(badKind)).toThrow(`unknown frame kind ${kind}`);
    }
  });

  it('hello round-trips, with a generation above 2^32 and UTF-8 job and settings', () => {
    const original = hello({ job: 'jöb-✓', generation: 2 ** 40 + 3, senderRank: 7, receiverRank: 2 ** 31, worldSize: 4096, settings: 'chunk=1048576 small=262144 compression=bf16 probe=8388608' });
    const bytes = encodeHello(original);
    expect(bytes.readUInt32LE(0)).toBe(HELLO_MAGIC);
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('DFC1');
    expect(helloSize(bytes)).toBe(bytes.byteLength);
    expect(helloSize(bytes.subarray(0, 7))).toBeUndefined();
    expect(decodeHello(bytes)).toEqual({ ...original, token: Uint8Array.from(original.token) });
    // The smallest hello: empty job and settings.
    const empty = encodeHello(hello({ job: '', settings: '' }));
    expect(empty.byteLength).toBe(8 + DATA_LINK_TOKEN_BYTES + 28);
    expect(decodeHello(empty)).toMatchObject({ job: '', settings: '' });
  });

  it('hello codec refuses what it cannot carry or read', () => {
    expect(() => encodeHello(hello({ token: new Uint8Array(16) }))).toThrow(`token must be ${DATA_LINK_TOKEN_BYTES} bytes`);
    expect(() => encodeHello(hello({ job: 'x'.repeat(5000) }))).toThrow('over 4096');
    const bytes = encodeHello(hello());
    expect(() => decodeHello(bytes.subarray(0, bytes.byteLength - 1))).toThrow('truncated hello');
    const tooSmall = Buffer.from(bytes);
    tooSmall.writeUInt32LE(20, 4);
    expect(() => helloSize(tooSmall)).toThrow('hello of 20 bytes');
    // A job length that runs past the end of the hello.
    const jobOverrun = Buffer.from(bytes);
    jobOverrun.writeUInt32LE(10_000, 8 + DATA_LINK_TOKEN_BYTES + 20);
    expect(() => decodeHello(jobOverrun)).toThrow('job id overruns the hello');
  });

  it('hello reply: 8 zero bytes to accept, status 1 and the UTF-8 reason to refuse', () => {
    expect(encodeHelloReply()).toEqual(Buffer.alloc(8));
    const refusal = encodeHelloReply('nö');
    expect(refusal.readUInt32LE(0)).toBe(1);
    expect(refusal.readUInt32LE(4)).toBe(3);
    expect(refusal.toString('utf8', 8)).toBe('nö');
    const long = encodeHelloReply('r'.repeat(5000));
    expect(long.readUInt32LE(4)).toBe(2048);
    expect(long.byteLength).toBe(8 + 2048);
  });

  it('abort reason round-trips code and message (newlines included), and is cut to 4 KiB', () => {
    expect(decodeAbortReason(encodeAbortReason('ABORTED', 'rank 2 left\nreally'))).toEqual({ code: 'ABORTED', message: 'rank 2 left\nreally' });
    expect(decodeAbortReason(Buffer.from('no code here'))).toEqual({ code: 'UNAVAILABLE', message: 'no code here' });
    const long = encodeAbortReason('UNAVAILABLE', 'x'.repeat(10_000));
    expect(long.byteLength).toBe(MAX_ABORT_BYTES);
    expect(decodeAbortReason(long).message).toBe('x'.repeat(MAX_ABORT_BYTES - 'UNAVAILABLE\n'.length));
  });
});
