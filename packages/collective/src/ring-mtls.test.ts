/**
 * Transport security of the collective (docs/collective.md, "Transport security of the
 * ring and the data links"): a ring over mutual TLS (gRPC and TCP data links) sums exactly
 * like the plaintext ring, and a rank whose certificate comes from another CA reaches
 * neither the Collective service nor a data listener of a fleet rank, while the fleet's
 * ring carries on.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import type { ServiceError, StatusObject } from '@grpc/grpc-js';
import {
  CollectivePhase,
  INSECURE,
  UnavailableError,
  callUnary,
  channelCredentials,
  createClient,
  dataLinkTlsOptions,
  isDinofleetError,
} from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createTestCertificates, type TestCertificates } from '@dinofleet/proto/dev-certificates';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import type { DataLinkHello } from './data-frame.ts';
import type { DataLinkRefusal } from './data-listener.ts';
import { refuseDataLink } from './data-listener.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import { FramePool, dialDataLink } from './tcp-link.ts';
import { startTestRing, testVector } from './test-ring.ts';
import type { TestRingOptions } from './test-ring.ts';

let certs: TestCertificates;
/** A member of the fleet. */
let fleet: TransportSecurity;
/** A rank of another fleet: its own CA, its own certificate. */
let rogue: TransportSecurity;
/** Knows the fleet's (public) CA certificate, but its own certificate is another CA's. */
let rogueTrustingFleet: TransportSecurity;
/** A client holding the fleet CA but no certificate of its own. */
let caOnly: TransportSecurity;

beforeAll(async () => {
  certs = await createTestCertificates('dinofleet-collective-tls-');
  ({ fleet, rogue, rogueTrustingFleet, caOnly } = certs);
});

afterAll(async () => {
  await certs.close();
});

