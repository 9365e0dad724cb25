// The cluster against real processes: Redis, s3rver, a coordinator, a teacher-sync and two
// worker processes on loopback, driven over gRPC the way the CLI drives them.
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { evalKnn } from '@dinofleet/cli';
import { createS3Client, encodeTar, resolveS3Config } from '@dinofleet/data';
import { startLocalFleet, uploadFashionMnist, type LocalFleet } from '@dinofleet/local';
import { callUnary, channelCredentials, createClient, DinofleetError, JobServiceClient, JobState, TeacherSyncClient, type Job } from '@dinofleet/proto';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, sampleValue, scrape, smallJobSpec, waitForJob } from './support/cluster.ts';

const BUCKET = 'itest-cluster';

describe('a local fleet with two workers', { timeout: 240_000 }, () => {
  let fleet: LocalFleet;
  let s3: S3Client;
  let client: JobServiceClient;
  let manifestUri: string;
  let logDir: string;

  beforeAll(async () => {
    logDir = await mkdtemp(join(tmpdir(), 'dinofleet-itest-'));
    fleet = await startLocalFleet({ workers: 2, backend: 'wasm', logDir });
    s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
    manifestUri = (await uploadFashionMnist(s3, { bucket: BUCKET, split: 'train', limit: 200 })).manifestUri;
    // The fleet is secure by default: TLS against its CA and its admin token.
    client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
  }, 180_000);

  afterAll(async () => {
    client?.close();
    s3?.destroy();
    await fleet?.stop();
  }, 60_000);

  const submit = async (spec: Record<string, unknown>): Promise<string> =>
    (await callUnary(client, 'submitJob', { spec: JSON.stringify(spec), idempotencyKey: '' }, { deadlineMs: 30_000 })).jobId;

  const rejection = async (spec: string): Promise<DinofleetError> => {
    const error = await callUnary(client, 'submitJob', { spec, idempotencyKey: '' }, { deadlineMs: 30_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DinofleetError);
    return error as DinofleetError;
  };

  it('runs a job to SUCCEEDED and its committed steps show on the coordinator /metrics', async () => {
    const jobId = await submit(smallJobSpec(manifestUri, { name: 'succeeds', steps: 3 }));
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.committedStep).toBe(3);
    expect(job.totalSteps).toBe(3);
    expect(job.progress?.worldSize).toBe(2);
    expect(job.progress?.losses.total).toBeGreaterThan(0);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_committed_steps_total', { job: jobId })).toBe(3);
    expect(sampleValue(metrics, 'dinofleet_job_step', { job: jobId })).toBe(3);
    // teacher-sync holds the final teacher, and `dinofleet eval knn` reads it.
    // TeacherSync serves fleet members only: connect with the fleet certificate.
    const teacherSync = createClient(TeacherSyncClient, fleet.teacherSyncAddress, { credentials: channelCredentials(fleet.security) });
    try {
      const knn = await evalKnn({ jobId, jobs: client, teacher: { kind: 'snapshot', client: teacherSync }, train: 200, test: 100 });
      expect(knn.step).toBe(3);
      // Both ranks attested the snapshot's hash before their last commit.
      expect(knn.verified).toBe(true);
      expect(knn.knn_top1).toBeGreaterThan(0.1); // 10 classes: chance is 0.1
    } finally {
      teacherSync.close();
    }
  });

  it('cancels a running job: it ends CANCELLED mid-run and the fleet takes the next job', async () => {
    const jobId = await submit(smallJobSpec(manifestUri, { name: 'cancelled', steps: 10_000 }));
    const running = await waitForJob(client, jobId, (j) => j.committedStep >= 2 || isTerminal(j));
    expect(JobState[running.state]).toBe('JOB_STATE_RUNNING');
    await callUnary(client, 'cancelJob', { jobId, reason: 'integration test' }, { deadlineMs: 10_000 });
    const cancelled = await waitForJob(client, jobId, isTerminal, 30_000);
    expect(JobState[cancelled.state]).toBe('JOB_STATE_CANCELLED');
    expect(cancelled.committedStep).toBeLessThan(10_000);
    // The workers went back to the pool: another job runs to the end on them.
    const next = await submit(smallJobSpec(manifestUri, { name: 'after-cancel', steps: 2 }));
    const done: Job = await waitForJob(client, next, isTerminal);
    expect(JobState[done.state], done.error).toBe('JOB_STATE_SUCCEEDED');
  });

  it('refuses an invalid spec with INVALID_ARGUMENT naming every bad field, and creates nothing', async () => {
    const before = (await callUnary(client, 'listJobs', { pageSize: 100, pageToken: '', states: [] }, { deadlineMs: 5000 })).jobs.length;
    const spec = smallJobSpec(manifestUri) as { spec: Record<string, Record<string, unknown>> };
    spec.spec.training = { ...spec.spec.training, globalBatchSize: 0 };
    spec.spec.fleet = { workers: 0 };
    const error = await rejection(JSON.stringify(spec));
    expect(error.grpcStatus).toBe(status.INVALID_ARGUMENT);
    expect(error.message).toContain('spec.training.globalBatchSize');
    expect(error.message).toContain('spec.fleet.workers');
    const notYaml = await rejection('apiVersion: [unclosed');
    expect(notYaml.grpcStatus).toBe(status.INVALID_ARGUMENT);
    const after = (await callUnary(client, 'listJobs', { pageSize: 100, pageToken: '', states: [] }, { deadlineMs: 5000 })).jobs.length;
    expect(after).toBe(before);
  });

  it('refuses a manifest that does not exist with NOT_FOUND, and leaves no job behind', async () => {
    const before = (await callUnary(client, 'listJobs', { pageSize: 100, pageToken: '', states: [] }, { deadlineMs: 5000 })).jobs.length;
    const error = await rejection(JSON.stringify(smallJobSpec(`s3://${BUCKET}/no/such/manifest.txt`)));
    expect(error.grpcStatus).toBe(status.NOT_FOUND);
    expect(error.message).toContain(`s3://${BUCKET}/no/such/manifest.txt`);
    const after = (await callUnary(client, 'listJobs', { pageSize: 100, pageToken: '', states: [] }, { deadlineMs: 5000 })).jobs.length;
    expect(after).toBe(before);
  });

  it('skips missing and non-image objects, counts them by reason, logs their keys, and finishes the job', async () => {
    // A manifest of 40 good images plus one whose object is gone and one that is not an image.
    const upload = await uploadFashionMnist(s3, { bucket: BUCKET, prefix: 'damaged/', split: 'train', limit: 40 });
    const missingKey = upload.keys[3] as string;
    const corruptKey = upload.keys[5] as string;
    await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: missingKey }));
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: corruptKey, Body: Buffer.from('this is not a PNG') }));
    // Two shards of ~21 records, one per rank; both damaged entries lie in the first one,
    // and each rank reads 2 steps x 8 images (plus replacements) from its own shard, so
    // each damaged entry is met exactly once.
    const spec = smallJobSpec(upload.manifestUri, { name: 'damaged', steps: 2, globalBatchSize: 16 }) as {
      spec: Record<string, Record<string, unknown>>;
    };
    // Manifest order within a shard (no shuffle window), so the first 16 records are read.
    spec.spec.data = { ...spec.spec.data, shards: 2, shuffleWindow: 1 };
    const jobId = await submit(spec);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    expect(sampleValue(metrics, 'dinofleet_job_samples_skipped_total', { job: jobId, reason: 'missing' })).toBe(1);
    // Not a PNG or JPEG at all.
    expect(sampleValue(metrics, 'dinofleet_job_samples_skipped_total', { job: jobId, reason: 'not_image' })).toBe(1);
    const logs = (await Promise.all((await readdir(logDir)).map((f) => readFile(join(logDir, f), 'utf8')))).join('\n');
    expect(logs).toContain(missingKey);
    expect(logs).toContain(corruptKey);
  });
  it('trains on WebDataset tar shards: samples inside the tars, an image-less sample skipped', async () => {
    // 40 Fashion-MNIST PNGs packed 10 to a tar (png + cls members), plus one sample with
    // only a caption in the last tar.
    const upload = await uploadFashionMnist(s3, { bucket: BUCKET, prefix: 'wds-src/', split: 'train', limit: 40 });
    const tarKeys: string[] = [];
    for (let t = 0; t < 4; t++) {
      const members: { name: string; bytes: Uint8Array }[] = [];
      for (let i = t * 10; i < t * 10 + 10; i++) {
        const object = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: upload.keys[i] }));
        members.push({ name: `s${i}.png`, bytes: await (object.Body as { transformToByteArray: () => Promise<Uint8Array> }).transformToByteArray() });
        members.push({ name: `s${i}.cls`, bytes: new TextEncoder().encode(String(i % 10)) });
      }
      if (t === 3) members.push({ name: 'caption-only.txt', bytes: new TextEncoder().encode('no image here') });
      const key = `wds/shard-${t}.tar`;
      await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: encodeTar(members) }));
      tarKeys.push(key);
    }
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'wds/tars.txt', Body: `${tarKeys.join('\n')}\n` }));
    // One worker reads its leases one after the other: 6 steps x 8 images (48) go past the
    // 41 samples of epoch 0, so the image-less sample is met (once, or twice if epoch 1's
    // first lease is its tar and the shuffle puts it early).
    const spec = smallJobSpec(`s3://${BUCKET}/wds/tars.txt`, { name: 'webdataset', steps: 6, globalBatchSize: 8, workers: 1 }) as {
      spec: Record<string, Record<string, unknown>>;
    };
    spec.spec.data = { ...spec.spec.data, format: 'webdataset', shards: 4, shuffleWindow: 64 };
    const jobId = await submit(spec);
    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.committedStep).toBe(6);
    const metrics = await scrape(fleet.coordinator.metricsAddress);
    const skipped = sampleValue(metrics, 'dinofleet_job_samples_skipped_total', { job: jobId, reason: 'not_image' }) ?? 0;
    expect(skipped).toBeGreaterThanOrEqual(1);
    expect(skipped).toBeLessThanOrEqual(2);
  });
});
