import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { resolveJobSpec } from '@dinofleet/config';
import type { Image } from '@dinofleet/dino';
import { INSECURE } from '@dinofleet/proto';
import type { CommitStep } from '@dinofleet/proto';
import { LogLevel, Registry, createLogger } from '@dinofleet/telemetry';
import { MemoryBatchSource } from './batch-loader.ts';
import { NonfiniteFaults } from './fault-injection.ts';
import { startWorker } from './index.ts';
import type { WorkerProcess } from './index.ts';
import { stateHash } from './state-hash.ts';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';
import { startFakeTeacherSync } from './testing/fake-teacher-sync.ts';
import type { FakeTeacherSync } from './testing/fake-teacher-sync.ts';
import { randomImages } from './testing/recipes.ts';

const GLOBAL_BATCH = 2;
const TOTAL_STEPS = 3;
const JOB = 'elastic-abcdefgh';

const SPEC = resolveJobSpec({
  apiVersion: 'dinofleet/v1',
  kind: 'TrainingJob',
  metadata: { name: 'elastic' },
  spec: {
    recipe: { preset: 'dino', overrides: { dropPathRate: 0, crops: { nLocal: 0 } } },
    data: { manifest: 's3://dinofleet-test/manifest.txt' },
    training: { steps: TOTAL_STEPS, globalBatchSize: GLOBAL_BATCH, seed: 7, backend: 'cpu' },
  },
});

/** The global batch of each step. */
const BATCHES: Image[][] = Array.from({ length: TOTAL_STEPS }, (_, s) => randomImages(GLOBAL_BATCH, 300 + s));

const hex = (bytes: Uint8Array | undefined): string => Buffer.from(bytes ?? new Uint8Array(0)).toString('hex');

