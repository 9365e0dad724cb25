import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { FailedPreconditionError, JobState } from '@dinofleet/proto';
import { ShardLeases } from './shard-leases.ts';
import { epochShardOrder, perRankBatch, planShards } from './shard-plan.ts';
import { jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv } from './testing/test-env.ts';

let env: TestEnv;
beforeAll(async () => {
  env = await startTestEnv(30);
});
afterAll(async () => {
  await env.close();
});

describe('shard plan arithmetic', () => {
  it('splits the batch and the manifest as docs/cluster.md says', () => {
    expect([0, 1, 2].map((r) => perRankBatch(8, 3, r))).toEqual([3, 3, 2]);
    expect(planShards(10, 3)).toEqual([
      { begin: 0, end: 4 },
      { begin: 4, end: 7 },
      { begin: 7, end: 10 },
    ]);
    const order = epochShardOrder(7, 0, 10);
    expect([...order].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(epochShardOrder(7, 0, 10)).toEqual(order);
    expect(epochShardOrder(7, 1, 10)).not.toEqual(order);
  });
});

describe('ShardLeases', () => {
  it('hands back a lease still being taken when every lease is released (a generation ending mid-AcquireLease)', async () => {
    const connection = new Redis(env.redis.url, { maxRetriesPerRequest: null });
    const leases = new ShardLeases({
      connection,
      prefix: 'release-race',
      jobId: 'race',
      shards: planShards(30, 3),
      seed: 1,
      leaseEpoch: -1,
      saveLeaseEpoch: () => Promise.resolve(),
    });
    try {
      // Rank 1 of the ending generation asks; the next generation is formed before its
      // lease is taken. The release must wait for that lease and hand it back.
      const stale = leases.acquire(1);
      const released = leases.release();
      const first = await leases.acquire(0);
      await Promise.all([stale, released]);
      // Handed back at the front of the queue, it is the next generation's first lease;
      // nothing stays held by the ending generation's rank 1.
      expect(first.leaseId).toBe((await stale).leaseId);
      expect(leases.held().map((h) => [h.leaseId, h.rank])).toEqual([[first.leaseId, 0]]);
      const states = await leases.snapshot();
      expect(states.filter((l) => l.state === 'active').map((l) => l.id)).toEqual([first.leaseId]);
      expect(states.filter((l) => l.state === 'waiting')).toHaveLength(2);
    } finally {
      await leases.obliterate();
      connection.disconnect();
    }
  });
});

describe('shard leases through AcquireLease', () => {
  it('cover every record exactly once per epoch across two ranks, and the ledger matches', async () => {
    await using c = await startTestCoordinator(env);
    // 30 records, 3 shards, batch 5 (3 + 2): 6 steps per epoch; 14 steps reach epoch 2.
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'cover', steps: 14, batch: 5, shards: 3 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 15 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 15 });
    await c.waitForJob(jobId, (j) => j.committedStep >= 2);

    // A stale generation or a worker asking for another rank's lease is refused.
    await expect(w0.acquireLease({ jobId, generation: 7, rank: 0 })).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(w0.acquireLease({ jobId, generation: 1, rank: 1 })).rejects.toBeInstanceOf(FailedPreconditionError);

    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(14);
    const trained = [...w0.trained, ...w1.trained];
    expect(trained).toHaveLength(14 * 5);
    const byEpoch = (epoch: number): number[] => trained.filter((t) => t.epoch === epoch).map((t) => t.sampleId).sort((a, b) => a - b);
    expect(byEpoch(0)).toEqual(env.recordOffsets);
    expect(new Set(byEpoch(1)).size).toBe(byEpoch(1).length);
    expect(new Set(byEpoch(2)).size).toBe(byEpoch(2).length);
    expect(byEpoch(0).length + byEpoch(1).length + byEpoch(2).length).toBe(70);

    // The ledger holds each committed step's ids in rank order.
    const samples = await c.coordinator.store.samples(jobId);
    for (let step = 1; step <= 14; step++) {
      const rank0 = w0.trained.filter((t) => t.step === step).map((t) => t.sampleId);
      const rank1 = w1.trained.filter((t) => t.step === step).map((t) => t.sampleId);
      expect(samples.get(step)).toEqual([...rank0, ...rank1]);
    }
    // The job finished: its lease queue is gone.
    const leftovers = await c.coordinator.store.redis.keys(`${c.prefix}:leases-${jobId}:*`);
    expect(leftovers).toEqual([]);
  });

  it('derives total_steps from epochs and the manifest', async () => {
    await using c = await startTestCoordinator(env, { workerWaitSeconds: 60 });
    // 30 records of 19 bytes: ceil(2 epochs × 30 / 4) = 15 steps.
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'epochs', epochs: 2, batch: 4 }), idempotencyKey: '' });
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_STARTING);
    expect(job.totalSteps).toBe(15);
  });
});
