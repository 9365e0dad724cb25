import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { resolveJobSpec, resolveRecipe } from '@dinofleet/config';
import { Rng, buildCropBatch, createDinoState, disposeDinoState, trainStep } from '@dinofleet/dino';
import type { DinoState, Image } from '@dinofleet/dino';
import { decodeSafetensors } from '@dinofleet/data';
import { transportSecurityFromFlags } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { LogLevel, Registry, createLogger } from '@dinofleet/telemetry';
import { MemoryBatchSource } from './batch-loader.ts';
import { GradientLayout } from './gradient-buffer.ts';
import { startWorker } from './index.ts';
import type { WorkerProcess } from './index.ts';
import { stateHash } from './state-hash.ts';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';
import { startFakeTeacherSync } from './testing/fake-teacher-sync.ts';
import type { FakeTeacherSync } from './testing/fake-teacher-sync.ts';
import { maxAbsDiff, randomImages } from './testing/recipes.ts';

/** Global batch 5 split 3 + 2 over two ranks: the uneven split is part of the test. */
const GLOBAL_BATCH = 5;
const STEPS = 3;
const SEED = 11;

const SPEC = resolveJobSpec({
  apiVersion: 'dinofleet/v1',
  kind: 'TrainingJob',
  metadata: { name: 'equivalence' },
  spec: {
    // DINO: centering, so the center travels through teacher-sync. No stochastic depth, so
    // no step depends on the rank's own stream. No warm-up and a learning rate of 2e-4
    // (the preset's would be 1e-5 at this batch), so the weights move by far more than
    // the tolerance and a wrong crop or a missing gradient shows. Not much more: AdamW's
    // first steps divide by √v, which turns float32 rounding in a near-zero gradient
    // into up to ~lr·1e-2 (at lr 1e-3 the largest difference was 8e-6).
    recipe: {
      preset: 'dino',
      overrides: { dropPathRate: 0, crops: { nLocal: 1 }, optim: { warmupEpochs: 0, baseLr: 2e-4, lrScaling: 'none' } },
    },
    data: { manifest: 's3://dinofleet-test/manifest.txt' },
    training: { steps: STEPS, globalBatchSize: GLOBAL_BATCH, seed: SEED, backend: 'cpu' },
    fleet: { workers: 2 },
    // The smallest fusion buckets: the ~5 MiB gradient goes as 6 all-reduces, most tensors
    // whole in one bucket, some split over two, so the fused path is what is compared.
    collective: { fusionBucketBytes: 1024 * 1024 },
  },
});

function values(params: Readonly<Record<string, tf.Tensor>>): Record<string, Float32Array> {
  return Object.fromEntries(Object.entries(params).map(([name, t]) => [name, t.dataSync().slice() as Float32Array]));
}

function worstDiff(a: Record<string, Float32Array>, b: Record<string, Float32Array>): number {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  return Math.max(...Object.keys(a).map((name) => maxAbsDiff(a[name] as Float32Array, b[name] as Float32Array)));
}

