// The distributed step is the real step: two worker processes and the one-process trainer,
// given the same batches, seed and data order, end with the same weights.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runEquivalence, scaleThenKill } from '@dinofleet/bench/equivalence';
import { describe, expect, it } from 'vitest';

describe('equivalence of the cluster and the one-process trainer', () => {
  it('ends 2 workers x 3 steps with the same student, teacher and center (max |Δ| <= 1e-5)', { timeout: 300_000 }, async () => {
    const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-equivalence-'));
    const result = await runEquivalence({ workers: 2, steps: 3, globalBatchSize: 8, images: 64, nLocal: 1, logDir });
    expect(result.steps).toBe(3);
    expect(result.tensorsCompared).toBeGreaterThan(40);
    expect(result.maxAbsDiffStudent).toBeLessThanOrEqual(1e-5);
    expect(result.maxAbsDiffTeacher).toBeLessThanOrEqual(1e-5);
    expect(result.maxAbsDiffCenter).toBeLessThanOrEqual(1e-5);
    // The steps moved the weights by far more than the tolerance, so agreeing is not just
    // agreeing on the initial state.
    expect(result.maxAbsUpdate).toBeGreaterThan(1e-4);
  });

  it('stays equal when the fleet changes mid-run: scaled from 2 to 3 workers, then a worker SIGKILLed', { timeout: 300_000 }, async () => {
    const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-equivalence-elastic-'));
    const result = await runEquivalence({
      workers: 2,
      maxWorkers: 3,
      // The third process waits idle, so the scale-up joins at the next boundary.
      fleetWorkers: 3,
      steps: 8,
      globalBatchSize: 12,
      images: 128,
      nLocal: 1,
      logDir,
      during: scaleThenKill({ scaleAfter: 2, scaleTo: 3, killAfter: 4 }),
    });
    // Generation 1 (2 ranks), 2 (3 ranks after the join), 3 (2 survivors), 4 (the replacement joined).
    expect(result.generations).toBeGreaterThanOrEqual(3);
    expect(result.maxAbsDiffStudent).toBeLessThanOrEqual(1e-5);
    expect(result.maxAbsDiffTeacher).toBeLessThanOrEqual(1e-5);
    expect(result.maxAbsDiffCenter).toBeLessThanOrEqual(1e-5);
    expect(result.maxAbsUpdate).toBeGreaterThan(1e-4);
  });
});
