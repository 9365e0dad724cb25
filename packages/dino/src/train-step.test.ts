import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildCropBatch, sliceCropBatch } from './crop-batch.ts';
import { FMNIST_MULTI_CROP, type Image } from './multi-crop.ts';
import { PRESETS, type DinoRecipe } from './presets.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import {
  applyUpdate,
  computeLocalStep,
  createDinoState,
  disposeDinoState,
  singleProcessCollective,
  trainStep,
  type DinoState,
  type StepCollective,
} from './train-step.ts';
import { trainOneProcess } from './trainer.ts';
import { VIT_CONFIGS } from './vit-configs.ts';

const TINY_HEAD = { inDim: 16, hiddenDim: 32, bottleneckDim: 8, outDim: 32, nLayers: 3, weightNorm: true };

/** A recipe small enough for unit tests: 16 px images, 2 global + 2 local crops, batch 4. */
function tiny(base: DinoRecipe, patch: Partial<DinoRecipe> = {}): DinoRecipe {
  return {
    ...base,
    vit: VIT_CONFIGS['vit-test-tiny'],
    dinoHead: TINY_HEAD,
    ibot: base.ibot === null ? null : { ...base.ibot, head: { ...TINY_HEAD, weightNorm: false } },
    crops: { ...FMNIST_MULTI_CROP, globalSize: 16, localSize: 8, nLocal: 2 },
    globalBatchSize: 4,
    dropPathRate: 0,
    ...patch,
  };
}

function images(n: number, seed: number): Image[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => ({
    data: Float32Array.from({ length: 16 * 16 }, () => rng.uniform()),
    height: 16,
    width: 16,
    channels: 1,
  }));
}

function snapshot(params: Readonly<Record<string, tf.Tensor>>): Record<string, Float32Array> {
  return Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.dataSync().slice() as Float32Array]));
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

/** Two in-memory ranks whose reduceSum adds both ranks' tensors (an all-reduce of two). */
function pairedCollectives(globalBatchSize: number): [StepCollective, StepCollective] {
  const slots: { values: (Float32Array | undefined)[]; resolvers: ((sum: Float32Array) => void)[] }[] = [];
  const calls = [0, 0];
  const make = (rank: number): StepCollective => ({
    globalBatchSize,
    rank,
    async reduceSum(local) {
      const k = calls[rank]!++;
      const slot = (slots[k] ??= { values: [undefined, undefined], resolvers: [] });
      slot.values[rank] = (await local.data()) as Float32Array;
      const sum = await new Promise<Float32Array>((resolve) => {
        slot.resolvers.push(resolve);
        const [a, b] = slot.values;
        if (a !== undefined && b !== undefined) {
          const out = a.map((x, i) => x + (b[i] as number));
          for (const r of slot.resolvers) r(out);
        }
      });
      return tf.tensor(sum, local.shape);
    },
  });
  return [make(0), make(1)];
}

