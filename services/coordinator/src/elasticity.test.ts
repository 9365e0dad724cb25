import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobState } from '@dinofleet/proto';
import type { ControlResponse } from '@dinofleet/proto';
import type { CheckpointData } from './checkpoint-commit.ts';
import { verifySampleLedger } from './sample-ledger.ts';
import type { FakeWorker } from './testing/fake-worker.ts';
import { jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv } from './testing/test-env.ts';

let env: TestEnv;
beforeAll(async () => {
  env = await startTestEnv(30);
});
afterAll(async () => {
  await env.close();
});

function acks(worker: FakeWorker): { step: number; hold: boolean }[] {
  return worker.received.flatMap((m: ControlResponse) => (m.message?.$case === 'commitAck' ? [{ step: m.message.commitAck.step, hold: m.message.commitAck.hold }] : []));
}

async function readJson<T>(key: string): Promise<T> {
  const response = await env.s3.send(new GetObjectCommand({ Bucket: env.bucket, Key: key }));
  return JSON.parse(await (response.Body?.transformToString() ?? Promise.resolve('null'))) as T;
}

describe('generations at step boundaries', () => {
  it('scale up: the ranks are held at a commit and a joiner gets the state from rank 0', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'up', steps: 30, workers: 2, maxWorkers: 3, batch: 6 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 15 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 15 });
    await c.waitForJob(jobId, (j) => j.committedStep >= 2);
    expect(await c.call('scaleJob', { jobId, workers: 3 })).toMatchObject({ workersDesired: 3 });
    const w2 = c.worker({ workerId: 'w-2', stepDelayMs: 15 });
    const joined = await w2.waitForAssignment(10_000);
    const first = await w0.waitForAssignment();
    expect(joined).toMatchObject({ generation: 2, rank: 2, perRankBatch: 2, stateSource: first.ranks[0]?.collectiveAddress, restoreCheckpointUri: '' });
    expect(joined.ranks.map((r) => r.workerId)).toEqual(['w-0', 'w-1', 'w-2']);
    const survivor = await w0.waitForAssignment(10_000, 2);
    expect(survivor.stateSource).toBe('');
    expect(survivor.startStep).toBe(joined.startStep);
    // The commit before the new generation held every rank; no other did.
    const held = acks(w1).filter((a) => a.hold);
    expect(held).toEqual([{ step: joined.startStep, hold: true }]);
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job).toMatchObject({ generation: 2, workersActive: 0 });
    expect(job.progress?.worldSize).toBe(3);
    expect(await c.metrics()).toContain(`dinofleet_job_reconfigurations_total{job="${jobId}",kind="scale"} 1`);
    const ledger = await verifySampleLedger(c.coordinator.store.redis, c.prefix, jobId, env.recordOffsets);
    expect(ledger).toMatchObject({ lost: 0, duplicated: 0, samplesCommitted: 180 });
  });

  it('graceful leave and scale-down: the leaver and the highest rank get Stop at a boundary', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'down', steps: 40, workers: 3, minWorkers: 1, maxWorkers: 3, batch: 6 });
    const { jobId } = await c.call('submitJob', { spec, idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 15 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 15 });
    const w2 = c.worker({ workerId: 'w-2', stepDelayMs: 15 });
    await c.waitForJob(jobId, (j) => j.committedStep >= 2);
    w1.leave('sigterm', true);
    expect(await w1.waitForStop()).toBe('left: sigterm');
    const second = await w0.waitForAssignment(10_000, 2);
    expect(second.ranks.map((r) => r.workerId)).toEqual(['w-0', 'w-2']);
    expect(acks(w0).filter((a) => a.hold)).toEqual([{ step: second.startStep, hold: true }]);

    await c.call('scaleJob', { jobId, workers: 1 });
    expect(await w2.waitForStop()).toBe('scale-down');
    const third = await w0.waitForAssignment(10_000, 3);
    expect(third.ranks.map((r) => r.workerId)).toEqual(['w-0']);
    expect(third.perRankBatch).toBe(6);
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.generation).toBe(3);
    const metrics = await c.metrics();
    expect(metrics).toContain(`dinofleet_job_reconfigurations_total{job="${jobId}",kind="leave"} 1`);
    expect(metrics).toContain(`dinofleet_job_reconfigurations_total{job="${jobId}",kind="scale"} 1`);
    // A worker that left gracefully is never handed out again.
    expect(c.coordinator.registry.idle().map((s) => s.workerId).sort()).toEqual(['w-0', 'w-2']);
  });

  it('StepFailed: after a short delay the generation is aborted and formed again with the live ranks', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'failed-step', steps: 10 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 10 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 10, beforeCommit: (step) => step !== 3 || w1.assignment?.generation !== 1 });
    await c.waitForJob(jobId, (j) => j.committedStep === 2);
    w1.stepFailed('ring call to rank 0 timed out');
    const abort = await w0.waitFor((m) => (m.message?.$case === 'abort' ? m.message.abort.reason : undefined));
    expect(abort).toBe('rank 1 (worker w-1) failed step 3 in generation 1: ring call to rank 0 timed out');
    const next = await w1.waitForAssignment(10_000, 2);
    expect(next.ranks.map((r) => r.workerId)).toEqual(['w-0', 'w-1']);
    expect(next.stateSource).toBe('');
    await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(await c.metrics()).toContain(`dinofleet_job_recoveries_total{job="${jobId}",cause="step_failed"} 1`);
  });
});

