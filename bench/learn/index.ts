// `npm run bench -- learn [--preset dinov2] [--minutes 15] [--knn-train 10000] [--seed 0]`
// Trains from scratch on Fashion-MNIST (train split: first 6,000 images of each class) in
// one process for at most --minutes, then evaluates weighted k-NN (k 20, T 0.07, cosine)
// on the teacher's CLS features: train features from --knn-train images of the train
// split (equal per class), test = the held-out 10,000 (last 1,000 of each class).
// Baselines in the same run: the randomly initialised network (the same seed, before
// training) and raw pixels.
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initComputeBackend, parseComputeBackend } from '@dinofleet/compute';
import { fashionMnistImage, loadFashionMnist, type LabelledImages } from '@dinofleet/data';
import {
  buildCropBatch,
  createDinoState,
  disposeDinoState,
  embedImages,
  knnTop1Accuracy,
  normalizeImage,
  PRESETS,
  Rng,
  trainOneProcess,
  trainStep,
  type DinoRecipe,
  type Image,
  type PresetName,
} from '@dinofleet/dino';
import { log, report } from '../lib/report.ts';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'dinov2' },
    minutes: { type: 'string', default: '15' },
    'knn-train': { type: 'string', default: '10000' },
    seed: { type: 'string', default: '0' },
    backend: { type: 'string', default: 'wasm' },
    'batch-size': { type: 'string' },
    // A JSON object deep-merged into the recipe, e.g. '{"optim":{"baseLr":0.002}}'.
    override: { type: 'string' },
  },
});

function deepMerge<T>(base: T, patch: unknown): T {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch as T;
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(patch)) out[k] = deepMerge(out[k], v);
  return out as T;
}
const presetName = values.preset as PresetName;
const base = PRESETS[presetName];
if (base === undefined) throw new Error(`unknown preset '${values.preset}'; one of ${Object.keys(PRESETS).join(', ')}`);
const sized: DinoRecipe = values['batch-size'] === undefined ? base : { ...base, globalBatchSize: Number(values['batch-size']) };
const recipe: DinoRecipe = values.override === undefined ? sized : deepMerge(sized, JSON.parse(values.override));
const budgetMs = Number(values.minutes) * 60_000;
const seed = Number(values.seed);
const knnTrain = Number(values['knn-train']);
await initComputeBackend(parseComputeBackend(values.backend));

