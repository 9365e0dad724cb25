import { Counter, Gauge, Histogram } from 'prom-client';
import type { Registry } from 'prom-client';

/** The phases one training step is timed in (DESIGN.md, "One training step"). */
export const StepPhase = {
  /** Taking the batch from the shard lease, S3 reads, decode, multi-crop. */
  Data: 'data',
  /** Teacher forward, student forward/backward, the loss. */
  Compute: 'compute',
  /** Ring all-reduce of the gradients (and Sinkhorn-Knopp sums). */
  Allreduce: 'allreduce',
  /** Clip, AdamW, EMA teacher and center update. */
  Optimizer: 'optimizer',
  /** The whole step, wall clock (what `recordStep`'s `stepSeconds` observes). */
  Total: 'total',
} as const;
export type StepPhase = (typeof StepPhase)[keyof typeof StepPhase];

/** Why a sample was skipped instead of trained on. A closed set keeps label cardinality bounded. */
export const SkipReason = {
  /** The S3 object does not exist (any more). */
  Missing: 'missing',
  /** The object was read but could not be decoded as an image (corrupt, truncated, empty). */
  DecodeError: 'decode_error',
  /** The object is not a PNG or JPEG, or a WebDataset sample has no image member. */
  NotImage: 'not_image',
  /** The image has more pixels than the decoder accepts. */
  TooLarge: 'too_large',
  /** The manifest line is not a valid entry of the manifest's format. */
  InvalidRecord: 'invalid_record',
  /** A WebDataset tar is corrupt or truncated: the samples after the damage are lost. */
  CorruptArchive: 'corrupt_archive',
  /** The image is smaller than the crop sizes allow. */
  TooSmall: 'too_small',
  /** Read timed out or failed after retries. */
  ReadError: 'read_error',
  /** Anything else (log the details). */
  Other: 'other',
} as const;
export type SkipReason = (typeof SkipReason)[keyof typeof SkipReason];

/** The loss parts a step reports (DINO CLS, iBOT patch, KoLeo, Gram anchoring, and their weighted sum). */
export const LOSS_PARTS = ['total', 'dino', 'ibot', 'koleo', 'gram'] as const;
export type LossPart = (typeof LOSS_PARTS)[number];

/**
 * What a training step reports, structurally matching `StepMetrics` from `@dinofleet/dino`'s
 * `trainStep` (telemetry does not depend on the model package).
 */
export interface StepMetricsLike {
  /** The step index the update was computed at. */
  readonly step: number;
  /** False when the loss or gradient was NaN/Inf and nothing was applied. */
  readonly applied: boolean;
  /** Global gradient L2 norm before clipping. */
  readonly gradNorm: number;
  /** Learning rate used at this step. */
  readonly lr: number;
  /** Weight decay used at this step. */
  readonly weightDecay: number;
  /** EMA teacher momentum used at this step, in [0, 1]. */
  readonly momentum: number;
  /** Teacher softmax temperature used at this step. */
  readonly teacherTemp: number;
  /** L2 norm of the running center. */
  readonly centerNorm: number;
  /** Loss parts, unitless. */
  readonly loss: { readonly [P in LossPart]: number };
  /** Mean entropy of the teacher targets, in nats. */
  readonly teacherEntropy: number;
  /** Fraction of global crops where student and teacher pick the same prototype, in [0, 1]. */
  readonly agreement: number;
}

/** Per-step values the step result does not carry. */
export interface StepExtra {
  /** Wall-clock duration of the whole step, in seconds; observed as phase `total`. */
  readonly stepSeconds?: number;
  /** Training throughput over this step (global batch / step time), images per second. */
  readonly imagesPerSecond?: number;
  /** K, the number of prototypes of the DINO head; the entropy is normalised by ln K. */
  readonly prototypes: number;
}

/** Labels every series of a {@link TrainingMetrics} carries. */
export interface TrainingMetricsLabels {
  /** The job id. */
  readonly job: string;
  /**
   * The rank within the current generation, as a string. Omitted (exported as an empty
   * label, which Prometheus treats as absent) for a process that is not a rank.
   */
  readonly rank?: string;
}