describe('two in-process workers', () => {
  const recipe = resolveRecipe(SPEC);
  /** The global batch of each step, in order. */
  const batches: Image[][] = Array.from({ length: STEPS }, (_, s) => randomImages(GLOBAL_BATCH, 100 + s));
  let coordinator: FakeCoordinator;
  let teacherSync: FakeTeacherSync;
  let workers: WorkerProcess[] = [];
  /** Each worker's metrics, by worker id. */
  const registries = new Map<string, Registry>();
  let reference: DinoState;
  let initialStudent: Record<string, Float32Array>;

  let tlsRoot: string;

  beforeAll(async () => {
    await initComputeBackend('cpu');
    // The whole fleet over mutual TLS, as it runs by default: the ring (gRPC and data
    // links), teacher-sync and the Control stream.
    tlsRoot = await mkdtemp(join(tmpdir(), 'dinofleet-worker-test-'));
    await createDevCertificates(tlsRoot);
    const security: TransportSecurity = transportSecurityFromFlags({ tlsDir: tlsRoot });
    teacherSync = await startFakeTeacherSync({ security });
    coordinator = await startFakeCoordinator(2, {
      jobId: 'equivalence-abcdefgh',
      specJson: JSON.stringify(SPEC),
      globalBatch: GLOBAL_BATCH,
      totalSteps: STEPS,
      teacherSyncAddress: teacherSync.address,
      manifestUri: SPEC.spec.data.manifest,
    }, { security });
    const logger = createLogger({ name: 'worker-test', level: LogLevel.Warn });
    workers = await Promise.all(
      ['worker-b', 'worker-a'].map((workerId) =>
        startWorker({
          coordinatorAddress: coordinator.address,
          security,
          workerId,
          backend: 'cpu',
          heartbeatIntervalMs: 200,
          registry: registries.set(workerId, new Registry()).get(workerId) as Registry,
          logger,
          batchSource: ({ perRankBatch, batchOffset }) =>
            new MemoryBatchSource(
              batches.flatMap((images, s) =>
                images.slice(batchOffset, batchOffset + perRankBatch).map((image, i) => ({ sampleId: s * GLOBAL_BATCH + batchOffset + i, image })),
              ),
              perRankBatch,
            ),
        }),
      ),
    );

    // The reference: one process, the same images in the same order, the same crops.
    reference = createDinoState(recipe, SEED, { totalSteps: STEPS });
    initialStudent = values(reference.student);
    for (let s = 0; s < STEPS; s++) {
      const metrics = await trainStep(reference, buildCropBatch(batches[s] as Image[], recipe.crops, new Rng(SEED).fork(s + 1)));
      expect(metrics.applied).toBe(true);
    }
  });

  afterAll(async () => {
    await Promise.allSettled(workers.map((w) => w.close()));
    await coordinator?.close();
    await teacherSync?.close();
    if (reference !== undefined) disposeDinoState(reference);
    if (tlsRoot !== undefined) await rm(tlsRoot, { recursive: true, force: true });
  });

  it('train the same weights as one process on the whole batch, with equal hashes at every step', async () => {
    await coordinator.waitForAck(STEPS, 280_000);
    expect(coordinator.mismatches).toEqual([]);
    // Ranks are the workers sorted by id.
    const [rank0, rank1] = ['worker-a', 'worker-b'].map((id) => workers.find((w) => w.workerId === id) as WorkerProcess);
    // The ack is on its way to the workers when the fake has sent it.
    await expect.poll(() => [rank0, rank1].map((w) => w?.worker.heldState?.committedStep), { timeout: 10_000 }).toEqual([STEPS, STEPS]);
    const held = [rank0, rank1].map((w) => w?.worker.heldState);
    const states = held.map((h) => h?.state as DinoState);
    for (const h of held) {
      expect(h?.jobId).toBe('equivalence-abcdefgh');
      expect(h?.committedStep).toBe(STEPS);
    }

    const reports: Record<string, number> = {};
    for (const [rank, state] of states.entries()) {
      expect(state.step).toBe(STEPS);
      reports[`rank ${rank} student`] = worstDiff(values(state.student), values(reference.student));
      reports[`rank ${rank} teacher`] = worstDiff(values(state.teacher), values(reference.teacher));
      // Like the one-process state, the state after the last step holds the next center.
      reports[`rank ${rank} center`] = maxAbsDiff(state.center, reference.center);
    }
    const finalCenter = teacherSync.centers.get(STEPS)?.center ?? new Float32Array(0);
    reports['teacher-sync center after the last step'] = maxAbsDiff(finalCenter, reference.center);
    const moved = worstDiff(values(reference.student), initialStudent);
    console.log(`max |Δ| against one process after ${STEPS} steps (the student moved up to ${moved}):`, reports);
    for (const [what, diff] of Object.entries(reports)) expect(diff, what).toBeLessThanOrEqual(1e-5);
    // The comparison means something: training moved the weights 20x the tolerance.
    expect(moved).toBeGreaterThan(2e-4);
    // The two ranks are bit-identical.
    expect(worstDiff(values(states[0]!.student), values(states[1]!.student))).toBe(0);
    expect((await stateHash(states[0]!)).equals(await stateHash(states[1]!))).toBe(true);
  }, 300_000);

  it('commit what the contract says: steps, sample ids in batch order, hashes, losses, lr', () => {
    for (let step = 1; step <= STEPS; step++) {
      const commits = coordinator.commits.get(step) ?? [];
      expect(commits).toHaveLength(2);
      const [c0, c1] = commits;
      expect(c0?.generation).toBe(1);
      expect(c0?.step).toBe(step);
      expect(c0?.stateHash.length).toBe(32);
      expect(Buffer.from(c0?.stateHash ?? []).equals(Buffer.from(c1?.stateHash ?? []))).toBe(true);
      // Rank 0 has images [0, 3) of the global batch, rank 1 [3, 5).
      const first = (step - 1) * GLOBAL_BATCH;
      expect(c0?.sampleIds).toEqual([first, first + 1, first + 2]);
      expect(c1?.sampleIds).toEqual([first + 3, first + 4]);
      expect([c0?.sampleCount, c1?.sampleCount]).toEqual([3, 2]);
      for (const c of commits) {
        expect(Number.isFinite(c.lossParts.total)).toBe(true);
        expect(c.lossParts.total).toBeGreaterThan(0);
        expect(c.lr).toBeGreaterThan(0);
        expect(c.imagesPerSecond).toBeGreaterThan(0);
        expect(c.checkpointUri).toBe('');
      }
    }
    // Every rank pushed its teacher sums for every step, and rank 0 sent the last step's
    // teacher snapshot (a safetensors file of the teacher, tensors named by parameter alone).
    expect(teacherSync.pushes.map((p) => `${p.step}/${p.rank}`).sort()).toEqual(['0/0', '0/1', '1/0', '1/1', '2/0', '2/1']);
    expect(teacherSync.snapshots.map((s) => s.header.step)).toEqual([STEPS]);
    const uploaded = teacherSync.snapshots[0]?.bytes ?? Buffer.alloc(0);
    const snapshot = decodeSafetensors(uploaded);
    expect(Object.keys(snapshot.tensors).sort()).toEqual(Object.keys(reference.teacher).sort());
    expect(snapshot.metadata).toEqual({ jobId: 'equivalence-abcdefgh', step: String(STEPS) });
    // Both ranks attested that step's snapshot with the SHA-256 of the bytes rank 0 uploaded:
    // each rank encoded its own teacher to exactly those bytes.
    const uploadedSha = createHash('sha256').update(uploaded).digest().toString('hex');
    expect(
      teacherSync.attestations
        .map((a) => ({ jobId: a.jobId, generation: a.generation, step: a.step, rank: a.rank, worldSize: a.worldSize, sha256: a.sha256.toString('hex') }))
        .sort((a, b) => a.rank - b.rank),
    ).toEqual(
      [0, 1].map((rank) => ({ jobId: 'equivalence-abcdefgh', generation: 1, step: STEPS, rank, worldSize: 2, sha256: uploadedSha })),
    );
  });

  it('export the all-reduce metrics of the run: calls, bytes, bucket busbw, the ring link and their ratio', async () => {
    const gradientBytes = 4 * new GradientLayout(reference.student).size;
    for (const [rank, workerId] of ['worker-a', 'worker-b'].entries()) {
      const registry = registries.get(workerId) as Registry;
      const series = (name: string, extra = ''): RegExp => new RegExp(`^${name}\\{[^}]*job="equivalence-abcdefgh"[^}]*rank="${rank}"[^}]*${extra}[^}]*\\} (\\S+)$`, 'm');
      const value = async (name: string, extra = ''): Promise<number> => Number(series(name, extra).exec(await registry.metrics())?.[1] ?? NaN);
      // Every step all-reduces at least the whole gradient.
      expect(await value('dinofleet_collective_bytes_total')).toBeGreaterThanOrEqual(STEPS * gradientBytes);
      // Its full 1 MiB buckets go by the direct algorithm (a world of 2 is under directMaxRanks),
      // the short last one (under smallMessageBytes) by recursive doubling.
      expect(await value('dinofleet_collective_allreduce_seconds_count', 'algorithm="direct"')).toBeGreaterThanOrEqual(STEPS * Math.floor(gradientBytes / (1024 * 1024)));
      expect(await value('dinofleet_collective_allreduce_seconds_count', 'algorithm="recursive-doubling"')).toBeGreaterThanOrEqual(STEPS);
      expect(await value('dinofleet_collective_busbw_bytes_per_second')).toBeGreaterThan(0);
      // The left neighbour of a two-rank ring is the other rank.
      await expect.poll(() => value('dinofleet_collective_link_bandwidth_bytes_per_second', `peer_rank="${1 - rank}"`), { timeout: 5_000 }).toBeGreaterThan(0);
      expect(await value('dinofleet_collective_busbw_link_ratio')).toBeGreaterThan(0);
    }
  });

  it('register with their collective address and backend, send heartbeats, and drop the state on Stop', async () => {
    expect(coordinator.registers.map((r) => r.workerId).sort()).toEqual(['worker-a', 'worker-b']);
    for (const r of coordinator.registers) {
      expect(workers.map((w) => w.collectiveAddress)).toContain(r.collectiveAddress);
      expect(r.backend).toBe(2); // COMPUTE_BACKEND_CPU
      expect(r.jobId).toBe('');
    }
    expect(coordinator.heartbeats.length).toBeGreaterThan(0);
    expect(coordinator.acquireLeaseCalls).toEqual([]);
    coordinator.stopAll('job succeeded');
    await expect.poll(() => workers.map((w) => w.worker.heldState), { timeout: 10_000 }).toEqual([null, null]);
    // The run's series went with it.
    for (const registry of registries.values()) expect(await registry.metrics()).not.toMatch(/^dinofleet_collective_\w+\{/m);
    // Heartbeats go on while idle, with generation 0 once the run is over.
    await expect.poll(() => coordinator.heartbeats.at(-1)?.generation, { timeout: 5_000 }).toBe(0);
  });
});
