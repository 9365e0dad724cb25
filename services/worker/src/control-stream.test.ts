import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { resolveJobSpec } from '@dinofleet/config';
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
      workerId: 'w-1',
      backend: 'cpu',
      heartbeatIntervalMs: 100,
      logger,
      batchSource: () => new MemoryBatchSource([], 2),
    });
    return { coordinator, worker };
  }

  it('reconnects with backoff after the coordinator ends the stream, and registers again with the same id', async () => {
    // start_step 1 for a worker without state: it cannot join and re-registers.
    const { coordinator: c, worker: w } = await start(1);
    await expect.poll(() => c.registers.length, { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
    expect(w.worker.heldState).toBeNull();
    // Re-registered without a job: the state it could not use was dropped.
    expect(c.registers[1]).toMatchObject({ workerId: 'w-1', jobId: '', stateStep: 0 });
    const before = c.registers.length;
    c.dropStreams();
    await expect.poll(() => c.registers.length, { timeout: 10_000 }).toBeGreaterThan(before);
    expect(new Set(c.registers.map((r) => r.workerId))).toEqual(new Set(['w-1']));
    expect(c.registers.every((r) => r.collectiveAddress === w.collectiveAddress)).toBe(true);
  });

  it('sends heartbeats and Leaving when closed', async () => {
    const { coordinator: c, worker: w } = await start(1);
    await expect.poll(() => c.heartbeats.length, { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
    const beat = c.heartbeats.at(-1);
    expect(beat?.generation).toBe(0);
    expect(Math.abs((beat?.sentAtUnixMs ?? 0) - Date.now())).toBeLessThan(10_000);
    await w.close('scale-down');
    await expect.poll(() => c.leavings.map((l) => l.reason), { timeout: 5_000 }).toContain('scale-down');
  });

  it('fails a step whose data cannot be loaded: Leaving names the rank, worker and step, the state is dropped, it registers again', async () => {
    // The batch source has no images: step 0 fails at its first batch.
    const { coordinator: c, worker: w } = await start(0);
    await expect.poll(() => c.leavings.length, { timeout: 30_000 }).toBeGreaterThanOrEqual(1);
    expect(c.leavings[0]?.reason).toMatch(/^rank 0 \(w-1\) failed at step 0: memory batch source/);
    expect(w.worker.heldState).toBeNull();
    await expect.poll(() => c.registers.length, { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
    expect(c.registers.at(-1)?.jobId).toBe('');
  });
});