describe('non-finite steps and checkpoints', () => {
  it('three non-finite steps roll back to the latest checkpoint on every rank', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'nan', steps: 8, checkpointPrefix: 'ckpt-a/', checkpointEvery: 3 });
    const { jobId } = await c.call('submitJob', { spec, idempotencyKey: '' });
    // Step 5 is non-finite the first three times it runs on each rank.
    const nanThrice = (): ((step: number) => boolean) => {
      let left = 3;
      return (step) => step === 5 && left-- > 0;
    };
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 5, nonFinite: nanThrice() });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 5, nonFinite: nanThrice() });
    const rollback = await w1.waitFor(
      (m) => (m.message?.$case === 'assignment' && m.message.assignment.restoreCheckpointUri !== '' ? m.message.assignment : undefined),
      15_000,
    );
    const uri = `s3://${env.bucket}/ckpt-a/${jobId}/step-00000003/`;
    expect(rollback).toMatchObject({ restoreCheckpointUri: uri, startStep: 3, stateSource: '' });
    expect(w0.assignments().at(-1)?.restoreCheckpointUri).toBe(uri);
    // Generations 2 and 3 retried step 5 from step 4 with the same ranks; 4 rolled back.
    expect(w0.assignments().map((a) => [a.generation, a.startStep])).toEqual([
      [1, 0],
      [2, 4],
      [3, 4],
      [4, 3],
    ]);
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(8);
    const metrics = await c.metrics();
    expect(metrics).toContain(`dinofleet_job_nonfinite_steps_total{job="${jobId}"} 3`);
    expect(metrics).toContain(`dinofleet_job_rollbacks_total{job="${jobId}"} 1`);
    expect(metrics).toContain(`dinofleet_job_steps_lost_total{job="${jobId}"} 1`);
    expect((await c.coordinator.store.events(jobId)).filter((e) => e.kind === 'rollback')).toHaveLength(1);

    // The checkpoints the coordinator completed: data.json, then the manifest listing it.
    const data = await readJson<CheckpointData>(`ckpt-a/${jobId}/step-00000006/data.json`);
    expect(data).toMatchObject({ step: 6, leaseEpoch: 0, samplesCommitted: 24 });
    // 24 of the 30 records (19 bytes each) read: 6 left in the listed leases.
    expect(data.leases.reduce((n, l) => n + (l.end - l.cursor), 0)).toBe(6 * 19);
    const manifest = await readJson<{ step: number; files: { key: string }[] }>(`ckpt-a/${jobId}/step-00000006/manifest.json`);
    expect(manifest.files.map((f) => f.key)).toEqual(['model.safetensors', 'state.json', 'data.json']);
    expect(await readJson(`ckpt-a/${jobId}/latest.json`)).toEqual({ step: 8, prefix: `s3://${env.bucket}/ckpt-a/${jobId}/step-00000008/` });
    // Steps 4-5 were thrown away and trained again: each record of epoch 0 still once.
    const ledger = await verifySampleLedger(c.coordinator.store.redis, c.prefix, jobId, env.recordOffsets);
    expect(ledger).toEqual({ lost: 0, duplicated: 0, epochsComplete: 1, samplesCommitted: 32 });
  });

  it('fails when the loss stays non-finite after the rollback', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'nan-forever', steps: 8, checkpointPrefix: 'ckpt-b/', checkpointEvery: 3 });
    const { jobId } = await c.call('submitJob', { spec, idempotencyKey: '' });
    c.worker({ workerId: 'w-0', nonFinite: (step) => step === 5 });
    c.worker({ workerId: 'w-1', nonFinite: (step) => step === 5 });
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_FAILED);
    expect(job.error).toBe(
      'non-finite loss at step 5 persisted after rollback to step 3: lower the learning rate (spec.recipe.overrides), check the data, then resubmit',
    );
  });

  it('fails at once without a checkpoint to roll back to', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'nan-nockpt', steps: 8, maxNonFiniteSteps: 2 }), idempotencyKey: '' });
    c.worker({ workerId: 'w-0', nonFinite: (step) => step === 2 });
    c.worker({ workerId: 'w-1', nonFinite: (step) => step === 2 });
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_FAILED);
    expect(job.error).toMatch(/^non-finite loss at step 2 for 2 steps in a row and the job has no checkpoint to roll back to/);
    expect(job.committedStep).toBe(1);
  });

  it('restores the checkpoint on every rank when every rank is lost', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'all-lost', steps: 8, checkpointPrefix: 'ckpt-c/', checkpointEvery: 2 });
    const { jobId } = await c.call('submitJob', { spec, idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', beforeCommit: (step) => step <= 3 });
    const w1 = c.worker({ workerId: 'w-1', beforeCommit: (step) => step <= 3 });
    await c.waitForJob(jobId, (j) => j.committedStep === 3);
    w0.disconnect();
    w1.disconnect();
    const w2 = c.worker({ workerId: 'w-2' });
    const w3 = c.worker({ workerId: 'w-3' });
    const restoring = (m: ControlResponse) => (m.message?.$case === 'assignment' && m.message.assignment.restoreCheckpointUri !== '' ? m.message.assignment : undefined);
    const assignment = await w2.waitFor(restoring, 15_000);
    expect(assignment).toMatchObject({ startStep: 2, restoreCheckpointUri: `s3://${env.bucket}/ckpt-c/${jobId}/step-00000002/`, stateSource: '' });
    expect((await w3.waitFor(restoring)).restoreCheckpointUri).toBe(assignment.restoreCheckpointUri);
    await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(await c.metrics()).toContain(`dinofleet_job_steps_lost_total{job="${jobId}"} 1`);
    const ledger = await verifySampleLedger(c.coordinator.store.redis, c.prefix, jobId, env.recordOffsets);
    expect(ledger).toMatchObject({ lost: 0, duplicated: 0, samplesCommitted: 32 });
  });
});

