/**
 * Per-step schedules of the DINO family: learning rate, weight decay, EMA-teacher momentum
 * and teacher temperature. Every schedule is a pure function of the global optimiser step
 * (0-based), so a resumed or re-scheduled worker computes the same value as every other rank
 * without carrying schedule state.
 */

/** A value as a function of the 0-based global optimiser step. */
export type StepSchedule = (step: number) => number;

/** Options of {@link cosineSchedule}. All step counts are whole optimiser steps. */
export interface CosineScheduleOptions {
  /** Value at the end of warmup (the peak of the cosine). */
  base: number;
  /** Value the cosine decays towards; returned for every step `>= totalSteps`. */
  final: number;
  /** Length of the whole schedule (freeze + warmup + cosine), steps, integer `>= 0`. */
  totalSteps: number;
  /** Linear warmup length, steps, integer `>= 0`. @default 0 */
  warmupSteps?: number;
  /** First value of the linear warmup. @default 0 */
  warmupStart?: number;
  /** Leading steps whose value is 0 (dinov3's `freeze_iters`), integer `>= 0`. @default 0 */
  freezeSteps?: number;
}

/**
 * Linear warmup then half-cosine decay, step for step the array built by DINO's
 * `utils.cosine_scheduler` / dinov2's `dinov2/utils/utils.py::CosineScheduler` /
 * dinov3's `dinov3/train/cosine_lr_scheduler.py::CosineScheduler` (with `trunc_extra = 0`):
 *
 * - steps `[0, freeze)`: 0;
 * - the next `warmupSteps` steps: `np.linspace(warmupStart, base, warmupSteps)`, i.e. the last
 *   warmup step already equals `base`;
 * - the remaining `n = totalSteps − freeze − warmup` steps, `i = 0 … n−1`:
 *   `final + ½(base − final)(1 + cos(π·i/n))` (so `final` itself is never reached inside);
 * - steps `>= totalSteps`: `final` (the reference's `__getitem__` past the end).
 *
 * @throws RangeError for negative or fractional step counts, or freeze + warmup > total.
 */
export function cosineSchedule(opts: CosineScheduleOptions): StepSchedule {
  const { base, final, totalSteps } = opts;
  const warmupSteps = opts.warmupSteps ?? 0;
  const warmupStart = opts.warmupStart ?? 0;
  const freezeSteps = opts.freezeSteps ?? 0;
  requireStepCount('totalSteps', totalSteps);
  requireStepCount('warmupSteps', warmupSteps);
  requireStepCount('freezeSteps', freezeSteps);
  if (freezeSteps + warmupSteps > totalSteps) {
    throw new RangeError(
      `cosineSchedule: freezeSteps + warmupSteps (${freezeSteps} + ${warmupSteps}) must be <= totalSteps (${totalSteps})`,
    );
  }
  const cosineStart = freezeSteps + warmupSteps;
  const cosineSteps = totalSteps - cosineStart;
  return (step: number): number => {
    requireStep(step);
    if (step >= totalSteps) return final;
    if (step < freezeSteps) return 0;
    if (step < cosineStart) return linspaceAt(warmupStart, base, warmupSteps, step - freezeSteps);
    const i = step - cosineStart;
    return final + 0.5 * (base - final) * (1 + Math.cos((Math.PI * i) / cosineSteps));
  };
}

/** Options of {@link linearWarmupThenConstant}. */
export interface LinearWarmupOptions {
  /** Value at step 0. */
  start: number;
  /** Value from the last warmup step on. */
  end: number;
  /** Warmup length, steps, integer `>= 0`; 0 gives the constant `end`. */
  warmupSteps: number;
}

/**
 * `np.linspace(start, end, warmupSteps)` then `end` forever: the teacher-temperature schedule
 * of dinov2/dinov3 `train.py::build_schedulers` (a CosineScheduler with `base = final =
 * teacher_temp` whose whole length is the warmup), per step. DINO v1 builds the same ramp per
 * epoch (`main_dino.py::DINOLoss`); pass `warmupSteps = epochs` and index by epoch for that.
 */