/** Typed recorders for the training-level metrics of one job on one process. */
export interface TrainingMetrics {
  /**
   * Records everything a step reports. Applied steps increment `steps_committed_total`;
   * non-applied (NaN/Inf) steps increment `nonfinite_steps_total` instead. Gauges are only
   * overwritten with finite values, so a NaN step leaves the last good loss on the graph.
   * @throws RangeError when `extra.prototypes` is not an integer >= 2.
   */
  recordStep(metrics: StepMetricsLike, extra: StepExtra): void;
  /** Observes the duration of one phase of a step, in seconds. */
  observePhase(phase: StepPhase, seconds: number): void;
  /** Starts timing a phase; the returned function observes the elapsed seconds and returns them. */
  startPhaseTimer(phase: StepPhase): () => number;
  /** Counts `count` (default 1) samples skipped for `reason`. */
  skipSamples(reason: SkipReason, count?: number): void;
  /** Counts images loaded (decoded, cropped) and the encoded bytes read for them. */
  recordLoaded(images: number, bytes: number): void;
  /** Observes the seconds one image took to decode (`decode`) or to augment (`augment`). */
  observeImageSeconds(stage: 'decode' | 'augment', seconds: number): void;
  /** Sets the fraction of the last step spent waiting for its batch, in [0, 1]. */
  setDataWaitFraction(fraction: number): void;
  /** Sets the bytes of batches loaded ahead and waiting for their step. */
  setPrefetchBytes(bytes: number): void;
  /** Removes every series of this job/rank from the registry (the job ended or the rank left). */
  remove(): void;
}

/**
 * Buckets of `dinofleet_step_duration_seconds`, in seconds: a ViT-S step on a GPU is
 * ~0.1 s, a ViT-L step on CPU/wasm or a step that waited on a straggler is up to a minute.
 */
export const STEP_DURATION_BUCKETS_SECONDS: readonly number[] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60];

/** Buckets of `dinofleet_data_image_seconds`: a thumbnail decodes in 0.1 ms, a 224-px multi-crop takes ~10-50 ms on a CPU core. */
export const IMAGE_SECONDS_BUCKETS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

const BASE_LABELS = ['job', 'rank'] as const;
type BaseLabel = (typeof BASE_LABELS)[number];

/**
 * Creates (or, when another job already created them in this registry, reuses) the
 * training metrics and binds them to `labels`. Metric names:
 *
 * | name | type | extra label |
 * | --- | --- | --- |
 * | `dinofleet_steps_committed_total` | counter | |
 * | `dinofleet_step` | gauge (last step recorded) | |
 * | `dinofleet_step_duration_seconds` | histogram | `phase` |
 * | `dinofleet_images_per_second` | gauge | |
 * | `dinofleet_loss` | gauge | `part` |
 * | `dinofleet_learning_rate`, `dinofleet_weight_decay` | gauge | |
 * | `dinofleet_teacher_momentum`, `dinofleet_teacher_temperature` | gauge | |
 * | `dinofleet_grad_norm`, `dinofleet_center_norm` | gauge | |
 * | `dinofleet_teacher_entropy_nats` | gauge | |
 * | `dinofleet_teacher_entropy_ratio` | gauge (entropy / ln K, in [0, 1]) | |
 * | `dinofleet_student_teacher_agreement_ratio` | gauge | |
 * | `dinofleet_nonfinite_steps_total` | counter | |
 * | `dinofleet_skipped_samples_total` | counter | `reason` |
 * | `dinofleet_data_images_total`, `dinofleet_data_bytes_total` | counter (images loaded, encoded bytes read) | |
 * | `dinofleet_data_image_seconds` | histogram (per image, in the loader's threads) | `stage` (decode, augment) |
 * | `dinofleet_data_wait_fraction` | gauge (share of the last step spent waiting for data) | |
 * | `dinofleet_data_prefetch_bytes` | gauge (batches loaded ahead) | |
 *
 * Collapse shows as `teacher_entropy_ratio` near 0 (one prototype wins) or near 1 (uniform
 * targets), usually with `agreement_ratio` stuck (DINO paper, section 5.3).
 */
