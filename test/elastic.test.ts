// Elasticity and failures against real processes (docs/cluster.md "Elasticity and
// failures"): workers SIGKILLed, SIGTERMed, added and removed while a job runs; the
// coordinator, teacher-sync and Redis killed and restarted; non-finite steps rolled back;
// a job resumed from its checkpoint at another world size. Every job runs in verification
// mode, and each test ends by checking that every manifest record was trained on exactly
// once in the epoch.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { startLocalFleet, uploadFashionMnist, type LocalFleet } from '@dinofleet/local';
import { callUnary, createClient, DinofleetError, JobServiceClient, JobState } from '@dinofleet/proto';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, sampleValue, scrape, waitForJob } from './support/cluster.ts';
import { checkLedger, elasticJobSpec, submitJob, waitForStep } from './support/elastic.ts';

const BUCKET = 'itest-elastic';
/**
 * 240 images at 8 per step: 30 steps an epoch; jobs run 46 steps over 24 shards of 10
 * records. Epochs overlap at their boundary (a rank whose lease runs out takes one of the
 * next epoch while others still hold this one's, and each rank loads up to 4 batches
 * ahead: at most about 3 leases per rank), so 16 steps (13 leases) past the epoch leave
 * room for epoch 0 to finish.
 */
const IMAGES = 240;
const RUN = { steps: 46, shards: 24 };

async function expectExactlyOnce(fleet: LocalFleet, jobId: string, manifestUri: string): Promise<void> {
  const ledger = await checkLedger(fleet, jobId, manifestUri);
  expect(ledger.epochsComplete, JSON.stringify(ledger)).toBeGreaterThanOrEqual(1);
  expect(ledger.lost).toBe(0);
  expect(ledger.duplicated).toBe(0);
}

