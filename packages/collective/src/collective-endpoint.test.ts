import { describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import type { ServiceError, StatusObject } from '@grpc/grpc-js';
import { CollectivePhase, GrpcServer, createClient } from '@dinofleet/proto';
import type { ExchangeRequest } from '@dinofleet/proto';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import { delay, testVector } from './test-ring.ts';

function chunk(overrides: Partial<ExchangeRequest>): ExchangeRequest {
  return {
    jobId: 'j', generation: 5, step: 0, round: 0, phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER,
    sequence: 0, fromRank: 1, segment: 1, offset: 0, payload: Buffer.alloc(4), ...overrides,
  };
}

/** Opens a raw Exchange stream to `address`, writes `chunks`, resolves with how it ended. */
async function sendRaw(address: string, chunks: ExchangeRequest[]): Promise<ServiceError | undefined> {
  const client = createClient(CollectiveExchangeClient, address);
  try {
    const stream = client.exchange();
    const ended = new Promise<ServiceError | undefined>((resolve) => {
      stream.on('error', (err: ServiceError) => resolve(err));
      stream.on('status', (s: StatusObject) => {
        if (s.code === status.OK) resolve(undefined);
      });
      stream.on('data', () => undefined);
    });
    for (const message of chunks) stream.write(message);
    return await ended;
  } finally {
    client.close();
  }
}

describe('CollectiveEndpoint', () => {
  it('refuses a chunk of an older generation as stale (ABORTED)', async () => {
    await using e0 = new CollectiveEndpoint();
    const { address } = await e0.start();
    await using _ring = new RingAllReduce({ transport: 'grpc', job: 'j', generation: 5, rank: 0, peers: [address, '127.0.0.1:1'], endpoint: e0 });
    const err = await sendRaw(address, [chunk({ generation: 4 })]);
    expect(err?.code).toBe(status.ABORTED);
    expect(err?.details).toContain('stale generation 4');
  });

  it('drops a stream whose generation changes mid-stream (ABORTED)', async () => {
    await using e0 = new CollectiveEndpoint();
    const { address } = await e0.start();
    await using ring = new RingAllReduce({ transport: 'grpc', job: 'j', generation: 5, rank: 0, peers: [address, '127.0.0.1:1'], endpoint: e0 });
    const err = await sendRaw(address, [chunk({}), chunk({ sequence: 1, generation: 6 })]);
    expect(err?.code).toBe(status.ABORTED);
    expect(err?.details).toContain('stale generation');
    // The ring abandons the generation.
    await expect(ring.allReduceSum(testVector(4, 1), { step: 0, op: 0 })).rejects.toThrow(/stale generation/);
  });

  it('holds a stream for a generation this rank has not entered yet', async () => {
    // Rank 0 enters generation 2 and starts sending before rank 1 has built its ring.
    await using server = new GrpcServer();
    await using e1 = new CollectiveEndpoint({ server }); // shared-server mode
    await using e0 = new CollectiveEndpoint();
    const peers = [(await e0.start()).address, (await e1.start()).address];
    await using ring0 = new RingAllReduce({ transport: 'grpc', job: 'j', generation: 2, rank: 0, peers, endpoint: e0, chunkBytes: 8 });
    const inputs = [testVector(33, 1), testVector(33, 2)];
    const first = ring0.allReduceSum(inputs[0] as Float32Array, { step: 3, op: 0 });
    await delay(150);
    await using ring1 = new RingAllReduce({ transport: 'grpc', job: 'j', generation: 2, rank: 1, peers, endpoint: e1, chunkBytes: 8 });
    const [r0, r1] = await Promise.all([first, ring1.allReduceSum(inputs[1] as Float32Array, { step: 3, op: 0 })]);
    expect(Buffer.from(r0.buffer).equals(Buffer.from(r1.buffer))).toBe(true);
    expect(r0[5]).toBe(Math.fround((inputs[0]?.[5] as number) + (inputs[1]?.[5] as number)));
  });

  it('refuses a stream nobody claims within unclaimedStreamTimeoutMs', async () => {
    await using e0 = new CollectiveEndpoint({ unclaimedStreamTimeoutMs: 100 });
    const { address } = await e0.start();
    const err = await sendRaw(address, [chunk({ generation: 9 })]);
    expect(err?.code).toBe(status.ABORTED);
    expect(err?.details).toContain('no collective for job j generation 9');
  });
});