export function linearWarmupThenConstant(opts: LinearWarmupOptions): StepSchedule {
  return cosineSchedule({
    base: opts.end,
    final: opts.end,
    totalSteps: opts.warmupSteps,
    warmupSteps: opts.warmupSteps,
    warmupStart: opts.start,
  });
}

/**
 * How the base learning rate scales with the global batch:
 * - `'linear256'`: `lr · B / 256`, DINO v1 (`main_dino.py`: `args.lr * batch_size_per_gpu *
 *   world_size / 256`) and dinov3's `linear_wrt_256`;
 * - `'sqrt1024'`: `lr · √(B / 1024)`, dinov2's `sqrt_wrt_1024` (`dinov2/utils/config.py::
 *   apply_scaling_rules_to_cfg`, `base_lr: 0.004` "for a batch size of 1024"). dinov3 writes the
 *   same rule as `lr · 4·√(B / 1024)` with `lr: 0.001` (`dinov3/configs/config.py`); pass
 *   `4 · 0.001` here for it;
 * - `'none'`: `lr` unchanged.
 */
export type LrScalingRule = 'linear256' | 'sqrt1024' | 'none';

/**
 * Scales a base learning rate to the global batch size (images per optimiser step over all
 * ranks) by {@link LrScalingRule}.
 * @throws RangeError when `globalBatch` is not a positive integer.
 */
export function scaleLearningRate(baseLr: number, globalBatch: number, rule: LrScalingRule): number {
  if (!Number.isInteger(globalBatch) || globalBatch <= 0) {
    throw new RangeError(`scaleLearningRate: globalBatch must be a positive integer, got ${globalBatch}`);
  }
  switch (rule) {
    case 'linear256':
      return (baseLr * globalBatch) / 256;
    case 'sqrt1024':
      return baseLr * Math.sqrt(globalBatch / 1024);
    case 'none':
      return baseLr;
  }
}

/**
 * Options of {@link buildTrainingSchedules}. Epoch counts are converted to steps with
 * `Math.round(epochs · stepsPerEpoch)` (the references multiply whole epochs by
 * `OFFICIAL_EPOCH_LENGTH`; rounding lets short test runs use fractional epochs). Defaults are
 * dinov2's `ssl_default_config.yaml` unless noted.
 */
export interface ScheduleOptions {
  /** Optimiser steps of the whole run (`epochs · stepsPerEpoch`), integer `> 0`. */
  totalSteps: number;
  /** Optimiser steps per epoch (dinov2's `OFFICIAL_EPOCH_LENGTH`), `> 0`. */
  stepsPerEpoch: number;
  /** Linear lr warmup from 0, epochs. @default 10 */
  warmupEpochs?: number;
  /** Peak learning rate, already scaled to the global batch by {@link scaleLearningRate}. */
  baseLr: number;
  /** Learning rate the cosine decays to. @default 1e-6 */
  minLr?: number;
  /** Weight decay at step 0 (cosine, no warmup). @default 0.04 */
  weightDecay?: number;
  /** Weight decay at the end. @default 0.4 */
  weightDecayEnd?: number;
  /** EMA teacher momentum at step 0, in [0, 1]. @default 0.996 (DINO v1; dinov2/v3 use 0.992) */
  momentumTeacher?: number;
  /** EMA teacher momentum at the end, in [0, 1]. @default 1 */
  momentumTeacherEnd?: number;
  /** Teacher softmax temperature after warmup. @default 0.07 */
  teacherTemp?: number;
  /** Teacher softmax temperature at step 0. @default 0.04 */
  warmupTeacherTemp?: number;
  /** Teacher temperature warmup length, epochs. @default 30 */
  warmupTeacherTempEpochs?: number;
  /** Epochs during which the heads' `last_layer` gets learning rate 0. @default 1 */
  freezeLastLayerEpochs?: number;
}

