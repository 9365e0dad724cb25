import { updateCenter } from '@dinofleet/dino';
import { CancelledError } from '@dinofleet/proto';
import { createLogger, LogLevel } from '@dinofleet/telemetry';
import { describe, expect, it } from 'vitest';

import { CenterStore, MAX_GENERATIONS_PER_STEP } from './center-store.ts';
import type { TeacherSums } from './center-store.ts';

const logger = createLogger({ name: 'teacher-sync', level: LogLevel.Silent });

function sums(step: number, fields: Partial<TeacherSums> = {}): TeacherSums {
  return {
    jobId: 'job',
    generation: 1,
    step,
    rank: 0,
    sums: new Float32Array([step, 1]),
    count: 2,
    patchSums: new Float32Array(0),
    patchCount: 0,
    worldSize: 1,
    centerMomentum: 0.5,
    baseCenter: new Float32Array([0.25, -step]),
    basePatchCenter: new Float32Array(0),
    ...fields,
  };
}

const never = new AbortController().signal;

describe('CenterStore', () => {
  it('computes the center of (generation, step + 1) from the pushed base', () => {
    const store = new CenterStore({ logger });
    const result = store.push(sums(7, { generation: 3 }));
    const expected = updateCenter(new Float32Array([0.25, -7]), new Float32Array([7, 1]), 2, 0.5);
    expect(result.ranksReceived).toBe(1);
    expect(result.centerReady).toBe(true);
    expect(result.computed).toEqual({ step: 8, generation: 3, center: expected, patchCenter: new Float32Array(0) });
    expect(store.lookup('job', 8, 3)).toEqual(result.computed);
    expect(store.lookup('job', 8, 2)).toBeUndefined();
  });

  it('takes an empty base as zeros at step 0 only', () => {
    const store = new CenterStore({ logger });
    const result = store.push(sums(0, { baseCenter: new Float32Array(0) }));
    expect(result.computed?.center).toEqual(updateCenter(new Float32Array(2), new Float32Array([0, 1]), 2, 0.5));
    expect(() => store.push(sums(1, { baseCenter: new Float32Array(0) }))).toThrow(
      /job job generation 1 step 1 rank 0: base_center is empty; every push after step 0 must carry the center its step used/,
    );
  });

  it('stops waiting when the signal aborts, with the signal reason', async () => {
    const store = new CenterStore({ logger });
    const controller = new AbortController();
    const waiting = store.waitForCenter('job', 4, 0, controller.signal);
    controller.abort(new CancelledError('gone'));
    await expect(waiting).rejects.toThrow('gone');
    // The aborted waiter is gone: a later center resolves nobody and nothing leaks.
    store.push(sums(3));
    expect(store.lookup('job', 4)?.step).toBe(4);
  });

  it('keeps the centers of the steps computed last, so a rollback to low steps keeps its own', async () => {
    const store = new CenterStore({ logger, keptCenters: 3 });
    for (let step = 0; step < 6; step++) store.push(sums(step));
    expect(store.lookup('job', 3)).toBeUndefined();
    expect(store.lookup('job', 4)?.step).toBe(4);
    // Generation 2 resumes from a checkpoint at step 1: its centers displace the oldest kept ones.
    store.push(sums(1, { generation: 2 }));
    store.push(sums(2, { generation: 2 }));
    expect(store.lookup('job', 2)?.generation).toBe(2);
    expect(store.lookup('job', 3)?.generation).toBe(2);
    expect(store.lookup('job', 4)).toBeUndefined();
    expect(store.lookup('job', 6)?.generation).toBe(1);
    // A center no longer kept is made again by the pushes, like after a restart.
    const waiting = store.waitForCenter('job', 5, 1, never);
    store.push(sums(4));
    expect((await waiting).center).toEqual(updateCenter(new Float32Array([0.25, -4]), new Float32Array([4, 1]), 2, 0.5));
  });

  it('keeps at most a few generations per step, the newest', () => {
    const store = new CenterStore({ logger });
    for (let generation = 1; generation <= MAX_GENERATIONS_PER_STEP + 2; generation++) store.push(sums(9, { generation }));
    expect(store.lookup('job', 10, 1)).toBeUndefined();
    expect(store.lookup('job', 10, 2)).toBeUndefined();
    expect(store.lookup('job', 10, 3)?.generation).toBe(3);
    expect(store.lookup('job', 10)?.generation).toBe(MAX_GENERATIONS_PER_STEP + 2);
  });

  it('drops the sums of older generations once a newer one completes a step', () => {
    const store = new CenterStore({ logger });
    expect(store.push(sums(5, { generation: 1, worldSize: 2 })).ranksReceived).toBe(1);
    store.push(sums(3, { generation: 2 }));
    // Generation 1's rank 0 at step 5 is forgotten: rank 1 alone does not complete the step.
    expect(store.push(sums(5, { generation: 1, worldSize: 2, rank: 1 }))).toMatchObject({ ranksReceived: 1, centerReady: false });
  });

  it('fails waiters with UNAVAILABLE and ends watches on close', async () => {
    const store = new CenterStore({ logger });
    const waiting = store.waitForCenter('job', 1, 0, never);
    const watch = store.watchCenters('job', 1, never);
    const next = watch.next();
    store.close();
    await expect(waiting).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(await next).toEqual({ done: true, value: undefined });
    expect(() => store.push(sums(0))).toThrow(/shutting down/);
  });
});
