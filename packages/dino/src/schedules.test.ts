import { describe, expect, it } from 'vitest';
import { buildTrainingSchedules, cosineSchedule, linearWarmupThenConstant, scaleLearningRate } from './schedules.ts';

describe('cosineSchedule', () => {
  it('warms up linearly (numpy linspace, both ends included) then decays by a half cosine', () => {
    const s = cosineSchedule({ base: 1, final: 0.1, totalSteps: 15, warmupSteps: 5, warmupStart: 0.5 });
    expect(s(0)).toBe(0.5);
    expect(s(2)).toBeCloseTo(0.75, 12); // warmup midpoint
    expect(s(4)).toBe(1); // last warmup step is base already
    expect(s(5)).toBeCloseTo(1, 12); // cosine starts at base
    // cosine over n = 10 steps; i = 5 is the midpoint, cos(π/2) = 0
    expect(s(10)).toBeCloseTo((1 + 0.1) / 2, 12);
    expect(s(14)).toBeCloseTo(0.1 + 0.45 * (1 + Math.cos((Math.PI * 9) / 10)), 12);
    expect(s(15)).toBe(0.1);
    expect(s(1000)).toBe(0.1);
  });

  it('is 0 during freeze steps (dinov3) and handles a one-step warmup like linspace', () => {
    const s = cosineSchedule({ base: 2, final: 0, totalSteps: 8, warmupSteps: 1, warmupStart: 0.25, freezeSteps: 3 });
    expect([s(0), s(1), s(2)]).toEqual([0, 0, 0]);
    expect(s(3)).toBe(0.25);
    expect(s(4)).toBeCloseTo(2, 12);
    expect(s(6)).toBeCloseTo(1, 12); // i = 2 of n = 4
  });

  it('without warmup starts at base and rejects bad step counts', () => {
    const s = cosineSchedule({ base: 0.04, final: 0.4, totalSteps: 100 });
    expect(s(0)).toBeCloseTo(0.04, 15);
    expect(s(50)).toBeCloseTo(0.22, 12);
    expect(() => s(-1)).toThrow(RangeError);
    expect(() => s(1.5)).toThrow(RangeError);
    expect(() => cosineSchedule({ base: 1, final: 0, totalSteps: 4, warmupSteps: 5 })).toThrow(/totalSteps/);
  });
});

describe('linearWarmupThenConstant', () => {
  it('ramps 0.04 → 0.07 and stays', () => {
    const s = linearWarmupThenConstant({ start: 0.04, end: 0.07, warmupSteps: 31 });
    expect(s(0)).toBe(0.04);
    expect(s(15)).toBeCloseTo(0.055, 12);
    expect(s(30)).toBe(0.07);
    expect(s(31)).toBe(0.07);
    expect(s(10_000)).toBe(0.07);
    expect(linearWarmupThenConstant({ start: 0.04, end: 0.07, warmupSteps: 0 })(0)).toBe(0.07);
  });
});

describe('scaleLearningRate', () => {
  it('applies the DINO v1 linear and dinov2 sqrt rules', () => {
    expect(scaleLearningRate(0.0005, 1024, 'linear256')).toBeCloseTo(0.002, 15);
    expect(scaleLearningRate(0.0005, 64, 'linear256')).toBeCloseTo(0.000125, 15);
    expect(scaleLearningRate(0.004, 1024, 'sqrt1024')).toBeCloseTo(0.004, 15);
    expect(scaleLearningRate(0.004, 256, 'sqrt1024')).toBeCloseTo(0.002, 15);
    expect(scaleLearningRate(0.004, 4096, 'sqrt1024')).toBeCloseTo(0.008, 15);
    expect(scaleLearningRate(0.004, 77, 'none')).toBe(0.004);
    expect(() => scaleLearningRate(0.004, 0, 'none')).toThrow(RangeError);
  });
});

describe('buildTrainingSchedules', () => {
  it('builds the dinov2 schedules from epochs', () => {
    const s = buildTrainingSchedules({
      totalSteps: 100,
      stepsPerEpoch: 10,
      warmupEpochs: 2,
      baseLr: 0.004,
      minLr: 1e-6,
      warmupTeacherTempEpochs: 3,
      freezeLastLayerEpochs: 1,
    });
    expect(s.lr(0)).toBe(0);
    expect(s.lr(19)).toBe(0.004);
    expect(s.lr(20)).toBeCloseTo(0.004, 15);
    expect(s.lr(60)).toBeCloseTo((0.004 + 1e-6) / 2, 15);
    expect(s.lr(100)).toBe(1e-6);
    expect(s.weightDecay(0)).toBeCloseTo(0.04, 15);
    expect(s.weightDecay(50)).toBeCloseTo(0.22, 12);
    expect(s.weightDecay(100)).toBe(0.4);
    expect(s.momentum(0)).toBeCloseTo(0.996, 15);
    expect(s.momentum(50)).toBeCloseTo(0.998, 12);
    expect(s.momentum(100)).toBe(1);
    expect(s.teacherTemp(0)).toBe(0.04);
    expect(s.teacherTemp(29)).toBe(0.07);
    expect(s.teacherTemp(99)).toBe(0.07);
    expect(s.lastLayerLrZeroUntilStep).toBe(10);
  });

  it('names the field that is out of range', () => {
    expect(() => buildTrainingSchedules({ totalSteps: 10, stepsPerEpoch: 10, warmupEpochs: 2, baseLr: 1 })).toThrow(/warmupEpochs/);
    expect(() => buildTrainingSchedules({ totalSteps: 10, stepsPerEpoch: 10, warmupEpochs: 0, baseLr: 1, momentumTeacher: 1.5 })).toThrow(
      /momentumTeacher/,
    );
  });
});
