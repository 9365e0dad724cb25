import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { parseExposition, sampleValue } from './exposition.test-helper.ts';
import { STEP_DURATION_BUCKETS_SECONDS, SkipReason, StepPhase, createTrainingMetrics } from './training-metrics.ts';
import type { StepMetricsLike } from './training-metrics.ts';

const STEP: StepMetricsLike = {
  step: 7,
  applied: true,
  gradNorm: 2.5,
  lr: 1e-3,
  weightDecay: 0.05,
  momentum: 0.994,
  teacherTemp: 0.07,
  centerNorm: 0.5,
  loss: { total: 6, dino: 4, ibot: 1.5, koleo: -0.5, gram: 1 },
  teacherEntropy: Math.log(8),
  agreement: 0.75,
};

const read = async (registry: Registry): Promise<ReturnType<typeof parseExposition>> => parseExposition(await registry.metrics());

describe('createTrainingMetrics', () => {
  it('records every value of a step under the job and rank labels', async () => {
    const registry = new Registry();
    const metrics = createTrainingMetrics(registry, { job: 'j', rank: '3' });
    metrics.recordStep(STEP, { stepSeconds: 0.3, imagesPerSecond: 512, prototypes: 64 });
    const s = await read(registry);
    const l = { job: 'j', rank: '3' };
    expect(sampleValue(s, 'dinofleet_step', l)).toBe(7);
    expect(sampleValue(s, 'dinofleet_steps_committed_total', l)).toBe(1);
    expect(sampleValue(s, 'dinofleet_nonfinite_steps_total', l)).toBe(0);
    for (const [part, value] of Object.entries(STEP.loss)) expect(sampleValue(s, 'dinofleet_loss', { ...l, part })).toBe(value);
    expect(sampleValue(s, 'dinofleet_learning_rate', l)).toBe(1e-3);
    expect(sampleValue(s, 'dinofleet_weight_decay', l)).toBe(0.05);
    expect(sampleValue(s, 'dinofleet_teacher_momentum', l)).toBe(0.994);
    expect(sampleValue(s, 'dinofleet_teacher_temperature', l)).toBe(0.07);
    expect(sampleValue(s, 'dinofleet_grad_norm', l)).toBe(2.5);
    expect(sampleValue(s, 'dinofleet_center_norm', l)).toBe(0.5);
    expect(sampleValue(s, 'dinofleet_teacher_entropy_nats', l)).toBeCloseTo(Math.log(8), 12);
    // ln 8 / ln 64 = 3 ln 2 / 6 ln 2.
    expect(sampleValue(s, 'dinofleet_teacher_entropy_ratio', l)).toBeCloseTo(0.5, 12);
    expect(sampleValue(s, 'dinofleet_student_teacher_agreement_ratio', l)).toBe(0.75);
    expect(sampleValue(s, 'dinofleet_images_per_second', l)).toBe(512);
    // 0.3 s falls in (0.25, 0.5]: cumulative buckets are 0 up to 0.25 and 1 from 0.5.
    const bucket = (le: string): number => sampleValue(s, 'dinofleet_step_duration_seconds_bucket', { ...l, phase: 'total', le });
    expect(bucket('0.25')).toBe(0);
    expect(bucket('0.5')).toBe(1);
    expect(bucket('+Inf')).toBe(1);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_count', { ...l, phase: 'total' })).toBe(1);
    expect(STEP_DURATION_BUCKETS_SECONDS[0]).toBe(0.05);
    expect(STEP_DURATION_BUCKETS_SECONDS.at(-1)).toBe(60);
  });

  it('counts a NaN step without committing it or overwriting the last good values', async () => {
    const registry = new Registry();
    const metrics = createTrainingMetrics(registry, { job: 'j' });
    metrics.recordStep(STEP, { prototypes: 64 });
    const bad = { ...STEP, step: 8, applied: false, gradNorm: Infinity, lr: 9e-4, loss: { total: NaN, dino: NaN, ibot: 1, koleo: 0, gram: 0 }, teacherEntropy: NaN };
    metrics.recordStep(bad, { prototypes: 64 });
    metrics.recordStep(bad, { prototypes: 64 });
    const s = await read(registry);
    expect(sampleValue(s, 'dinofleet_steps_committed_total')).toBe(1);
    expect(sampleValue(s, 'dinofleet_nonfinite_steps_total')).toBe(2);
    expect(sampleValue(s, 'dinofleet_loss', { part: 'total' })).toBe(6);
    expect(sampleValue(s, 'dinofleet_loss', { part: 'ibot' })).toBe(1);
    expect(sampleValue(s, 'dinofleet_grad_norm')).toBe(2.5);
    expect(sampleValue(s, 'dinofleet_teacher_entropy_nats')).toBeCloseTo(Math.log(8), 12);
    expect(sampleValue(s, 'dinofleet_learning_rate')).toBe(9e-4);
    expect(sampleValue(s, 'dinofleet_step')).toBe(8);
    // No stepSeconds was given: nothing was observed.
    expect(s.filter((x) => x.name === 'dinofleet_step_duration_seconds_count')).toHaveLength(0);
  });

  it('times phases and counts skipped samples by reason', async () => {
    const registry = new Registry();
    const metrics = createTrainingMetrics(registry, { job: 'j', rank: '0' });
    metrics.observePhase(StepPhase.Data, 0.07);
    metrics.observePhase(StepPhase.Allreduce, 1.2);
    metrics.observePhase(StepPhase.Allreduce, 0.8);
    const elapsed = metrics.startPhaseTimer(StepPhase.Optimizer)();
    metrics.skipSamples(SkipReason.DecodeError);
    metrics.skipSamples(SkipReason.DecodeError, 2);
    metrics.skipSamples(SkipReason.Missing, 5);
    const s = await read(registry);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_count', { phase: 'allreduce' })).toBe(2);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_sum', { phase: 'allreduce' })).toBeCloseTo(2, 12);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_sum', { phase: 'data' })).toBeCloseTo(0.07, 12);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_sum', { phase: 'optimizer' })).toBeCloseTo(elapsed, 12);
    expect(sampleValue(s, 'dinofleet_skipped_samples_total', { reason: 'decode_error' })).toBe(3);
    expect(sampleValue(s, 'dinofleet_skipped_samples_total', { reason: 'missing' })).toBe(5);
    expect(() => metrics.skipSamples(SkipReason.Other, -1)).toThrow(RangeError);
  });

  it('lets two jobs share one registry and removes a job without touching the other', async () => {
    const registry = new Registry();
    const a = createTrainingMetrics(registry, { job: 'a', rank: '0' });
    const b = createTrainingMetrics(registry, { job: 'b', rank: '0' });
    a.recordStep(STEP, { stepSeconds: 1, prototypes: 64 });
    b.recordStep({ ...STEP, loss: { ...STEP.loss, total: 2 } }, { stepSeconds: 1, prototypes: 64 });
    a.skipSamples(SkipReason.TooSmall);
    let s = await read(registry);
    expect(sampleValue(s, 'dinofleet_loss', { job: 'a', part: 'total' })).toBe(6);
    expect(sampleValue(s, 'dinofleet_loss', { job: 'b', part: 'total' })).toBe(2);
    a.remove();
    s = await read(registry);
    expect(s.filter((x) => x.labels['job'] === 'a')).toEqual([]);
    expect(sampleValue(s, 'dinofleet_steps_committed_total', { job: 'b' })).toBe(1);
    expect(sampleValue(s, 'dinofleet_step_duration_seconds_count', { job: 'b', phase: 'total' })).toBe(1);
  });

  it('rejects a prototype count that has no ln K to normalise by', () => {
    const metrics = createTrainingMetrics(new Registry(), { job: 'j' });
    expect(() => metrics.recordStep(STEP, { prototypes: 1 })).toThrow(/prototypes/);
    expect(() => metrics.recordStep(STEP, { prototypes: 2.5 })).toThrow(RangeError);
  });
});