const t0 = performance.now();
const fmnist = await loadFashionMnist();
log(`Fashion-MNIST: ${fmnist.train.count} train, ${fmnist.test.count} held-out (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
const toImage = (set: LabelledImages, i: number): Image => fashionMnistImage(set, i);
const dataset = { count: fmnist.train.count, image: (i: number) => toImage(fmnist.train, i) };

// Calibrate: time a few steps on a throw-away state to size the run to the budget, so the
// schedules (warm-up, cosine) span the steps that will really run.
const calibration = createDinoState(recipe, seed, { totalSteps: 1000 });
const calRng = new Rng(seed + 1);
const calImages = Array.from({ length: recipe.globalBatchSize }, (_, i) => dataset.image(i));
const calTimes: number[] = [];
for (let i = 0; i < 4; i++) {
  const s = performance.now();
  await trainStep(calibration, buildCropBatch(calImages, recipe.crops, calRng));
  calTimes.push(performance.now() - s);
}
disposeDinoState(calibration);
const stepMs = Math.max(...calTimes.slice(1));
const trainBudgetMs = budgetMs - (performance.now() - t0);
const totalSteps = Math.max(10, Math.floor((trainBudgetMs / stepMs) * 0.93));
log(`calibration: ~${stepMs.toFixed(0)} ms/step -> ${totalSteps} steps of ${recipe.globalBatchSize} images (${recipe.name})`);

// Evaluation sets, normalised like the training crops, full 28x28 images.
function evalSet(set: LabelledImages, indices: readonly number[]): { pixels: Float32Array; labels: Int32Array } {
  const size = recipe.vit.imageSize;
  const px = size * size * recipe.vit.inChannels;
  const pixels = new Float32Array(indices.length * px);
  const labels = new Int32Array(indices.length);
  indices.forEach((idx, row) => {
    pixels.set(normalizeImage(toImage(set, idx), recipe.crops.mean, recipe.crops.std).data, row * px);
    labels[row] = set.labels[idx] ?? -1;
  });
  return { pixels, labels };
}
const perClass = Math.floor(knnTrain / 10);
const taken = new Array<number>(10).fill(0);
const knnTrainIdx: number[] = [];
for (let i = 0; i < fmnist.train.count && knnTrainIdx.length < perClass * 10; i++) {
  const label = fmnist.train.labels[i] ?? 0;
  if ((taken[label] ?? 0) < perClass) {
    taken[label] = (taken[label] ?? 0) + 1;
    knnTrainIdx.push(i);
  }
}
const evalTrain = evalSet(fmnist.train, knnTrainIdx);
const evalTest = evalSet(fmnist.test, Array.from({ length: fmnist.test.count }, (_, i) => i));

function knnOf(params: Parameters<typeof embedImages>[0]): number {
  const size = recipe.vit.imageSize;
  const c = recipe.vit.inChannels;
  const train = embedImages(params, recipe.vit, evalTrain.pixels, evalTrain.labels.length, size, c);
  const test = embedImages(params, recipe.vit, evalTest.pixels, evalTest.labels.length, size, c);
  const acc = knnTop1Accuracy(train, evalTrain.labels, test, evalTest.labels, { numClasses: 10 });
  tf.dispose([train, test]);
  return acc;
}

// Raw pixels: the normalised 28x28 images themselves as features.
const pixelAcc = tf.tidy(() => {
  const px = evalTrain.pixels.length / evalTrain.labels.length;
  const train = tf.tensor2d(evalTrain.pixels, [evalTrain.labels.length, px]);
  const test = tf.tensor2d(evalTest.pixels, [evalTest.labels.length, px]);
  return knnTop1Accuracy(train, evalTrain.labels, test, evalTest.labels, { numClasses: 10 });
});
const randomInit = createDinoState(recipe, seed, { totalSteps });
const randomAcc = knnOf(randomInit.teacher);
disposeDinoState(randomInit);
log(`k-NN before training: random init ${randomAcc.toFixed(4)}, raw pixels ${pixelAcc.toFixed(4)}`);

const trainStart = performance.now();
const result = await trainOneProcess(dataset, {
  recipe,
  seed,
  totalSteps,
  timeBudgetMs: budgetMs - (trainStart - t0),
  onStep: (m, p) => {
    if (m.step % 20 === 0 || m.step === totalSteps - 1) {
      log(
        `step ${m.step}/${totalSteps} epoch ${p.epoch} loss ${m.loss.total.toFixed(4)} (dino ${m.loss.dino.toFixed(4)} ibot ${m.loss.ibot.toFixed(4)} koleo ${m.loss.koleo.toFixed(4)}) ` +
          `lr ${m.lr.toExponential(2)} T ${m.teacherTemp.toFixed(3)} m ${m.momentum.toFixed(4)} |g| ${m.gradNorm.toFixed(2)} ` +
          `H(teacher) ${m.teacherEntropy.toFixed(3)} agree ${m.agreement.toFixed(3)} |c| ${m.centerNorm.toFixed(3)} ${p.imagesPerSecond.toFixed(1)} img/s`,
      );
    }
  },
});
const trainSeconds = (performance.now() - trainStart) / 1000;
const trainedAcc = knnOf(result.state.teacher);
log(`k-NN after ${result.steps} steps (${trainSeconds.toFixed(0)} s): trained ${trainedAcc.toFixed(4)}`);
disposeDinoState(result.state);
report({
  preset: recipe.name,
  knn_top1_trained: Number(trainedAcc.toFixed(4)),
  knn_top1_random_init: Number(randomAcc.toFixed(4)),
  knn_top1_pixels: Number(pixelAcc.toFixed(4)),
  knn_train_images: evalTrain.labels.length,
  knn_test_images: evalTest.labels.length,
  steps: result.steps,
  skipped_steps: result.skippedSteps,
  batch_size: recipe.globalBatchSize,
  train_seconds: Number(trainSeconds.toFixed(1)),
});