describe('verifySampleLedger', () => {
  it('counts complete epochs, lost records of epoch 0 and duplicates', async () => {
    await using c = await startTestCoordinator(env);
    const redis = c.coordinator.store.redis;
    const key = c.coordinator.store.keys.samples('ledger-job');
    await redis.hset(key, {
      1: JSON.stringify({ ids: [0, 10, 20], epochs: [0, 0, 0] }),
      2: JSON.stringify({ ids: [20, 40], epochs: [0, 0] }),
      3: JSON.stringify({ ids: [0, 10, 20, 30], epochs: [1, 1, 1, 1] }),
      4: JSON.stringify({ ids: [40, 10], epochs: [1, 2] }),
    });
    const offsets = [0, 10, 20, 30, 40];
    // Epoch 0 misses 30 and has 20 twice; epoch 1 is complete.
    expect(await verifySampleLedger(redis, c.prefix, 'ledger-job', offsets)).toEqual({ lost: 1, duplicated: 1, epochsComplete: 1, samplesCommitted: 11 });
    // An epoch with fewer samples than records, among the newest two, may still be read.
    await redis.hdel(key, '2', '3', '4');
    expect(await verifySampleLedger(redis, c.prefix, 'ledger-job', offsets)).toEqual({ lost: 0, duplicated: 0, epochsComplete: 0, samplesCommitted: 3 });
    // One with an epoch's worth of samples that misses a record has lost it.
    await redis.hset(key, { 2: JSON.stringify({ ids: [20, 40], epochs: [0, 0] }) });
    expect(await verifySampleLedger(redis, c.prefix, 'ledger-job', offsets)).toEqual({ lost: 1, duplicated: 1, epochsComplete: 0, samplesCommitted: 5 });
  });
});
