import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { resolveJobSpec } from '@dinofleet/config';
import { encodePng, manifestSplit, readCheckpoint } from '@dinofleet/data';
import { startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import { INSECURE } from '@dinofleet/proto';
import type { ShardLease } from '@dinofleet/proto';
import { LogLevel, Registry, createLogger } from '@dinofleet/telemetry';
import { startWorker } from './index.ts';
import type { WorkerProcess } from './index.ts';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';
import { startFakeTeacherSync } from './testing/fake-teacher-sync.ts';
import type { FakeTeacherSync } from './testing/fake-teacher-sync.ts';
import { randomImages } from './testing/recipes.ts';

/** Six records, the second one missing; two leases of three records each. */
const RECORDS = 6;
const MISSING = 1;
const STEPS = 3;

describe('a worker reading S3', () => {
  let s3: TestS3;
  let coordinator: FakeCoordinator;
  let teacherSync: FakeTeacherSync;
  let worker: WorkerProcess;
  const offsets: number[] = [];
  const leases: ShardLease[] = [];
  const registry = new Registry();

  beforeAll(async () => {
    await initComputeBackend('cpu');
    s3 = await startTestS3();
    let manifest = '';
    const images = randomImages(RECORDS, 9);
    for (let i = 0; i < RECORDS; i++) {
      const key = `fmnist/train/${i}.png`;
      offsets.push(Buffer.byteLength(manifest));
      manifest += `${key}\t${i}\n`;
      if (i !== MISSING) await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: await encodePng(images[i]!) }));
    }
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'manifest.txt', Body: manifest }));
    const size = Buffer.byteLength(manifest);
    for (const [epoch, shard] of [[0, 0], [0, 1], [1, 0]] as const) {
      const split = manifestSplit(size, 2, shard);
      leases.push({ leaseId: `e${epoch}-s${shard}`, epoch, shard, begin: split.start, end: split.end, cursor: split.start, cursorWithin: 0, cursorConsumed: 0 });
    }
    // The shards hold three records each (records are equally long).
    expect(offsets.filter((o) => o < (leases[0]?.end ?? 0))).toHaveLength(3);

    const spec = resolveJobSpec({
      apiVersion: 'dinofleet/v1',
      kind: 'TrainingJob',
      metadata: { name: 's3-run' },
      spec: {
        recipe: { preset: 'dino', overrides: { crops: { nLocal: 0 } } },
        // Manifest order (no shuffle window), so the expected sample ids can be written down.
        data: { manifest: `s3://${s3.bucket}/manifest.txt`, shuffleWindow: 1 },
        training: { steps: STEPS, globalBatchSize: 2, seed: 3, backend: 'cpu' },
        checkpoint: { uri: `s3://${s3.bucket}/ckpt/`, everySteps: 2 },
      },
    });
    teacherSync = await startFakeTeacherSync();
    coordinator = await startFakeCoordinator(1, {
      jobId: 's3-run-abcdefgh',
      specJson: JSON.stringify(spec),
      globalBatch: 2,
      totalSteps: STEPS,
      teacherSyncAddress: teacherSync.address,
      manifestUri: spec.spec.data.manifest,
      leases: [leases[0]!],
      nextLeases: [leases[1]!, leases[2]!],
    });
    worker = await startWorker({
      coordinatorAddress: coordinator.address,
      security: INSECURE,
      workerId: 'w-s3',
      backend: 'cpu',
      s3: s3.client,
      fetchConcurrency: 2,
      registry,
      logger: createLogger({ name: 'worker-s3-test', level: LogLevel.Error }),
    });
  });

  afterAll(async () => {
    await worker?.close();
    await coordinator?.close();
    await teacherSync?.close();
    await s3?.close();
  });

  it('trains on its leases in order, skips the missing image, reports cursors, acquires leases and writes checkpoints', async () => {
    await coordinator.waitForAck(STEPS, 200_000);
    const commits = [1, 2, 3].map((step) => coordinator.commits.get(step)?.[0]);
    const [l0, l1, l2] = leases as [ShardLease, ShardLease, ShardLease];
    // Step 1: records 0 and 2 (1 is missing); lease e0-s0 is used up.
    expect(commits[0]).toMatchObject({
      sampleIds: [offsets[0], offsets[2]],
      sampleEpochs: [0, 0],
      skipped: [{ sampleId: offsets[MISSING], key: `fmnist/train/${MISSING}.png`, reason: 'missing' }],
      dataCursors: [{ leaseId: 'e0-s0', epoch: 0, position: l0.end, positionWithin: 0, windowConsumed: 0, exhausted: true }],
      sampleCount: 2,
      checkpointUri: '',
    });
    // Step 2: the next lease, acquired once the first was used up.
    expect(commits[1]).toMatchObject({
      sampleIds: [offsets[3], offsets[4]],
      skipped: [],
      dataCursors: [{ leaseId: 'e0-s1', epoch: 0, position: offsets[5], positionWithin: 0, windowConsumed: 0, exhausted: false }],
      checkpointUri: `s3://${s3.bucket}/ckpt/s3-run-abcdefgh/step-00000002/`,
    });
    // Step 3: the end of e0-s1 and the start of epoch 1's first lease.
    expect(commits[2]).toMatchObject({
      sampleIds: [offsets[5], offsets[0]],
      sampleEpochs: [0, 1],
      dataCursors: [
        { leaseId: 'e0-s1', epoch: 0, position: l1.end, positionWithin: 0, windowConsumed: 0, exhausted: true },
        { leaseId: 'e1-s0', epoch: 1, position: offsets[1], positionWithin: 0, windowConsumed: 0, exhausted: false },
      ],
      checkpointUri: `s3://${s3.bucket}/ckpt/s3-run-abcdefgh/step-00000003/`,
    });
    expect(l2.leaseId).toBe('e1-s0');
    expect(coordinator.acquireLeaseCalls).toEqual([
      { jobId: 's3-run-abcdefgh', generation: 1, rank: 0, workerId: 'w-s3' },
      { jobId: 's3-run-abcdefgh', generation: 1, rank: 0, workerId: 'w-s3' },
    ]);
    // Rank 0 writes the model and state.json and reports them; the coordinator completes the
    // checkpoint with manifest.json once the step committed (here: by hand).
    expect(commits[0]?.checkpointFiles).toEqual([]);
    expect(commits[2]?.checkpointFiles.map((f) => f.name)).toEqual(['model.safetensors', 'state.json']);
    expect(await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/`, 's3-run-abcdefgh')).toBeNull();
    const manifest = { step: STEPS, files: commits[2]!.checkpointFiles.map((f) => ({ key: f.name, bytes: f.bytes, sha256: f.sha256 })) };
    await s3.client.send(
      new PutObjectCommand({ Bucket: s3.bucket, Key: 'ckpt/s3-run-abcdefgh/step-00000003/manifest.json', Body: JSON.stringify(manifest) }),
    );
    // Then the latest checkpoint is the last step's, and its teacher is the worker's.
    const checkpoint = await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/`, 's3-run-abcdefgh');
    expect(checkpoint?.state.stateHash).toBe(Buffer.from(commits[2]!.stateHash).toString('hex'));
    expect(checkpoint?.step).toBe(STEPS);
    await expect.poll(() => worker.worker.heldState?.committedStep, { timeout: 10_000 }).toBe(STEPS);
    const teacher = worker.worker.heldState?.state.teacher['backbone.blocks.3.mlp.fc2.weight'];
    const saved = checkpoint?.tensors['teacher/backbone.blocks.3.mlp.fc2.weight'];
    expect(saved?.shape).toEqual(teacher?.shape);
    expect(Buffer.from(saved?.data.buffer ?? new ArrayBuffer(0)).equals(Buffer.from((teacher?.dataSync() as Float32Array).buffer))).toBe(true);
    // The checkpoint holds the center the next step would use (teacher-sync's latest).
    expect(Array.from(checkpoint?.tensors.center?.data ?? [])).toEqual(Array.from(teacherSync.centers.get(STEPS)?.center ?? []));
    // The skip is counted in the metrics.
    expect(await registry.metrics()).toMatch(/dinofleet_skipped_samples_total\{[^}]*reason="missing"[^}]*\} 1/);
  }, 240_000);
});
