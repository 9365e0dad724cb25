import { buildCropBatch } from './crop-batch.ts';
import type { Image } from './multi-crop.ts';
import type { DinoRecipe } from './presets.ts';
import { Rng } from './rng.ts';
import { createDinoState, trainStep, type DinoState, type StepMetrics } from './train-step.ts';

/** Images the one-process trainer reads, by index. */
export interface ImageDataset {
  readonly count: number;
  image(index: number): Image;
}

/** Options of {@link trainOneProcess}. */
export interface TrainerOptions {
  readonly recipe: DinoRecipe;
  readonly seed: number;
  /** Steps to train; fixes the schedules. */
  readonly totalSteps: number;
  /** Stop early (schedules unchanged) once this much wall time has passed. @default Infinity */
  readonly timeBudgetMs?: number;
  /** Called after every step. */
  readonly onStep?: (metrics: StepMetrics, progress: TrainerProgress) => void;
}

/** Progress reported with every step. */
export interface TrainerProgress {
  readonly epoch: number;
  readonly elapsedMs: number;
  readonly imagesPerSecond: number;
}

/** What a finished run returns; the caller owns (and disposes) the state. */
export interface TrainerResult {
  readonly state: DinoState;
  readonly steps: number;
  readonly skippedSteps: number;
  readonly seconds: number;
}

/**
 * The one-process trainer: seeded epoch permutations of the dataset, multi-crop batches of
 * `recipe.globalBatchSize`, and the same {@link trainStep} the workers run. It is the
 * reference a distributed run is checked against.
 */
export async function trainOneProcess(dataset: ImageDataset, options: TrainerOptions): Promise<TrainerResult> {
  const { recipe, seed, totalSteps } = options;
  const batchSize = recipe.globalBatchSize;
  const stepsPerEpoch = Math.floor(dataset.count / batchSize);
  if (stepsPerEpoch < 1) {
    throw new RangeError(`dataset has ${dataset.count} images, fewer than one batch of ${batchSize}`);
  }
  const state = createDinoState(recipe, seed, { totalSteps });
  const budget = options.timeBudgetMs ?? Number.POSITIVE_INFINITY;
  const started = performance.now();
  let order: number[] = [];
  let epoch = -1;
  let skipped = 0;
  let imagesSeen = 0;
  let attempts = 0;
  while (state.step < totalSteps && performance.now() - started < budget) {
    const position = attempts % stepsPerEpoch;
    if (position === 0) {
      epoch++;
      order = new Rng(seed ^ Math.imul(epoch + 1, 0x632be5ab)).shuffle(Array.from({ length: dataset.count }, (_, i) => i));
    }
    const images = order.slice(position * batchSize, (position + 1) * batchSize).map((i) => dataset.image(i));
    const batch = buildCropBatch(images, recipe.crops, new Rng(seed).fork(attempts + 1));
    attempts++;
    const metrics = await trainStep(state, batch);
    if (!metrics.applied) skipped++;
    imagesSeen += batchSize;
    const elapsedMs = performance.now() - started;
    options.onStep?.(metrics, { epoch, elapsedMs, imagesPerSecond: (imagesSeen * 1000) / elapsedMs });
  }
  return { state, steps: state.step, skippedSteps: skipped, seconds: (performance.now() - started) / 1000 };
}