describe('the training step', () => {
  beforeAll(() => useTestBackend());

  it('updates the student and moves the teacher by the EMA of the new student', async () => {
    // No warm-up, so the first step has a non-zero learning rate.
    const recipe = tiny(PRESETS.dino, { optim: { ...PRESETS.dino.optim, warmupEpochs: 0 } });
    const state = createDinoState(recipe, 1, { totalSteps: 10 });
    const teacherBefore = snapshot(state.teacher);
    const studentBefore = snapshot(state.student);
    const batch = buildCropBatch(images(4, 2), recipe.crops, new Rng(3));
    const metrics = await trainStep(state, batch);
    expect(metrics.applied).toBe(true);
    expect(state.step).toBe(1);
    expect(Number.isFinite(metrics.loss.total)).toBe(true);
    // The uniform-target bound: the DINO loss of an untrained student is near ln K.
    expect(metrics.loss.dino).toBeGreaterThan(0);
    const name = 'backbone.blocks.0.attn.qkv.weight';
    const s1 = state.student[name]!.dataSync();
    expect(maxAbsDiff(s1 as Float32Array, studentBefore[name]!)).toBeGreaterThan(0);
    const m = metrics.momentum;
    const t1 = state.teacher[name]!.dataSync();
    const t0 = teacherBefore[name]!;
    for (let i = 0; i < t1.length; i += 37) expect(t1[i]).toBeCloseTo(m * t0[i]! + (1 - m) * s1[i]!, 6);
    // Centering: the new center is (1 - 0.9) x the batch mean of the teacher logits.
    expect(metrics.centerNorm).toBeGreaterThan(0);
    disposeDinoState(state);
  });

  it('reports the center norm for a reference-size head (DINOv3: 262,144 prototypes)', async () => {
    const outDim = 262_144;
    const recipe = tiny(PRESETS.dino, { dinoHead: { ...TINY_HEAD, outDim } });
    const state = createDinoState(recipe, 1, { totalSteps: 10 });
    const metrics = await trainStep(state, buildCropBatch(images(4, 2), recipe.crops, new Rng(3)));
    expect(state.center.length).toBe(outDim);
    let sum = 0;
    for (const c of state.center) sum += c * c;
    expect(metrics.centerNorm).toBeGreaterThan(0);
    expect(metrics.centerNorm).toBeCloseTo(Math.sqrt(sum), 6);
    disposeDinoState(state);
  });

  it('is bit-for-bit reproducible from the seed', async () => {
    const recipe = tiny(PRESETS.dinov3, { dropPathRate: 0.2 });
    const run = async (): Promise<Record<string, Float32Array>> => {
      const state = createDinoState(recipe, 7, { totalSteps: 10 });
      for (let s = 0; s < 2; s++) await trainStep(state, buildCropBatch(images(4, 10 + s), recipe.crops, new Rng(s)));
      const out = snapshot(state.student);
      disposeDinoState(state);
      return out;
    };
    const [a, b] = [await run(), await run()];
    for (const name of Object.keys(a)) expect(maxAbsDiff(a[name]!, b[name]!)).toBe(0);
  });

  for (const preset of ['dino', 'dinov2'] as const) {
    it(`${preset}: two ranks' gradients and teacher sums add up to the single-process ones`, async () => {
      // No masks, stochastic depth or KoLeo: those depend on the rank's own random stream
      // or its local batch by design; everything else must be exactly decomposable.
      const recipe = tiny(PRESETS[preset], { ibot: null, koleoWeight: 0 });
      const batch = buildCropBatch(images(4, 5), recipe.crops, new Rng(6));
      const states: DinoState[] = [0, 1, 2].map(() => createDinoState(recipe, 11, { totalSteps: 10 }));
      const whole = await computeLocalStep(states[0]!, batch, singleProcessCollective(4));
      const [c0, c1] = pairedCollectives(4);
      const [r0, r1] = await Promise.all([
        computeLocalStep(states[1]!, sliceCropBatch(batch, 0, 2), c0),
        computeLocalStep(states[2]!, sliceCropBatch(batch, 2, 2), c1),
      ]);
      let worst = 0;
      let largest = 0;
      for (const name of Object.keys(whole.grads)) {
        const sum = tf.add(r0.grads[name]!, r1.grads[name]!);
        const g = whole.grads[name]!.dataSync() as Float32Array;
        worst = Math.max(worst, maxAbsDiff(sum.dataSync() as Float32Array, g));
        largest = Math.max(largest, ...Array.from(g, Math.abs));
        sum.dispose();
      }
      expect(largest).toBeGreaterThan(0);
      expect(worst).toBeLessThanOrEqual(1e-5 * Math.max(1, largest));
      expect(r0.loss.total + r1.loss.total).toBeCloseTo(whole.loss.total, 5);
      const sums = r0.teacherSums.cls.map((x, i) => x + (r1.teacherSums.cls[i] as number));
      expect(maxAbsDiff(sums, whole.teacherSums.cls)).toBeLessThan(1e-4);
      expect(r0.teacherSums.clsCount + r1.teacherSums.clsCount).toBe(whole.teacherSums.clsCount);
      for (const r of [whole, r0, r1]) tf.dispose(Object.values(r.grads));
      states.forEach(disposeDinoState);
    });
  }

  it('does not apply a step whose gradient is not finite', async () => {
    const recipe = tiny(PRESETS.dino);
    const state = createDinoState(recipe, 1, { totalSteps: 10 });
    const before = snapshot(state.student);
    const local = await computeLocalStep(state, buildCropBatch(images(4, 2), recipe.crops, new Rng(3)), singleProcessCollective(4));
    const name = 'backbone.patch_embed.weight';
    const poisoned = local.grads[name]!;
    local.grads[name] = tf.fill(poisoned.shape, Number.NaN);
    poisoned.dispose();
    const result = applyUpdate(state, local.grads, local.teacherSums, local.loss.total);
    expect(result.applied).toBe(false);
    expect(state.step).toBe(0);
    for (const [k, v] of Object.entries(snapshot(state.student))) expect(maxAbsDiff(v, before[k]!)).toBe(0);
    disposeDinoState(state);
  });

  it('the one-process trainer runs the requested steps and leaks no tensors', async () => {
    const recipe = tiny(PRESETS.dinov2, { dropPathRate: 0.1 });
    const data = images(12, 9);
    const tensorsBefore = tf.memory().numTensors;
    const seen: number[] = [];
    const result = await trainOneProcess(
      { count: data.length, image: (i) => data[i]! },
      { recipe, seed: 3, totalSteps: 4, onStep: (m) => seen.push(m.step) },
    );
    expect(result.steps).toBe(4);
    expect(seen).toEqual([0, 1, 2, 3]);
    disposeDinoState(result.state);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });
});

describe('the training step on the wasm backend the workers run', () => {
  beforeAll(() => useTestBackend('wasm'));

  // The unit tests above run on cpu; every kernel a recipe needs (with its gradient) must
  // also exist on wasm, or a worker fails at its first step.
  for (const preset of ['dino', 'dinov2', 'dinov3'] as const) {
    it(`${preset}: two steps with masks, drop path and (dinov3) the Gram teacher are finite`, async () => {
      const base = PRESETS[preset];
      const recipe = tiny(base, {
        dropPathRate: 0.1,
        gram: base.gram === null ? null : { ...base.gram, startStep: 1, refreshSteps: 1, rampSteps: 1 },
        ibot: base.ibot === null ? null : { ...base.ibot, head: { ...TINY_HEAD, weightNorm: false }, maskProbability: 1 },
      });
      const state = createDinoState(recipe, 5, { totalSteps: 10 });
      for (let s = 0; s < 2; s++) {
        const m = await trainStep(state, buildCropBatch(images(4, 20 + s), recipe.crops, new Rng(s)));
        expect(m.applied).toBe(true);
        expect(Number.isFinite(m.loss.total)).toBe(true);
        if (base.ibot !== null) expect(m.loss.ibot).toBeGreaterThan(0);
        if (base.gram !== null && s === 1) expect(m.loss.gram).toBeGreaterThanOrEqual(0);
      }
      expect(state.gramTeacher !== null).toBe(base.gram !== null);
      disposeDinoState(state);
    });
  }
});