function bitsOf(values: Float32Array): Buffer {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

function reduceOnAll(rings: readonly RingAllReduce[], inputs: readonly Float32Array[], op: number): Promise<Float32Array[]> {
  return Promise.all(rings.map((ring, rank) => ring.allReduceSum(inputs[rank] as Float32Array, { step: 3, op })));
}

/** Every algorithm once: recursive doubling and direct (tcp default), the tcp ring, the gRPC ring. */
const VARIANTS: ReadonlyArray<{ name: string; options: TestRingOptions }> = [
  { name: 'tcp default', options: { transport: 'tcp', linkProbeBytes: 64 * 1024 } },
  { name: 'tcp ring only', options: { transport: 'tcp', smallMessageBytes: 0, directMaxRanks: 0 } },
  { name: 'grpc ring', options: { transport: 'grpc' } },
];

describe.each(VARIANTS)('a ring over mutual TLS: $name', ({ options }) => {
  it.each([2, 3])('sums bit for bit like the plaintext ring on %i ranks', async (worldSize) => {
    await using secure = await startTestRing(worldSize, options, { security: fleet });
    await using plain = await startTestRing(worldSize, options, { security: INSECURE });
    expect(secure.endpoints.map((e) => e.security.kind)).toEqual(Array(worldSize).fill('mtls'));
    let op = 0;
    // 1 and 1000 elements: recursive doubling on tcp default; 300 003 (1.2 MB): direct or ring.
    for (const length of [1, 1000, 300_003]) {
      const inputs = secure.rings.map((_, rank) => testVector(length, 31 * length + rank));
      const [overTls, overPlain] = await Promise.all([reduceOnAll(secure.rings, inputs, op), reduceOnAll(plain.rings, inputs, op)]);
      op++;
      for (let rank = 0; rank < worldSize; rank++) {
        expect(bitsOf(overTls[rank] as Float32Array).equals(bitsOf(overPlain[rank] as Float32Array))).toBe(true);
        expect(bitsOf(overTls[rank] as Float32Array).equals(bitsOf(overTls[0] as Float32Array))).toBe(true);
      }
      // And it is the sum: spot-check one element against float64.
      const i = length - 1;
      const ref = inputs.reduce((sum, input) => sum + (input[i] as number), 0);
      expect(Math.abs((overTls[0] as Float32Array)[i] as number - ref)).toBeLessThanOrEqual(worldSize * 2 ** -23 * Math.abs(ref) + 1e-30);
    }
    if (options.transport === 'tcp' && options.linkProbeBytes !== undefined) {
      // The bandwidth probe crossed the TLS link and was measured.
      expect(secure.rings.every((ring) => ring.linkBandwidth !== undefined)).toBe(true);
    }
  }, 30_000);
});

describe('a rank of a ring over mutual TLS that ends its collective while payload is arriving', () => {
  it('discards what its links still decrypt and keeps its event loop running (no spin on an ended link)', async () => {
    await using ring = await startTestRing(3, { transport: 'tcp', linkProbeBytes: 0, chunkBytes: 1 << 20, timeoutMs: 20_000, stallTimeoutMs: 20_000 }, { security: fleet });
    // 8 M elements (32 MiB): every link is mid-payload most of the time. A first round
    // brings the links up, so the second is cut while payload flows.
    const length = 8 << 20;
    await Promise.all(ring.rings.map((r, rank) => r.allReduceSum(testVector(1 << 16, rank), { step: 0, op: 0 })));
    const pending = ring.rings.map((r, rank) => r.allReduceSum(testVector(length, rank), { step: 0, op: 1 }).catch((err: unknown) => err));
    await new Promise((resolve) => setTimeout(resolve, 100));
    await (ring.rings[0] as RingAllReduce).close();
    // Rank 0's timers still fire while its links wind down (they are destroyed 1 s after an
    // abort; a link that spun on its ended socket blocked this process for good).
    for (let i = 0; i < 15; i++) {
      const t0 = performance.now();
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(performance.now() - t0).toBeLessThan(1_000);
    }
    const outcomes = await Promise.all(pending);
    expect(outcomes.every((o) => o instanceof Error)).toBe(true);
  }, 30_000);
});

/** Calls OpenDataLink on `address` with `security`; resolves with the error code ('OK' on success). */
async function openDataLinkAs(address: string, security: TransportSecurity, job: string, generation: number): Promise<{ code: string; token?: Uint8Array }> {
  const client = createClient(CollectiveExchangeClient, address, { credentials: channelCredentials(security) });
  try {
    const response = await callUnary(client, 'openDataLink', { jobId: job, generation, senderRank: 0, receiverRank: 1 }, { deadlineMs: 5_000 });
    return { code: 'OK', token: response.token };
  } catch (err) {
    return { code: isDinofleetError(err) ? err.code : String(err) };
  } finally {
    client.close();
  }
}

/** Opens an Exchange stream to `address` with `security` and writes one chunk; resolves with how it ended. */
async function exchangeAs(address: string, security: TransportSecurity): Promise<number> {
  const client = createClient(CollectiveExchangeClient, address, { credentials: channelCredentials(security) });
  try {
    const stream = client.exchange();
    const ended = new Promise<number>((resolve) => {
      stream.on('error', (err: ServiceError) => resolve(err.code));
      stream.on('status', (s: StatusObject) => resolve(s.code));
      stream.on('data', () => undefined);
    });
    stream.write({
      jobId: 'test-job', generation: 1, step: 0, round: 0, phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER,
      sequence: 0, fromRank: 1, segment: 1, offset: 0, payload: Buffer.alloc(4),
    });
    return await ended;
  } finally {
    client.close();
  }
}

function helloFor(token: Uint8Array, job: string, generation: number): DataLinkHello {
  return { token, job, generation, senderRank: 0, receiverRank: 1, worldSize: 2, settings: 'rogue' };
}

describe('a rank whose certificate comes from another CA', () => {
  it('cannot call the Collective service or open a data link of a fleet rank, and the fleet ring carries on', async () => {
    const refusals: DataLinkRefusal[] = [];
    await using ring = await startTestRing(2, { transport: 'tcp', linkProbeBytes: 0 }, { security: fleet, onRefusedDataLink: (r) => refusals.push(r) });
    const target = ring.endpoints[0] as CollectiveEndpoint;
    const address = target.address;
    const before = await reduceOnAll(ring.rings, [testVector(5000, 1), testVector(5000, 2)], 0);

    // gRPC: the handshake fails for a foreign certificate, no certificate, or plaintext.
    for (const security of [rogue, rogueTrustingFleet, caOnly, INSECURE]) {
      expect(await openDataLinkAs(address, security, 'test-job', 1)).toEqual({ code: 'UNAVAILABLE' });
      expect(await exchangeAs(address, security)).toBe(status.UNAVAILABLE);
    }

    // A data-link sink the rogue would reach if its hello got through.
    const routed: DataLinkHello[] = [];
    const unregister = target.register('rogue-job', 1, {
      acceptDataLink: (socket, hello) => {
        routed.push(hello);
        refuseDataLink(socket, 'routed to the test sink');
      },
      abort: () => undefined,
    });
    try {
      // Even holding a valid token (which only a fleet member can get), the rogue's data
      // link dies in the TLS handshake: its hello never reaches the token check or routing.
      const issued = await openDataLinkAs(address, fleet, 'rogue-job', 1);
      expect(issued.code).toBe('OK');
      const dial = (tls: ReturnType<typeof dataLinkTlsOptions> | undefined) =>
        dialDataLink({
          host: '127.0.0.1',
          port: target.dataPort,
          hello: helloFor(issued.token as Uint8Array, 'rogue-job', 1),
          pool: new FramePool(1024),
          connectTimeoutMs: 5_000,
          label: 'fleet rank 0',
          ...(tls !== undefined && { tls }),
        });
      if (rogue.kind !== 'mtls' || rogueTrustingFleet.kind !== 'mtls' || fleet.kind !== 'mtls') throw new Error('expected mtls');
      await expect(dial(dataLinkTlsOptions(rogueTrustingFleet.material))).rejects.toBeInstanceOf(UnavailableError);
      await expect(dial(dataLinkTlsOptions(rogue.material))).rejects.toBeInstanceOf(UnavailableError);
      await expect(dial(undefined)).rejects.toBeInstanceOf(UnavailableError);
      // A client that offers no certificate at all.
      await expect(dial({ ca: fleet.material.ca, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined })).rejects.toBeInstanceOf(UnavailableError);
      await expect.poll(() => refusals.length).toBeGreaterThanOrEqual(4);
      expect(routed).toEqual([]);
      expect(refusals.every((r) => r.stage === 'handshake' && r.remoteAddress.startsWith('127.0.0.1:'))).toBe(true);
      const reasons = refusals.map((r) => r.reason).join('\n');
      expect(reasons).toMatch(/client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
      expect(reasons).toMatch(/peer did not return a certificate/);
      // The token is still unused: a fleet member's link with it reaches the routing.
      await expect(dial(dataLinkTlsOptions(fleet.material))).rejects.toThrow(/routed to the test sink/);
      expect(routed.map((hello) => hello.job)).toEqual(['rogue-job']);
    } finally {
      unregister();
    }

    // A plaintext port scan of the data listener: dropped at the handshake too.
    const scan = net.connect({ host: '127.0.0.1', port: target.dataPort });
    scan.on('error', () => undefined);
    scan.write('GET / HTTP/1.0\r\n\r\n');
    await new Promise((resolve) => scan.once('close', resolve));

    // The fleet's ring never noticed.
    const after = await reduceOnAll(ring.rings, [testVector(5000, 1), testVector(5000, 2)], 1);
    expect(bitsOf(after[0] as Float32Array).equals(bitsOf(before[0] as Float32Array))).toBe(true);
    expect(bitsOf(after[1] as Float32Array).equals(bitsOf(before[1] as Float32Array))).toBe(true);
  }, 30_000);

  it('is refused as a peer: a fleet rank does not send to a server with a foreign certificate', async () => {
    await using fleetEndpoint = new CollectiveEndpoint({ security: fleet });
    await using rogueEndpoint = new CollectiveEndpoint({ security: rogueTrustingFleet });
    const peers = [(await fleetEndpoint.start()).address, (await rogueEndpoint.start()).address];
    for (const transport of ['tcp', 'grpc'] as const) {
      const options = { transport, job: `j-${transport}`, generation: 1, peers, timeoutMs: 5_000, connectTimeoutMs: 3_000 };
      await using honest = new RingAllReduce({ ...options, rank: 0, endpoint: fleetEndpoint });
      await using intruder = new RingAllReduce({ ...options, rank: 1, endpoint: rogueEndpoint });
      const results = await Promise.allSettled([honest.allReduceSum(testVector(1000, 1), { step: 0, op: 0 }), intruder.allReduceSum(testVector(1000, 2), { step: 0, op: 0 })]);
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    }
  }, 30_000);
});