export function createTrainingMetrics(registry: Registry, labels: TrainingMetricsLabels): TrainingMetrics {
  const base: Record<BaseLabel, string> = { job: labels.job, rank: labels.rank ?? '' };
  const gauge = (name: string, help: string): Gauge<BaseLabel> => metric(registry, Gauge, { name, help, labelNames: BASE_LABELS });
  const counter = (name: string, help: string): Counter<BaseLabel> => metric(registry, Counter, { name, help, labelNames: BASE_LABELS });

  const stepsCommitted = counter('dinofleet_steps_committed_total', 'Training steps whose update was applied.');
  const nonfiniteSteps = counter('dinofleet_nonfinite_steps_total', 'Training steps skipped because the loss or gradient was NaN/Inf.');
  const lastStep = gauge('dinofleet_step', 'Index of the last step recorded.');
  const imagesPerSecond = gauge('dinofleet_images_per_second', 'Training throughput in images per second.');
  const learningRate = gauge('dinofleet_learning_rate', 'Learning rate used at the last step.');
  const weightDecay = gauge('dinofleet_weight_decay', 'Weight decay used at the last step.');
  const teacherMomentum = gauge('dinofleet_teacher_momentum', 'EMA teacher momentum used at the last step.');
  const teacherTemperature = gauge('dinofleet_teacher_temperature', 'Teacher softmax temperature used at the last step.');
  const gradNorm = gauge('dinofleet_grad_norm', 'Global gradient L2 norm before clipping.');
  const centerNorm = gauge('dinofleet_center_norm', 'L2 norm of the running teacher center.');
  const entropyNats = gauge('dinofleet_teacher_entropy_nats', 'Mean entropy of the teacher targets in nats.');
  const entropyRatio = gauge('dinofleet_teacher_entropy_ratio', 'Mean teacher target entropy divided by ln K (0: one prototype, 1: uniform).');
  const agreement = gauge('dinofleet_student_teacher_agreement_ratio', 'Fraction of global crops where student and teacher argmax agree.');
  const loss = metric(registry, Gauge, { name: 'dinofleet_loss', help: 'Loss by part (total, dino, ibot, koleo, gram).', labelNames: [...BASE_LABELS, 'part'] as const });
  const stepDuration = metric(registry, Histogram, {
    name: 'dinofleet_step_duration_seconds',
    help: 'Duration of a training step by phase (data, compute, allreduce, optimizer, total).',
    labelNames: [...BASE_LABELS, 'phase'] as const,
    buckets: [...STEP_DURATION_BUCKETS_SECONDS],
  });
  const skipped = metric(registry, Counter, { name: 'dinofleet_skipped_samples_total', help: 'Samples skipped by reason.', labelNames: [...BASE_LABELS, 'reason'] as const });

  const dataImages = counter('dinofleet_data_images_total', 'Images loaded (read, decoded, augmented) for training.');
  const dataBytes = counter('dinofleet_data_bytes_total', 'Encoded image bytes read for training.');
  const dataWait = gauge('dinofleet_data_wait_fraction', 'Fraction of the last step spent waiting for its batch (0: the loader keeps ahead).');
  const prefetchBytes = gauge('dinofleet_data_prefetch_bytes', 'Bytes of batches loaded ahead of the step.');
  const imageSeconds = metric(registry, Histogram, {
    name: 'dinofleet_data_image_seconds',
    help: "Seconds one image took in the loader's threads, by stage (decode, augment).",
    labelNames: [...BASE_LABELS, 'stage'] as const,
    buckets: [...IMAGE_SECONDS_BUCKETS],
  });

  const scalarGauges = [dataWait, prefetchBytes, lastStep, imagesPerSecond, learningRate, weightDecay, teacherMomentum, teacherTemperature, gradNorm, centerNorm, entropyNats, entropyRatio, agreement];
  // Counters start at 0 so rate() and increase() see the first increment.
  stepsCommitted.labels(base).inc(0);
  nonfiniteSteps.labels(base).inc(0);
  dataImages.labels(base).inc(0);
  dataBytes.labels(base).inc(0);

  const setFinite = (g: Gauge<BaseLabel>, value: number | undefined): void => {
    if (value !== undefined && Number.isFinite(value)) g.set(base, value);
  };
  const observePhase = (phase: StepPhase, seconds: number): void => {
    if (Number.isFinite(seconds) && seconds >= 0) stepDuration.observe({ ...base, phase }, seconds);
  };

  return {
    recordStep(metrics, extra) {
      const { prototypes } = extra;
      if (!Number.isInteger(prototypes) || prototypes < 2) throw new RangeError(`prototypes must be an integer >= 2, got ${prototypes}`);
      if (metrics.applied) stepsCommitted.inc(base);
      else nonfiniteSteps.inc(base);
      setFinite(lastStep, metrics.step);
      // The schedules' values are meaningful even on a skipped step; the rest may be NaN.
      setFinite(learningRate, metrics.lr);
      setFinite(weightDecay, metrics.weightDecay);
      setFinite(teacherMomentum, metrics.momentum);
      setFinite(teacherTemperature, metrics.teacherTemp);
      setFinite(gradNorm, metrics.gradNorm);
      setFinite(centerNorm, metrics.centerNorm);
      setFinite(entropyNats, metrics.teacherEntropy);
      setFinite(entropyRatio, metrics.teacherEntropy / Math.log(prototypes));
      setFinite(agreement, metrics.agreement);
      setFinite(imagesPerSecond, extra.imagesPerSecond);
      for (const part of LOSS_PARTS) {
        const value = metrics.loss[part];
        if (Number.isFinite(value)) loss.set({ ...base, part }, value);
      }
      if (extra.stepSeconds !== undefined) observePhase(StepPhase.Total, extra.stepSeconds);
    },
    observePhase,
    startPhaseTimer(phase) {
      const started = process.hrtime.bigint();
      return () => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        observePhase(phase, seconds);
        return seconds;
      };
    },
    skipSamples(reason, count = 1) {
      if (!(Number.isInteger(count) && count >= 0)) throw new RangeError(`count must be a non-negative integer, got ${count}`);
      skipped.inc({ ...base, reason }, count);
    },
    recordLoaded(images, bytes) {
      if (images > 0) dataImages.inc(base, images);
      if (bytes > 0) dataBytes.inc(base, bytes);
    },
    observeImageSeconds(stage, seconds) {
      if (Number.isFinite(seconds) && seconds >= 0) imageSeconds.observe({ ...base, stage }, seconds);
    },
    setDataWaitFraction(fraction) {
      if (Number.isFinite(fraction)) dataWait.set(base, Math.min(1, Math.max(0, fraction)));
    },
    setPrefetchBytes(bytes) {
      setFinite(prefetchBytes, bytes);
    },
    remove() {
      for (const g of [...scalarGauges, stepsCommitted, nonfiniteSteps, dataImages, dataBytes]) g.remove(base);
      for (const stage of ['decode', 'augment']) imageSeconds.remove({ ...base, stage });
      for (const part of LOSS_PARTS) loss.remove({ ...base, part });
      for (const phase of Object.values(StepPhase)) stepDuration.remove({ ...base, phase });
      for (const reason of Object.values(SkipReason)) skipped.remove({ ...base, reason });
    },
  };
}

interface MetricConfig<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly buckets?: number[];
}

/**
 * Returns the metric `config.name` from `registry`, creating it there if absent, so two jobs
 * in one coordinator share a metric family instead of colliding.
 */
function metric<L extends string, M extends Counter<L> | Gauge<L> | Histogram<L>>(
  registry: Registry,
  Kind: new (config: { name: string; help: string; labelNames: readonly L[]; registers: Registry[]; buckets?: number[] }) => M,
  config: MetricConfig<L>,
): M {
  const existing = registry.getSingleMetric(config.name);
  if (existing !== undefined) {
    if (!(existing instanceof Kind)) throw new Error(`metric ${config.name} is already registered with another type`);
    return existing;
  }
  return new Kind({ ...config, registers: [registry] });
}
