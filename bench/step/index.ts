// `npm run bench -- step [--preset dinov2] [--steps 8] [--backend wasm]`
// Times the full training step of a recipe's default small config and compares its
// achieved GFLOP/s (analytic count, packages/dino/src/flops.ts) with a 1024x1024 tfjs matMul
// measured in the same run on the same backend.
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initComputeBackend, parseComputeBackend } from '@dinofleet/compute';
import {
  buildCropBatch,
  createDinoState,
  disposeDinoState,
  PRESETS,
  Rng,
  trainStep,
  trainStepFlops,
  type PresetName,
} from '@dinofleet/dino';
import { log, median, report } from '../lib/report.ts';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'dinov2' },
    steps: { type: 'string', default: '8' },
    backend: { type: 'string', default: 'wasm' },
  },
});
const presetName = values.preset as PresetName;
const recipe = PRESETS[presetName];
if (recipe === undefined) throw new Error(`unknown preset '${values.preset}'; one of ${Object.keys(PRESETS).join(', ')}`);
const backend = await initComputeBackend(parseComputeBackend(values.backend));
const steps = Number(values.steps);

function matMulGflops(): number {
  const n = 1024;
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    const c = tf.matMul(a, b);
    c.dataSync();
    times.push(performance.now() - t0);
    c.dispose();
  }
  tf.dispose([a, b]);
  return (2 * n ** 3) / (median(times.slice(2)) / 1000) / 1e9;
}

// Synthetic images: the step's cost does not depend on pixel values.
const rng = new Rng(1);
const size = recipe.vit.imageSize;
const images = Array.from({ length: recipe.globalBatchSize }, () => ({
  data: Float32Array.from({ length: size * size * recipe.vit.inChannels }, () => rng.uniform()),
  height: size,
  width: size,
  channels: recipe.vit.inChannels,
}));
const state = createDinoState(recipe, 0, { totalSteps: 1000 });
const batch = buildCropBatch(images, recipe.crops, rng);
const matmulBefore = matMulGflops();
const stepTimes: number[] = [];
for (let i = 0; i < steps + 2; i++) {
  const t0 = performance.now();
  await trainStep(state, batch);
  stepTimes.push(performance.now() - t0);
  log(`step ${i}: ${stepTimes[i]?.toFixed(0)} ms`);
}
const matmulAfter = matMulGflops();
const stepMs = median(stepTimes.slice(2));
// iBOT rows: the expected masked patches per step (half the global crops at a mean ratio of 0.3).
const grid = recipe.crops.globalSize / recipe.vit.patchSize;
const maskedPatches =
  recipe.ibot === null ? 0 : Math.round(batch.nGlobal * batch.batchSize * recipe.ibot.maskProbability * grid * grid * 0.3);
const flops = trainStepFlops(recipe, { ...batch, maskedPatches, gram: false });
const stepGflops = flops / (stepMs / 1000) / 1e9;
const matmulGflops = (matmulBefore + matmulAfter) / 2;
log(`backend ${backend.backend} (simd ${backend.simd}), preset ${presetName}, batch ${batch.batchSize}, ${batch.nGlobal}x${batch.globalSize}px + ${batch.nLocal}x${batch.localSize}px`);
log(`step ${stepMs.toFixed(1)} ms, ${(flops / 1e9).toFixed(2)} GFLOP -> ${stepGflops.toFixed(2)} GFLOP/s; matMul 1024^2 ${matmulGflops.toFixed(2)} GFLOP/s`);
disposeDinoState(state);
report({
  preset: presetName,
  backend: backend.backend,
  batch_size: batch.batchSize,
  step_ms: Number(stepMs.toFixed(1)),
  step_gflop: Number((flops / 1e9).toFixed(3)),
  step_gflops: Number(stepGflops.toFixed(2)),
  matmul_gflops: Number(matmulGflops.toFixed(2)),
  ratio: Number((stepGflops / matmulGflops).toFixed(3)),
  images_per_s: Number(((batch.batchSize * 1000) / stepMs).toFixed(1)),
});