describe('a worker across generations', () => {
  const logger = createLogger({ name: 'elastic-test', level: LogLevel.Silent });
  let coordinator: FakeCoordinator | undefined;
  let teacherSync: FakeTeacherSync | undefined;
  let workers: WorkerProcess[] = [];

  beforeAll(() => initComputeBackend('cpu'));

  afterEach(async () => {
    await Promise.allSettled(workers.map((w) => w.close()));
    workers = [];
    await coordinator?.close();
    await teacherSync?.close();
  });

  async function startFleet(options: { autoAck: boolean; workers: number }): Promise<FakeCoordinator> {
    teacherSync = await startFakeTeacherSync();
    coordinator = await startFakeCoordinator(options.workers, {
      jobId: JOB,
      specJson: JSON.stringify(SPEC),
      globalBatch: GLOBAL_BATCH,
      totalSteps: TOTAL_STEPS,
      teacherSyncAddress: teacherSync.address,
      manifestUri: SPEC.spec.data.manifest,
      autoAck: options.autoAck,
    });
    return coordinator;
  }

  async function addWorker(workerId: string, extra: { nonfiniteFaults?: NonfiniteFaults; registry?: Registry; stateTransferTimeoutMs?: number } = {}): Promise<WorkerProcess> {
    const worker = await startWorker({
      coordinatorAddress: (coordinator as FakeCoordinator).address,
      security: INSECURE,
      workerId,
      backend: 'cpu',
      heartbeatIntervalMs: 200,
      logger,
      registry: extra.registry ?? new Registry(),
      nonfiniteFaults: extra.nonfiniteFaults ?? new NonfiniteFaults([]),
      ...(extra.stateTransferTimeoutMs !== undefined && { stateTransferTimeoutMs: extra.stateTransferTimeoutMs }),
      // Every generation reads on from its start step: step s is always the same images.
      batchSource: ({ assignment, perRankBatch, batchOffset }) =>
        new MemoryBatchSource(
          BATCHES.slice(assignment.startStep).flatMap((images, i) =>
            images.slice(batchOffset, batchOffset + perRankBatch).map((image, k) => ({ sampleId: (assignment.startStep + i) * GLOBAL_BATCH + batchOffset + k, image })),
          ),
          perRankBatch,
        ),
    });
    workers.push(worker);
    return worker;
  }

  /** The CommitStep of `step` in `generation` from `workerId`, once it arrived. */
  async function commitOf(c: FakeCoordinator, workerId: string, generation: number, step: number): Promise<CommitStep> {
    const find = (): CommitStep | undefined =>
      c.allCommits.find((x) => x.workerId === workerId && x.commit.generation === generation && x.commit.step === step)?.commit;
    await expect.poll(() => find() !== undefined, { timeout: 60_000 }).toBe(true);
    return find() as CommitStep;
  }

  it('rolls an aborted step back to the acknowledged state, re-joins the next generation with it, and keeps a pending state over a broken stream', async () => {
    const c = await startFleet({ autoAck: false, workers: 1 });
    const registry = new Registry();
    const w = await addWorker('w-a', { registry });
    const commit1 = await commitOf(c, 'w-a', 1, 1);
    c.send('w-a', { $case: 'commitAck', commitAck: { generation: 1, step: 1, hold: false } });
    // Step 2's update is applied and committed, but never acknowledged: the generation is aborted.
    const commit2 = await commitOf(c, 'w-a', 1, 2);
    expect(hex(commit2.stateHash)).not.toBe(hex(commit1.stateHash));
    expect(w.worker.heldState?.pending?.step).toBe(2);
    c.abort(1, 'rank 1 lost');
    await expect.poll(() => w.worker.heldState?.state.step, { timeout: 10_000 }).toBe(1);
    const held = w.worker.heldState;
    expect(held).toMatchObject({ jobId: JOB, committedStep: 1, pending: null, rollback: null });
    expect(hex(await stateHash(held!.state))).toBe(hex(commit1.stateHash));
    expect(await registry.metrics()).toMatch(/^dinofleet_worker_aborted_steps_total 1$/m);

    // The next generation starts at the committed step: the worker holds that state already.
    c.assign({ generation: 2, workerIds: ['w-a'], startStep: 1, startStateHash: commit1.stateHash });
    const again2 = await commitOf(c, 'w-a', 2, 2);
    // Step 2 again from the same state and images: the same state as the aborted attempt.
    expect(hex(again2.stateHash)).toBe(hex(commit2.stateHash));
    c.send('w-a', { $case: 'commitAck', commitAck: { generation: 2, step: 2, hold: false } });
    const commit3 = await commitOf(c, 'w-a', 2, 3);
    expect(c.stepFailures).toEqual([]);
    expect(c.leavings).toEqual([]);
    expect(c.registers).toHaveLength(1);

    // The coordinator goes away before acknowledging step 3: the worker keeps that state
    // (and the copy at step 2) and reports both when it registers again.
    c.dropStreams();
    await expect.poll(() => c.registers.length, { timeout: 10_000 }).toBe(2);
    expect(c.registers[1]).toMatchObject({ workerId: 'w-a', jobId: JOB, stateStep: 2, pendingStep: 3 });
    expect(hex(c.registers[1]?.stateHash)).toBe(hex(again2.stateHash));
    expect(hex(c.registers[1]?.pendingHash)).toBe(hex(commit3.stateHash));
    // The new coordinator had committed step 3: it starts there, and the worker keeps it.
    c.assign({ generation: 3, workerIds: ['w-a'], startStep: 3, startStateHash: commit3.stateHash });
    await expect.poll(() => w.worker.heldState?.committedStep, { timeout: 10_000 }).toBe(3);
    expect(w.worker.heldState?.rollback).toBeNull();
    expect(hex(await stateHash(w.worker.heldState!.state))).toBe(hex(commit3.stateHash));
    expect(c.stepFailures).toEqual([]);
  }, 240_000);

  it('hands its state to a joining worker over StateTransfer; a joiner with the wrong hash or no source state excludes itself', async () => {
    const c = await startFleet({ autoAck: false, workers: 1 });
    const registryA = new Registry();
    const registryB = new Registry();
    const a = await addWorker('w-a', { registry: registryA });
    const commit1 = await commitOf(c, 'w-a', 1, 1);
    // The membership changes at this boundary.
    c.send('w-a', { $case: 'commitAck', commitAck: { generation: 1, step: 1, hold: true } });
    await expect.poll(() => a.worker.heldState?.committedStep, { timeout: 10_000 }).toBe(1);
    const b = await addWorker('w-b', { registry: registryB });
    await expect.poll(() => c.registers.map((r) => r.workerId), { timeout: 10_000 }).toContain('w-b');

    c.assign({ generation: 2, workerIds: ['w-a', 'w-b'], startStep: 1, stateSources: { 'w-b': a.collectiveAddress }, startStateHash: commit1.stateHash });
    // Both train step 2 from the same state: equal hashes, the joiner's first commit included.
    const [fromA, fromB] = await Promise.all([commitOf(c, 'w-a', 2, 2), commitOf(c, 'w-b', 2, 2)]);
    expect(hex(fromB.stateHash)).toBe(hex(fromA.stateHash));
    expect(c.stepFailures).toEqual([]);
    expect(await registryA.metrics()).toMatch(/^dinofleet_worker_state_transfers_total\{role="sent"\} 1$/m);
    expect(await registryB.metrics()).toMatch(/^dinofleet_worker_state_transfers_total\{role="received"\} 1$/m);
    expect(await registryB.metrics()).toMatch(/^dinofleet_worker_state_transfer_seconds_count 1$/m);

    // Generation 2 is aborted before step 2 commits: both are back at step 1.
    c.abort(2, 'test');
    await expect.poll(() => [a, b].map((w) => w.worker.heldState?.state.step), { timeout: 10_000 }).toEqual([1, 1]);

    // A joiner told the wrong hash: the transfer works, the check does not.
    const joiner = await addWorker('w-c', { stateTransferTimeoutMs: 3_000 });
    await expect.poll(() => c.registers.map((r) => r.workerId), { timeout: 10_000 }).toContain('w-c');
    const wrong = Buffer.alloc(32, 0xab);
    c.assign({ generation: 3, workerIds: ['w-a', 'w-c'], startStep: 1, stateSources: { 'w-c': a.collectiveAddress }, startStateHash: wrong, recipients: ['w-c'] });
    await expect.poll(() => c.stepFailures.length, { timeout: 30_000 }).toBe(1);
    expect(c.stepFailures[0]).toMatchObject({ workerId: 'w-c', generation: 3, step: 2, excludeMe: true });
    expect(c.stepFailures[0]?.reason).toContain(`state hash mismatch at step 1: this rank has ${hex(commit1.stateHash)}, the job ${wrong.toString('hex')}`);
    expect(joiner.worker.heldState).toBeNull();

    // A source that does not hold the step: FAILED_PRECONDITION until the deadline, then excluded.
    c.assign({ generation: 4, workerIds: ['w-a', 'w-c'], startStep: 2, stateSources: { 'w-c': a.collectiveAddress }, recipients: ['w-c'] });
    await expect.poll(() => c.stepFailures.length, { timeout: 30_000 }).toBe(2);
    expect(c.stepFailures[1]).toMatchObject({ workerId: 'w-c', generation: 4, excludeMe: true });
    expect(c.stepFailures[1]?.reason).toMatch(/state transfer from .* failed: .*holds job elastic-abcdefgh at step 1 \(acknowledged 1\), not 2/);
    expect(joiner.worker.heldState).toBeNull();
    // The source kept its state through all of it.
    expect(hex(await stateHash(a.worker.heldState!.state))).toBe(hex(commit1.stateHash));
  }, 240_000);

  it('reports an injected non-finite step without applying it, ignores an ack of it, and retries the step in the next generation', async () => {
    const c = await startFleet({ autoAck: true, workers: 1 });
    // Step 1 (the second step) gets a NaN in its loss slot, once.
    const w = await addWorker('w-a', { nonfiniteFaults: new NonfiniteFaults([1]) });
    const commit1 = await commitOf(c, 'w-a', 1, 1);
    expect(commit1.nonfinite).toBe(false);
    const bad = await commitOf(c, 'w-a', 1, 2);
    expect(bad.nonfinite).toBe(true);
    // The state did not move: its hash is step 1's.
    expect(hex(bad.stateHash)).toBe(hex(commit1.stateHash));
    expect(bad.sampleIds).toEqual([2, 3]);
    expect(w.worker.heldState?.state.step).toBe(1);
    expect(w.worker.heldState?.pending).toBeNull();
    // An ack of a non-finite step cannot be right: it is ignored.
    c.send('w-a', { $case: 'commitAck', commitAck: { generation: 1, step: 2, hold: false } });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(w.worker.heldState?.committedStep).toBe(1);
    expect(c.allCommits.filter((x) => x.commit.generation === 1)).toHaveLength(2);

    // The coordinator retries the step in a new generation: this time it is finite.
    c.assign({ generation: 2, workerIds: ['w-a'], startStep: 1, startStateHash: commit1.stateHash });
    await c.waitForAck(TOTAL_STEPS, 120_000);
    const retried = await commitOf(c, 'w-a', 2, 2);
    expect(retried.nonfinite).toBe(false);
    expect(hex(retried.stateHash)).not.toBe(hex(commit1.stateHash));
    expect(c.stepFailures).toEqual([]);
  }, 240_000);
});
