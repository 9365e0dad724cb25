import { CancelledError } from '@dinofleet/proto';
import { createLogger, LogLevel } from '@dinofleet/telemetry';
import { describe, expect, it } from 'vitest';

import { CenterStore } from './center-store.ts';
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
    ...fields,
  };
}

describe('CenterStore', () => {
  it('stops waiting when the signal aborts, with the signal reason', async () => {
    const store = new CenterStore({ logger });
    const controller = new AbortController();
    const waiting = store.waitForCenter('job', 4, controller.signal);
    controller.abort(new CancelledError('gone'));
    await expect(waiting).rejects.toThrow('gone');
    // The aborted waiter is gone: a later center resolves nobody and nothing leaks.
    for (let step = 0; step < 4; step++) store.push(sums(step));
    expect(store.lookup('job', 4)?.step).toBe(4);
  });

  it('keeps the last N centers and says so for an older step', async () => {
    const store = new CenterStore({ logger, keptCenters: 3 });
    for (let step = 0; step < 6; step++) store.push(sums(step));
    expect(store.lookup('job', 3)).toBeUndefined();
    expect(store.lookup('job', 4)?.step).toBe(4);
    await expect(store.waitForCenter('job', 2, new AbortController().signal)).rejects.toThrow(
      /center for step 2 of job job is no longer kept \(teacher-sync keeps the last 3; the oldest is for step 4\)/,
    );
    // Sums for a step long past are ignored, not an error.
    expect(store.push(sums(1))).toEqual({ ranksReceived: 0, centerReady: true, computed: [] });
  });

  it('fails waiters with UNAVAILABLE and ends watches on close', async () => {
    const store = new CenterStore({ logger });
    const waiting = store.waitForCenter('job', 1, new AbortController().signal);
    const watch = store.watchCenters('job', 1, new AbortController().signal);
    const next = watch.next();
    store.close();
    await expect(waiting).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(await next).toEqual({ done: true, value: undefined });
    expect(() => store.push(sums(0))).toThrow(/shutting down/);
  });
});