describe('an elastic fleet of three workers', { timeout: 300_000 }, () => {
  let fleet: LocalFleet;
  let s3: S3Client;
  let client: JobServiceClient;
  let manifestUri: string;

  beforeAll(async () => {
    const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-itest-elastic-'));
    fleet = await startLocalFleet({ workers: 3, backend: 'wasm', logDir });
    s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
    manifestUri = (await uploadFashionMnist(s3, { bucket: BUCKET, split: 'train', limit: IMAGES })).manifestUri;
    client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
  }, 180_000);

  afterAll(async () => {
    client?.close();
    s3?.destroy();
    await fleet?.stop();
  }, 90_000);

  it('keeps training after a worker is SIGKILLed mid-run: survivors go on in a new generation, every sample exactly once', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'sigkill', workers: 3, minWorkers: 2, ...RUN }));
    const before = await waitForStep(client, jobId, 5);
    const victim = (await fleet.workers())[1];
    expect(victim).toBeDefined();
    process.kill(victim!.pid, 'SIGKILL');
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.generation).toBeGreaterThan(before.generation);
    await expectExactlyOnce(fleet, jobId, manifestUri);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_recoveries_total', { job: jobId, cause: 'rank_lost' })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(metrics, 'dinofleet_job_samples_committed_total', { job: jobId })).toBe(RUN.steps * 8);
  });

  it('scales up and down while the job runs (ScaleJob), within minWorkers..maxWorkers', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'scale', workers: 3, minWorkers: 2, maxWorkers: 4, ...RUN }));
    await waitForStep(client, jobId, 3);
    const outOfRange = await callUnary(client, 'scaleJob', { jobId, workers: 5 }, { deadlineMs: 10_000 }).catch((e: unknown) => e);
    expect(outOfRange).toBeInstanceOf(DinofleetError);
    expect((outOfRange as DinofleetError).grpcStatus).toBe(status.INVALID_ARGUMENT);
    expect((outOfRange as DinofleetError).message).toMatch(/2\D+4/);

    await callUnary(client, 'scaleJob', { jobId, workers: 4 }, { deadlineMs: 10_000 });
    const grown = await waitForJob(client, jobId, (j) => j.progress?.worldSize === 4 || isTerminal(j), 120_000);
    expect(grown.progress?.worldSize, grown.error).toBe(4);
    await callUnary(client, 'scaleJob', { jobId, workers: 2 }, { deadlineMs: 10_000 });
    const shrunk = await waitForJob(client, jobId, (j) => j.progress?.worldSize === 2 || isTerminal(j), 120_000);
    expect(shrunk.progress?.worldSize, shrunk.error).toBe(2);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    await expectExactlyOnce(fleet, jobId, manifestUri);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_reconfigurations_total', { job: jobId, kind: 'scale' })).toBeGreaterThanOrEqual(2);
    // Back to the fleet's size for the next tests.
    await callUnary(client, 'scaleJob', { jobId, workers: 3 }, { deadlineMs: 10_000 }).catch(() => undefined);
  });

  it('lets a SIGTERMed worker leave at a step boundary without aborting a step', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'sigterm', workers: 3, minWorkers: 2, ...RUN }));
    await waitForStep(client, jobId, 5);
    const leaver = (await fleet.workers())[0];
    process.kill(leaver!.pid, 'SIGTERM');
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    await expectExactlyOnce(fleet, jobId, manifestUri);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_reconfigurations_total', { job: jobId, kind: 'leave' })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(metrics, 'dinofleet_job_recoveries_total', { job: jobId, cause: 'rank_lost' }) ?? 0).toBe(0);
  });

  it('survives a coordinator SIGKILL: the new coordinator continues from the committed step', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'coordinator-kill', workers: 3, ...RUN }));
    const before = await waitForStep(client, jobId, 5);
    await fleet.restart('coordinator', { signal: 'SIGKILL' });
    const after = await waitForStep(client, jobId, before.committedStep + 1, 120_000);
    expect(after.committedStep).toBeGreaterThan(before.committedStep);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    await expectExactlyOnce(fleet, jobId, manifestUri);
  });

  it('survives a teacher-sync SIGKILL: the center is rebuilt from the ranks', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'teacher-sync-kill', workers: 3, ...RUN }));
    const before = await waitForStep(client, jobId, 5);
    await fleet.restart('teacher-sync', { signal: 'SIGKILL' });
    await waitForStep(client, jobId, before.committedStep + 2, 60_000);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    await expectExactlyOnce(fleet, jobId, manifestUri);
  });

  it('survives a Redis restart (append-only): the job continues', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'redis-restart', workers: 3, ...RUN }));
    const before = await waitForStep(client, jobId, 5);
    await fleet.restart('redis', { signal: 'SIGKILL', downMs: 1_000 });
    await waitForStep(client, jobId, before.committedStep + 2, 60_000);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    await expectExactlyOnce(fleet, jobId, manifestUri);
  });

  it('resumes from the latest checkpoint at another world size when every worker is lost', async () => {
    const checkpoint = { uri: `s3://${BUCKET}/checkpoints/`, everySteps: 5 };
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'all-lost', workers: 3, checkpoint, ...RUN }));
    const before = await waitForStep(client, jobId, 12);
    await callUnary(client, 'scaleJob', { jobId, workers: 2 }, { deadlineMs: 10_000 });
    for (const worker of await fleet.workers()) process.kill(worker.pid, 'SIGKILL');
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.progress?.worldSize).toBe(2);
    await expectExactlyOnce(fleet, jobId, manifestUri);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    // Steps after the last checkpoint (10 or later) were redone.
    expect(sampleValue(metrics, 'dinofleet_job_steps_lost_total', { job: jobId })).toBeGreaterThanOrEqual(before.committedStep % 5);
  });

  // Last: it takes the fleet's S3 away.
  it('fails a job clearly when S3 stays unreachable: retries, then the reason and the limit', async () => {
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 's3-down', workers: 3, fault: { maxFailedGenerations: 2 }, ...RUN }));
    await waitForStep(client, jobId, 3);
    await fleet.s3?.stop();
    const job = await waitForJob(client, jobId, isTerminal, 240_000);
    expect(JobState[job.state]).toBe('JOB_STATE_FAILED');
    expect(job.error).toMatch(/S3 s3:\/\/itest-elastic\/.* after \d+ attempts/);
    expect(job.error).toMatch(/maxFailedGenerations is 2/);
  });
});

describe('non-finite steps', { timeout: 300_000 }, () => {
  let fleet: LocalFleet;
  let s3: S3Client;
  let client: JobServiceClient;
  let manifestUri: string;

  beforeAll(async () => {
    const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-itest-nonfinite-'));
    // Every worker puts NaN into its loss at step 3 once (a transient fault: retried) and
    // at step 12 three times (persistent: rolled back to the checkpoint at step 10).
    fleet = await startLocalFleet({ workers: 2, backend: 'wasm', logDir, env: { DINOFLEET_FAULT_NONFINITE_STEPS: '3,12,12,12' } });
    s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
    manifestUri = (await uploadFashionMnist(s3, { bucket: `${BUCKET}-nan`, split: 'train', limit: 160 })).manifestUri;
    client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
  }, 180_000);

  afterAll(async () => {
    client?.close();
    s3?.destroy();
    await fleet?.stop();
  }, 90_000);

  it('does not commit a non-finite step, retries it, and rolls back to the last checkpoint after three in a row', async () => {
    const checkpoint = { uri: `s3://${BUCKET}-nan/checkpoints/`, everySteps: 5 };
    const jobId = await submitJob(client, elasticJobSpec(manifestUri, { name: 'nonfinite', workers: 2, checkpoint, fault: { maxNonFiniteSteps: 3 }, steps: 24, shards: 16 }));
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.committedStep).toBe(24);
    await expectExactlyOnce(fleet, jobId, manifestUri);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_nonfinite_steps_total', { job: jobId })).toBe(4);
    expect(sampleValue(metrics, 'dinofleet_job_rollbacks_total', { job: jobId })).toBe(1);
  });
});
