import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, JobState, NotFoundError, UnavailableError } from '@dinofleet/proto';
import { verifySampleLedger } from './sample-ledger.ts';
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

describe('a job with two fake workers', () => {
  it('commits every step, succeeds, and reports progress, watch messages and metrics', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId, created, state } = await c.call('submitJob', { spec: jobSpec(env, { name: 'ok', steps: 5, batch: 4 }), idempotencyKey: '' });
    expect(created).toBe(true);
    expect(state).toBe(JobState.JOB_STATE_QUEUED);
    expect(jobId).toMatch(/^ok-[a-z2-7]{8}$/);
    const watching = c.watch(jobId);
    const w0 = c.worker({ workerId: 'w-b' });
    const w1 = c.worker({ workerId: 'w-a' });

    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(5);
    expect(job.totalSteps).toBe(5);
    expect(job.generation).toBe(1);
    expect(job.progress?.step).toBe(5);
    expect(job.progress?.worldSize).toBe(2);
    // Loss parts are averaged over ranks: rank 0 sends total 1, rank 1 total 2.
    expect(job.progress?.losses.total).toBeCloseTo(1.5);
    expect(job.progress?.lr).toBeCloseTo(0.001);
    expect(job.finishedAtUnixMs).toBeGreaterThanOrEqual(job.startedAtUnixMs);
    expect(job.spec).toContain('name: ok');

    // Ranks are the workers sorted by id; the batch of 4 splits 2 + 2.
    const a1 = w1.assignment ?? (await w1.waitForAssignment());
    const a0 = await w0.waitForAssignment();
    expect(a1.rank).toBe(0);
    expect(a0.rank).toBe(1);
    expect(a0.ranks.map((r) => r.workerId)).toEqual(['w-a', 'w-b']);
    expect([a0.perRankBatch, a1.perRankBatch]).toEqual([2, 2]);
    expect(a0.totalSteps).toBe(5);
    expect(a0.manifestUri).toBe(`s3://${env.bucket}/${env.manifestKey}`);
    expect(JSON.parse(a0.jobSpecJson)).toMatchObject({ metadata: { name: 'ok' }, spec: { training: { steps: 5 } } });
    expect(await w0.waitForStop()).toBe('job succeeded');
    expect(await w1.waitForStop()).toBe('job succeeded');
    const acks = w0.received.filter((m) => m.message?.$case === 'commitAck').map((m) => (m.message?.$case === 'commitAck' ? m.message.commitAck.step : 0));
    expect(acks).toEqual([1, 2, 3, 4, 5]);

    const messages = await watching;
    expect(messages[0]?.update?.$case).toBe('state');
    const last = messages.at(-1)?.update;
    expect(last?.$case === 'state' && last.state.to).toBe(JobState.JOB_STATE_SUCCEEDED);
    const steps = messages.flatMap((m) => (m.update?.$case === 'progress' ? [m.update.progress.step] : []));
    expect(steps.at(-1)).toBe(5);
    expect(new Set(steps).size).toBe(steps.length);

    // A watch started with since_step after the end gets the state and ends.
    const after = await c.watch(jobId, 3);
    expect(after).toHaveLength(1);

    const metrics = await c.metrics();
    expect(metrics).toContain(`dinofleet_job_committed_steps_total{job="${jobId}"} 5`);
    expect(metrics).toContain(`dinofleet_job_step{job="${jobId}"} 5`);
    expect(metrics).toContain(`dinofleet_job_total_steps{job="${jobId}"} 5`);
    expect(metrics).toContain('dinofleet_jobs{state="SUCCEEDED"} 1');
    expect(metrics).toContain('dinofleet_workers_registered 2');
    expect(metrics).toMatch(new RegExp(`dinofleet_job_loss\\{job="${jobId}",part="total"\\} 1.5`));

    const samples = await c.coordinator.store.samples(jobId);
    expect([...samples.keys()].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5]);
    expect(samples.get(1)).toHaveLength(4);
  });

  it('fails on a state hash mismatch, naming the step, ranks and hash prefixes', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'mismatch', steps: 6 }), idempotencyKey: '' });
    const bad = (_rank: number, step: number): Buffer => (step === 3 ? Buffer.from('9b01' + 'ee'.repeat(30), 'hex') : stepHash(step));
    const w0 = c.worker({ workerId: 'w-0' });
    const w1 = c.worker({ workerId: 'w-1', hashOf: bad });
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_FAILED);
    const good = stepHash(3).toString('hex').slice(0, 4);
    expect(job.error).toBe(`state hash mismatch at step 3: rank 0 ${good}…, rank 1 9b01…`);
    expect(job.committedStep).toBe(2);
    expect(await w0.waitForStop()).toBe(`job failed: ${job.error}`);
    expect(await w1.waitForStop()).toContain('state hash mismatch');
  });

  it('a lost rank: the survivor gets Abort and a generation of its own, and the job succeeds', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'lost', steps: 12 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 20 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 20, beforeCommit: (step) => step < 3 });
    await c.waitForJob(jobId, (j) => j.committedStep === 2);
    w1.disconnect();
    const abort = await w0.waitFor((m) => (m.message?.$case === 'abort' ? m.message.abort : undefined));
    expect(abort.generation).toBe(1);
    expect(abort.reason).toMatch(/^rank 1 \(worker w-1\) lost at step 3 \(last committed 2\) in generation 1: control stream/);
    const next = await w0.waitForAssignment(10_000, 2);
    expect(next).toMatchObject({ generation: 2, rank: 0, startStep: 2, perRankBatch: 4, stateSource: '', restoreCheckpointUri: '' });
    expect(next.ranks.map((r) => r.workerId)).toEqual(['w-0']);
    expect(Buffer.from(next.startStateHash)).toEqual(stepHash(2));
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.committedStep).toBe(12);
    expect(job.generation).toBe(2);
    expect(job.error).toBe('');
    const events = await c.coordinator.store.events(jobId);
    expect(events.map((e) => e.kind)).toContain('generation_ended');
    expect(events.find((e) => e.kind === 'generation_started' && e.generation === 2)?.message).toBe('generation 2: 1 ranks (w-0) from step 2 (rank lost)');
    const metrics = await c.metrics();
    expect(metrics).toContain(`dinofleet_job_recoveries_total{job="${jobId}",cause="rank_lost"} 1`);
    expect(metrics).toContain(`dinofleet_job_recovery_seconds_count{job="${jobId}"} 1`);
    // Every committed step's samples, each record of an epoch once.
    const ledger = await verifySampleLedger(c.coordinator.store.redis, c.prefix, jobId, env.recordOffsets);
    expect(ledger).toEqual({ lost: 0, duplicated: 0, epochsComplete: 1, samplesCommitted: 48 });
  });

  it('a non-graceful Leaving or missed heartbeats lose the rank the same way', async () => {
    await using c = await startTestCoordinator(env, { heartbeatTimeoutSeconds: 1 });
    const leaving = await c.call('submitJob', { spec: jobSpec(env, { name: 'leaving', steps: 8 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 10 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 10, beforeCommit: (step) => step < 2 });
    await c.waitForJob(leaving.jobId, (j) => j.committedStep === 1);
    w1.leave('oom');
    const abort = await w0.waitFor((m) => (m.message?.$case === 'abort' ? m.message.abort.reason : undefined));
    expect(abort).toBe('rank 1 (worker w-1) lost at step 2 (last committed 1) in generation 1: worker left (oom)');
    const left = await c.waitForJob(leaving.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(left.generation).toBe(2);
    await w0.close();

    const silent = await c.call('submitJob', { spec: jobSpec(env, { name: 'silent', steps: 8 }), idempotencyKey: '' });
    const w2 = c.worker({ workerId: 'w-2', stepDelayMs: 10 });
    c.worker({ workerId: 'w-3', heartbeatMs: 60_000, beforeCommit: (step) => step < 2 });
    const job = await c.waitForJob(silent.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    expect(job.generation).toBeGreaterThanOrEqual(2);
    const reasons = w2.received.flatMap((m) => (m.message?.$case === 'abort' ? [m.message.abort.reason] : []));
    expect(reasons.some((r) => r.endsWith('no heartbeat for 1 s'))).toBe(true);
  });

  it('cancels a running job: workers get Stop, state CANCELLED, later cancels refused', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'cancel', steps: 1000 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 10 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 10 });
    await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_RUNNING && j.committedStep >= 2);
    const response = await c.call('cancelJob', { jobId, reason: 'test over' });
    expect(response.state).toBe(JobState.JOB_STATE_CANCELLED);
    expect(await w0.waitForStop()).toBe('cancelled: test over');
    expect(await w1.waitForStop()).toBe('cancelled: test over');
    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_CANCELLED);
    expect(job.error).toBe('cancelled: test over');
    expect(job.committedStep).toBeLessThan(1000);
    // A second cancel (a retry whose answer was lost) reports the state and changes nothing.
    expect((await c.call('cancelJob', { jobId, reason: 'again' })).state).toBe(JobState.JOB_STATE_CANCELLED);
    expect((await c.waitForJob(jobId, () => true)).error).toBe('cancelled: test over');
    await expect(c.call('scaleJob', { jobId, workers: 2 })).rejects.toBeInstanceOf(FailedPreconditionError);
    // The workers are idle again and take the next job.
    const next = await c.call('submitJob', { spec: jobSpec(env, { name: 'after', steps: 2 }), idempotencyKey: '' });
    await c.waitForJob(next.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
  });

  it('cancels a queued job and fails a job whose workers never come', async () => {
    await using c = await startTestCoordinator(env, { workerWaitSeconds: 1 });
    const first = await c.call('submitJob', { spec: jobSpec(env, { name: 'nobody', workers: 2 }), idempotencyKey: '' });
    const second = await c.call('submitJob', { spec: jobSpec(env, { name: 'queued' }), idempotencyKey: '' });
    expect((await c.call('cancelJob', { jobId: second.jobId, reason: '' })).state).toBe(JobState.JOB_STATE_CANCELLED);
    const failed = await c.waitForJob(first.jobId, (j) => j.state === JobState.JOB_STATE_FAILED);
    expect(failed.error).toMatch(/^only 0 of 2 workers registered within 1 s/);
    const cancelled = await c.waitForJob(second.jobId, (j) => j.state === JobState.JOB_STATE_CANCELLED);
    expect(cancelled.error).toBe('cancelled: cancelled by user');
  });
});

