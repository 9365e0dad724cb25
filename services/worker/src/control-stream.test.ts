import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { resolveJobSpec } from '@dinofleet/config';
import { INSECURE } from '@dinofleet/proto';
import { LogLevel, createLogger } from '@dinofleet/telemetry';
import { MemoryBatchSource } from './batch-loader.ts';
import { startWorker } from './index.ts';
import type { WorkerProcess } from './index.ts';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';

const SPEC = resolveJobSpec({
  apiVersion: 'dinofleet/v1',
  kind: 'TrainingJob',
  metadata: { name: 'control' },
  spec: {
    recipe: { preset: 'dino', overrides: { crops: { nLocal: 0 } } },
    data: { manifest: 's3://dinofleet-test/manifest.txt' },
    training: { steps: 4, globalBatchSize: 2, seed: 1, backend: 'cpu' },
  },
});

describe('the Control stream', () => {
  let coordinator: FakeCoordinator | undefined;
  let worker: WorkerProcess | undefined;
  const logger = createLogger({ name: 'control-test', level: LogLevel.Silent });

  beforeAll(() => initComputeBackend('cpu'));

  afterEach(async () => {
    await worker?.close();
    await coordinator?.close();
  });

  async function start(startStep: number): Promise<{ coordinator: FakeCoordinator; worker: WorkerProcess }> {
    coordinator = await startFakeCoordinator(1, {
      jobId: 'control-abcdefgh',
      specJson: JSON.stringify(SPEC),
      globalBatch: 2,
      totalSteps: 4,
      teacherSyncAddress: '127.0.0.1:1',
      manifestUri: SPEC.spec.data.manifest,
      startStep,
    });
    worker = await startWorker({
      coordinatorAddress: coordinator.address,
      security: INSECURE,
      workerId: 'w-1',
      backend: 'cpu',
      heartbeatIntervalMs: 100,
      logger,
      batchSource: () => new MemoryBatchSource([], 2),
    });
    return { coordinator, worker };
  }

  it('refuses a generation it holds no state for with StepFailed{exclude_me}, stays on its stream, and reconnects after the coordinator ends it', async () => {
    // start_step 1 for a worker without state and without a state source: it cannot join.
    const { coordinator: c, worker: w } = await start(1);
    await expect.poll(() => c.stepFailures.length, { timeout: 10_000 }).toBe(1);
    expect(c.stepFailures[0]).toMatchObject({ workerId: 'w-1', generation: 1, step: 2, excludeMe: true });
    expect(c.stepFailures[0]?.reason).toMatch(/^rank 0 \(w-1\) could not start generation 1: it holds no state of job control-abcdefgh at step 1/);
    expect(w.worker.heldState).toBeNull();
    // No Leaving, no new stream: it waits for the coordinator.
    expect(c.leavings).toEqual([]);
    expect(c.registers).toHaveLength(1);
    c.dropStreams();
    await expect.poll(() => c.registers.length, { timeout: 10_000 }).toBe(2);
    expect(c.registers[1]).toMatchObject({ workerId: 'w-1', jobId: '', stateStep: 0, pendingStep: 0, collectiveAddress: w.collectiveAddress });
  });

  it('sends heartbeats, and a non-graceful Leaving when closed', async () => {
    const { coordinator: c, worker: w } = await start(1);
    await expect.poll(() => c.heartbeats.length, { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
    const beat = c.heartbeats.at(-1);
    expect(beat?.generation).toBe(0);
    expect(Math.abs((beat?.sentAtUnixMs ?? 0) - Date.now())).toBeLessThan(10_000);
    await w.close('scale-down');
    await expect.poll(() => c.leavings, { timeout: 5_000 }).toContainEqual({ workerId: 'w-1', reason: 'scale-down', graceful: false });
  });

  it('leaves gracefully at once when it is in no job', async () => {
    const { coordinator: c, worker: w } = await start(1);
    await expect.poll(() => c.stepFailures.length, { timeout: 10_000 }).toBe(1);
    expect(await w.worker.leave('sigterm', 5_000)).toBe(true);
    await expect.poll(() => c.leavings, { timeout: 5_000 }).toContainEqual({ workerId: 'w-1', reason: 'sigterm', graceful: true });
    // Closing after it sends no second (non-graceful) Leaving.
    await w.close('sigterm');
    expect(c.leavings.filter((l) => l.workerId === 'w-1')).toHaveLength(1);
  });

  it('fails a step whose data cannot be loaded: StepFailed names the rank, worker and step; it keeps its state and its stream', async () => {
    // The batch source has no images: step 0 fails at its first batch.
    const { coordinator: c, worker: w } = await start(0);
    await expect.poll(() => c.stepFailures.length, { timeout: 30_000 }).toBe(1);
    expect(c.stepFailures[0]).toMatchObject({ workerId: 'w-1', generation: 1, step: 1, excludeMe: false });
    expect(c.stepFailures[0]?.reason).toMatch(/^rank 0 \(w-1\) failed at step 0: memory batch source/);
    expect(c.leavings).toEqual([]);
    expect(w.worker.heldState).toMatchObject({ jobId: 'control-abcdefgh', committedStep: 0 });
    expect(w.worker.heldState?.state.step).toBe(0);
    expect(c.registers).toHaveLength(1);
  });
});