/** The schedules one training run follows; each value function takes the 0-based global step. */
export interface TrainingSchedules {
  /** Learning rate before per-group multipliers: linear warmup from 0, then cosine to `minLr`. */
  lr: StepSchedule;
  /** Weight decay coefficient before per-group multipliers: cosine `weightDecay → weightDecayEnd`. */
  weightDecay: StepSchedule;
  /** EMA teacher momentum: cosine `momentumTeacher → momentumTeacherEnd`. */
  momentum: StepSchedule;
  /** Teacher temperature: linear `warmupTeacherTemp → teacherTemp`, then constant. */
  teacherTemp: StepSchedule;
  /**
   * Steps `< lastLayerLrZeroUntilStep` train the heads' `last_layer` with learning rate 0
   * (pass `freezeLastLayer: step < lastLayerLrZeroUntilStep` to `AdamW.step`).
   */
  lastLayerLrZeroUntilStep: number;
}

/**
 * The four schedules of dinov2/dinov3 `train.py::build_schedulers` (the v1 path of dinov3) plus
 * the last-layer freeze, which the references express as a copy of the lr schedule zeroed over
 * the first `freeze_last_layer_epochs`.
 * @throws RangeError naming the field when a count or value is out of range.
 */
export function buildTrainingSchedules(opts: ScheduleOptions): TrainingSchedules {
  const { totalSteps, stepsPerEpoch, baseLr } = opts;
  requireStepCount('totalSteps', totalSteps);
  if (!(stepsPerEpoch > 0)) throw new RangeError(`stepsPerEpoch must be > 0, got ${stepsPerEpoch}`);
  const toSteps = (field: string, epochs: number): number => {
    if (!(epochs >= 0)) throw new RangeError(`${field} must be >= 0 epochs, got ${epochs}`);
    return Math.round(epochs * stepsPerEpoch);
  };
  const warmupSteps = toSteps('warmupEpochs', opts.warmupEpochs ?? 10);
  if (warmupSteps > totalSteps) {
    throw new RangeError(`warmupEpochs gives ${warmupSteps} warmup steps, more than totalSteps ${totalSteps}`);
  }
  const momentumTeacher = opts.momentumTeacher ?? 0.996;
  const momentumTeacherEnd = opts.momentumTeacherEnd ?? 1;
  for (const [field, m] of [['momentumTeacher', momentumTeacher], ['momentumTeacherEnd', momentumTeacherEnd]] as const) {
    if (!(m >= 0 && m <= 1)) throw new RangeError(`${field} must be in [0, 1], got ${m}`);
  }
  return {
    lr: cosineSchedule({ base: baseLr, final: opts.minLr ?? 1e-6, totalSteps, warmupSteps, warmupStart: 0 }),
    weightDecay: cosineSchedule({
      base: opts.weightDecay ?? 0.04,
      final: opts.weightDecayEnd ?? 0.4,
      totalSteps,
    }),
    momentum: cosineSchedule({ base: momentumTeacher, final: momentumTeacherEnd, totalSteps }),
    teacherTemp: linearWarmupThenConstant({
      start: opts.warmupTeacherTemp ?? 0.04,
      end: opts.teacherTemp ?? 0.07,
      warmupSteps: toSteps('warmupTeacherTempEpochs', opts.warmupTeacherTempEpochs ?? 30),
    }),
    lastLayerLrZeroUntilStep: toSteps('freezeLastLayerEpochs', opts.freezeLastLayerEpochs ?? 1),
  };
}

/** `np.linspace(start, stop, num)[i]`: both endpoints included, `[start]` when `num == 1`. */
function linspaceAt(start: number, stop: number, num: number, i: number): number {
  if (num === 1) return start;
  // numpy pins the last sample to `stop` exactly; do the same so warmup ends on `base`.
  if (i === num - 1) return stop;
  return start + ((stop - start) * i) / (num - 1);
}

function requireStepCount(field: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${field} must be an integer >= 0, got ${n}`);
}

function requireStep(step: number): void {
  if (!Number.isInteger(step) || step < 0) {
    throw new RangeError(`schedule step must be an integer >= 0, got ${step}`);
  }
}