describe('JobService requests', () => {
  it('refuses an invalid spec with INVALID_ARGUMENT naming every bad field, writing nothing', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'Bad_Name', batch: 0 });
    const err = await c.call('submitJob', { spec, idempotencyKey: '' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    const message = (err as Error).message;
    expect(message).toContain('metadata.name: must be a DNS-1123 label');
    expect(message).toContain('spec.training.globalBatchSize: must be an integer in [1, 1048576], got 0');
    expect((await c.call('listJobs', { pageSize: 0, pageToken: '', states: [] })).jobs).toEqual([]);
  });

  it('refuses a missing manifest with NOT_FOUND saying what to do, writing nothing', async () => {
    await using c = await startTestCoordinator(env);
    const err = await c.call('submitJob', { spec: jobSpec(env, { manifestKey: 'nope/missing.tsv' }), idempotencyKey: 'k1' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as Error).message).toBe(`manifest s3://${env.bucket}/nope/missing.tsv does not exist: upload it or fix spec.data.manifest`);
    expect((await c.call('listJobs', { pageSize: 0, pageToken: '', states: [] })).jobs).toEqual([]);
    const keys = await c.coordinator.store.redis.keys(`${c.prefix}:*`);
    expect(keys.filter((k) => k.startsWith(`${c.prefix}:job:`) || k.startsWith(`${c.prefix}:idem:`) || k === `${c.prefix}:jobs`)).toEqual([]);
  });

  it('returns the existing job for a repeated idempotency key', async () => {
    await using c = await startTestCoordinator(env);
    const spec = jobSpec(env, { name: 'idem' });
    const first = await c.call('submitJob', { spec, idempotencyKey: 'same-key' });
    const again = await c.call('submitJob', { spec, idempotencyKey: 'same-key' });
    expect(first.created).toBe(true);
    expect(again).toEqual({ jobId: first.jobId, state: JobState.JOB_STATE_QUEUED, created: false });
    const other = await c.call('submitJob', { spec, idempotencyKey: '' });
    expect(other.jobId).not.toBe(first.jobId);
    await expect(c.call('submitJob', { spec, idempotencyKey: 'x'.repeat(129) })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('lists jobs newest first, a page at a time, filtered by state', async () => {
    await using c = await startTestCoordinator(env, { workerWaitSeconds: 60 });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await c.call('submitJob', { spec: jobSpec(env, { name: `list-${i}` }), idempotencyKey: '' })).jobId);
      await new Promise((r) => setTimeout(r, 3));
    }
    await c.call('cancelJob', { jobId: ids[3] ?? '', reason: 'x' });
    const seen: string[] = [];
    let pageToken = '';
    do {
      const page = await c.call('listJobs', { pageSize: 2, pageToken, states: [] });
      expect(page.jobs.length).toBeLessThanOrEqual(2);
      for (const job of page.jobs) expect(job.spec).toBe('');
      seen.push(...page.jobs.map((j) => j.jobId));
      pageToken = page.nextPageToken;
    } while (pageToken !== '');
    expect(seen).toEqual([...ids].reverse());
    const cancelled = await c.call('listJobs', { pageSize: 0, pageToken: '', states: [JobState.JOB_STATE_CANCELLED] });
    expect(cancelled.jobs.map((j) => j.jobId)).toEqual([ids[3]]);
    await expect(c.call('listJobs', { pageSize: 1001, pageToken: '', states: [] })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(c.call('getJob', { jobId: 'nope-aaaaaaaa' })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('scales within minWorkers..maxWorkers only', async () => {
    await using c = await startTestCoordinator(env, { workerWaitSeconds: 60 });
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'scale', workers: 2, minWorkers: 1, maxWorkers: 3 }), idempotencyKey: '' });
    expect(await c.call('scaleJob', { jobId, workers: 3 })).toEqual({ jobId, workersDesired: 3, generation: 0 });
    expect((await c.call('getJob', { jobId })).job?.workersDesired).toBe(3);
    const err = await c.call('scaleJob', { jobId, workers: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toContain('minWorkers..maxWorkers (1..3)');
    await expect(c.call('scaleJob', { jobId, workers: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

describe('more JobService behaviour', () => {
  it('answers UNAVAILABLE when S3 cannot be reached, writing nothing', async () => {
    await using c = await startTestCoordinator(env, {
      env: { ...env.s3server.env(), DINOFLEET_S3_ENDPOINT: 'http://127.0.0.1:1', DINOFLEET_S3_MAX_ATTEMPTS: '1' },
    });
    const err = await c.call('submitJob', { spec: jobSpec(env), idempotencyKey: '' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toContain(`cannot check the manifest s3://${env.bucket}/${env.manifestKey}`);
    expect((await c.call('listJobs', { pageSize: 0, pageToken: '', states: [] })).jobs).toEqual([]);
  });

  it('runs --max-running-jobs jobs at once on separate workers', async () => {
    await using c = await startTestCoordinator(env, { maxRunningJobs: 2 });
    const a = await c.call('submitJob', { spec: jobSpec(env, { name: 'para-a', steps: 20, workers: 1 }), idempotencyKey: '' });
    const b = await c.call('submitJob', { spec: jobSpec(env, { name: 'para-b', steps: 20, workers: 1 }), idempotencyKey: '' });
    const w0 = c.worker({ workerId: 'w-0', stepDelayMs: 5 });
    const w1 = c.worker({ workerId: 'w-1', stepDelayMs: 5 });
    await c.waitForJob(a.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    await c.waitForJob(b.jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED);
    const jobsOf = (w: typeof w0): string[] => w.received.flatMap((m) => (m.message?.$case === 'assignment' ? [m.message.assignment.jobId] : []));
    expect([...jobsOf(w0), ...jobsOf(w1)].sort()).toEqual([a.jobId, b.jobId].sort());
  });

  it('ends open WatchJob streams UNAVAILABLE when the coordinator closes', async () => {
    const c = await startTestCoordinator(env, { workerWaitSeconds: 60 });
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'watched' }), idempotencyKey: '' });
    const watching = c.watch(jobId).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await c.close();
    expect(Date.now() - started).toBeLessThan(900);
    expect(await watching).toMatchObject({ code: 14 });
  });
});
