import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { JobState } from '@dinofleet/proto';
import { JOBS_QUEUE } from './coordinator.ts';
import { stepHash } from './testing/fake-worker.ts';
import { jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv } from './testing/test-env.ts';

let env: TestEnv;
beforeAll(async () => {
  env = await startTestEnv(30);
});
afterAll(async () => {
  await env.close();
});

describe('a coordinator restart', () => {
  it('keeps terminal and queued jobs, and the new coordinator runs the queued ones', async () => {
    const first = await startTestCoordinator(env);
    const prefix = first.prefix;
    const done = await first.call('submitJob', { spec: jobSpec(env, { name: 'done', steps: 2, workers: 1 }), idempotencyKey: '' });
    const worker = first.worker({ workerId: 'w-0' });
    await first.waitForJob(done.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    await worker.close();
    const waiting = await first.call('submitJob', { spec: jobSpec(env, { name: 'waiting', steps: 2, workers: 1 }), idempotencyKey: 'w' });
    const queued = await first.call('submitJob', { spec: jobSpec(env, { name: 'queued', steps: 2, workers: 1 }), idempotencyKey: '' });
    await first.waitForJob(waiting.jobId, (j) => j.state === JobState.JOB_STATE_STARTING);
    await first.close();

    await using second = await startTestCoordinator(env, { prefix });
    const { job } = await second.call('getJob', { jobId: done.jobId });
    expect(job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(job?.committedStep).toBe(2);
    const listed = await second.call('listJobs', { pageSize: 0, pageToken: '', states: [] });
    expect(listed.jobs.map((j) => j.jobId)).toEqual([queued.jobId, waiting.jobId, done.jobId]);
    expect((await second.call('submitJob', { spec: jobSpec(env, { name: 'waiting' }), idempotencyKey: 'w' })).jobId).toBe(waiting.jobId);

    second.worker({ workerId: 'w-1' });
    await second.waitForJob(waiting.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    await second.waitForJob(queued.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
  });

  it('continues a running job in a new generation when its workers re-register with the committed state', async () => {
    const first = await startTestCoordinator(env);
    const prefix = first.prefix;
    const { jobId } = await first.call('submitJob', { spec: jobSpec(env, { name: 'resume', steps: 6 }), idempotencyKey: '' });
    first.worker({ workerId: 'w-0', beforeCommit: (step) => step <= 3 });
    first.worker({ workerId: 'w-1', beforeCommit: (step) => step <= 3 });
    await first.waitForJob(jobId, (j) => j.committedStep === 3);
    await first.close();

    await using second = await startTestCoordinator(env, { prefix });
    const held = { jobId, stateStep: 3, stateHash: stepHash(3) };
    const w0 = second.worker({ workerId: 'w-0', held });
    const w1 = second.worker({ workerId: 'w-1', held });
    const assignment = await w0.waitForAssignment(40_000);
    expect(assignment.generation).toBe(2);
    expect(assignment.startStep).toBe(3);
    const job = await second.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(6);
    expect(job.generation).toBe(2);
    // No record of an epoch was trained twice across both coordinators: steps 1-3 (12
    // records, all epoch 0) from the ledger, steps 4-6 from the new workers.
    const samples = await second.coordinator.store.samples(jobId);
    expect([...samples.keys()].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6]);
    const before = [1, 2, 3].flatMap((step) => samples.get(step) ?? []);
    const after = [...w0.trained, ...w1.trained];
    const epoch0 = [...before, ...after.filter((t) => t.epoch === 0).map((t) => t.sampleId)];
    expect(new Set(epoch0).size).toBe(epoch0.length);
    expect(epoch0.length + after.filter((t) => t.epoch === 1).length).toBe(24);
    for (const step of [4, 5, 6]) {
      const ranked = [w0, w1].flatMap((w) => w.trained.filter((t) => t.step === step).map((t) => t.sampleId));
      expect(samples.get(step)).toEqual(ranked);
    }
  });

  it('resumes with a worker that holds the committed step only as its pending state', async () => {
    const first = await startTestCoordinator(env);
    const prefix = first.prefix;
    const { jobId } = await first.call('submitJob', { spec: jobSpec(env, { name: 'pending', steps: 8 }), idempotencyKey: '' });
    first.worker({ workerId: 'w-0', beforeCommit: (step) => step <= 4 });
    first.worker({ workerId: 'w-1', beforeCommit: (step) => step <= 4 });
    await first.waitForJob(jobId, (j) => j.committedStep === 4);
    await first.close();

    // w-0 sent CommitStep 4 but its ack was lost: it holds step 3, and step 4 as pending.
    await using second = await startTestCoordinator(env, { prefix });
    const w0 = second.worker({ workerId: 'w-0', held: { jobId, stateStep: 3, stateHash: stepHash(3), pendingStep: 4, pendingHash: stepHash(4) } });
    const w1 = second.worker({ workerId: 'w-1', held: { jobId, stateStep: 4, stateHash: stepHash(4) } });
    const assignment = await w0.waitForAssignment(20_000);
    expect(assignment).toMatchObject({ generation: 2, startStep: 4, stateSource: '', restoreCheckpointUri: '' });
    expect(Buffer.from(assignment.startStateHash)).toEqual(stepHash(4));
    expect((await w1.waitForAssignment()).stateSource).toBe('');
    const job = await second.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(8);
    expect(await second.metrics()).toContain(`dinofleet_job_recoveries_total{job="${jobId}",cause="coordinator_restart"} 1`);
  });

  it('restarts from step 0 when no worker holds the committed state and there is no checkpoint', async () => {
    const first = await startTestCoordinator(env);
    const prefix = first.prefix;
    const { jobId } = await first.call('submitJob', { spec: jobSpec(env, { name: 'stale', steps: 6 }), idempotencyKey: '' });
    first.worker({ workerId: 'w-0', beforeCommit: (step) => step <= 2 });
    first.worker({ workerId: 'w-1', beforeCommit: (step) => step <= 2 });
    await first.waitForJob(jobId, (j) => j.committedStep === 2);
    await first.close();

    await using second = await startTestCoordinator(env, { prefix, resumeWaitSeconds: 1 });
    // Another state of the job: an idle worker like any other.
    const w0 = second.worker({ workerId: 'w-0', held: { jobId, stateStep: 1, stateHash: stepHash(1) } });
    const assignment = await w0.waitForAssignment(20_000);
    expect(assignment).toMatchObject({ generation: 2, startStep: 0, stateSource: '', restoreCheckpointUri: '' });
    expect(assignment.startStateHash).toHaveLength(0);
    const job = await second.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(6);
    const events = await second.coordinator.store.events(jobId);
    expect(events.find((e) => e.kind === 'checkpoint_restore')?.message).toBe(
      `no worker re-registered holding step 2 (hash ${stepHash(2).toString('hex').slice(0, 4)}…) within 1 s after a coordinator restart: no complete checkpoint, restarting from step 0`,
    );
    expect(await second.metrics()).toContain(`dinofleet_job_steps_lost_total{job="${jobId}"} 2`);
    // The ledger holds the steps of the second run only, each record of epoch 0 once.
    const samples = await second.coordinator.store.samples(jobId);
    expect([...samples.keys()].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(samples.get(1)).toEqual(w0.trained.filter((t) => t.step === 1).map((t) => t.sampleId));
  });

  it('moves an active job of a killed coordinator back to waiting at boot', async () => {
    const first = await startTestCoordinator(env);
    const prefix = first.prefix;
    const { jobId } = await first.call('submitJob', { spec: jobSpec(env, { name: 'orphan', steps: 4, workers: 1 }), idempotencyKey: '' });
    await first.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_STARTING);
    await first.close();
    // As a SIGKILLed coordinator leaves it: active, under a lock nobody renews or releases.
    const connection = new Redis(env.redis.url, { maxRetriesPerRequest: null });
    const killed = new Worker(JOBS_QUEUE, null, { connection, prefix, autorun: false, lockDuration: 60_000 });
    expect((await killed.getNextJob('killed-coordinator'))?.id).toBe(jobId);
    await killed.close(true);
    const started = Date.now();
    await using second = await startTestCoordinator(env, { prefix });
    second.worker({ workerId: 'w-0' });
    const job = await second.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED, 15_000);
    expect(job.committedStep).toBe(4);
    // Far sooner than the 60 s lock would have allowed.
    expect(Date.now() - started).toBeLessThan(15_000);
    connection.disconnect();
  });
});
