import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildCropBatch } from './crop-batch.ts';
import { captureDinoState, disposeDinoStateCopy, restoreDinoState } from './dino-state-copy.ts';
import { dinoStateTensors, loadDinoStateTensors } from './dino-state-tensors.ts';
import type { DinoStateTensors } from './dino-state-tensors.ts';
import { FMNIST_MULTI_CROP, type Image } from './multi-crop.ts';
import { PRESETS, type DinoRecipe } from './presets.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { applyUpdate, computeLocalStep, createDinoState, disposeDinoState, singleProcessCollective, trainStep } from './train-step.ts';
import type { DinoState } from './train-step.ts';
import { VIT_CONFIGS } from './vit-configs.ts';

const TINY_HEAD = { inDim: 16, hiddenDim: 32, bottleneckDim: 8, outDim: 32, nLayers: 3, weightNorm: true };

/** DINOv2 with centering (so iBOT has a patch center) and a Gram teacher from step 1, on a tiny ViT. */
function tinyRecipe(): DinoRecipe {
  const base = PRESETS.dinov2;
  return {
    ...base,
    targets: 'centering',
    vit: VIT_CONFIGS['vit-test-tiny'],
    dinoHead: TINY_HEAD,
    ibot: base.ibot === null ? null : { ...base.ibot, head: { ...TINY_HEAD, weightNorm: false } },
    gram: { weight: 1, startStep: 1, refreshSteps: 1, rampSteps: 0 },
    crops: { ...FMNIST_MULTI_CROP, globalSize: 16, localSize: 8, nLocal: 0 },
    globalBatchSize: 2,
    dropPathRate: 0,
  };
}

function images(n: number, seed: number): Image[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => ({ data: Float32Array.from({ length: 16 * 16 }, () => rng.uniform()), height: 16, width: 16, channels: 1 }));
}

/** Every bit of the state, as one buffer per tensor plus the scalars: equal iff the states are. */
async function fingerprint(state: DinoState): Promise<{ tensors: Record<string, string>; scalars: DinoStateTensors['scalars']; gram: boolean }> {
  const { tensors, scalars } = await dinoStateTensors(state);
  const hex = Object.fromEntries(Object.entries(tensors).map(([name, t]) => [name, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64')]));
  return { tensors: hex, scalars, gram: state.gramTeacher !== null };
}

async function step(state: DinoState, seed: number): Promise<boolean> {
  const recipe = state.recipe;
  const result = await trainStep(state, buildCropBatch(images(2, seed), recipe.crops, new Rng(seed).fork(state.step + 1)));
  return result.applied;
}

describe('rollback copies and state tensors', () => {
  const states: DinoState[] = [];
  const make = (): DinoState => {
    const state = createDinoState(tinyRecipe(), 3, { totalSteps: 10 });
    states.push(state);
    return state;
  };

  beforeAll(() => useTestBackend());
  afterEach(() => {
    for (const s of states.splice(0)) disposeDinoState(s);
  });

  it('restore undoes an applied update bit for bit, including the moments, the centers, the Gram teacher and the step', async () => {
    const state = make();
    expect(await step(state, 1)).toBe(true);
    // After step 1 the Gram teacher exists (startStep 1): the copy must bring it back too.
    expect(state.gramTeacher).not.toBeNull();
    const before = await fingerprint(state);
    const tensorsBefore = tf.memory().numTensors;

    const copy = captureDinoState(state);
    const local = await computeLocalStep(state, buildCropBatch(images(2, 2), state.recipe.crops, new Rng(2).fork(2)), singleProcessCollective(2));
    const update = applyUpdate(state, local.grads, local.teacherSums, local.loss.total);
    expect(update.applied).toBe(true);
    const after = await fingerprint(state);
    expect(after.scalars.step).toBe(before.scalars.step + 1);
    expect(after.tensors['student/backbone.blocks.0.attn.qkv.weight']).not.toBe(before.tensors['student/backbone.blocks.0.attn.qkv.weight']);
    expect(after.tensors['gram/backbone.blocks.0.attn.qkv.weight']).not.toBe(before.tensors['gram/backbone.blocks.0.attn.qkv.weight']);
    expect(after.tensors.center).not.toBe(before.tensors.center);

    restoreDinoState(state, copy);
    expect(await fingerprint(state)).toEqual(before);
    // Nothing leaked: the copy's tensors were freed, the replaced Gram teacher too.
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    // The restored state trains like the original: one more step from either gives the same state.
    const twin = make();
    expect(await step(twin, 1)).toBe(true);
    expect(await step(twin, 2)).toBe(true);
    expect(await step(state, 2)).toBe(true);
    expect(await fingerprint(state)).toEqual(await fingerprint(twin));
  });

  it('a disposed copy frees its tensors and leaves the state alone', async () => {
    const state = make();
    const before = await fingerprint(state);
    const tensors = tf.memory().numTensors;
    disposeDinoStateCopy(captureDinoState(state));
    expect(tf.memory().numTensors).toBe(tensors);
    expect(await fingerprint(state)).toEqual(before);
  });

  it('state tensors load into a fresh state bit for bit', async () => {
    const state = make();
    expect(await step(state, 1)).toBe(true);
    expect(await step(state, 2)).toBe(true);
    const saved = await dinoStateTensors(state);
    const fresh = make();
    loadDinoStateTensors(fresh, saved.tensors, saved.scalars);
    expect(await fingerprint(fresh)).toEqual(await fingerprint(state));
    expect(fresh.optimizer.stepCount).toBe(state.optimizer.stepCount);
    // And it goes on identically.
    expect(await step(state, 3)).toBe(true);
    expect(await step(fresh, 3)).toBe(true);
    expect(await fingerprint(fresh)).toEqual(await fingerprint(state));
  });

  it('refuses a missing, unknown or mis-shaped tensor and then leaves the state as it was', async () => {
    const state = make();
    const before = await fingerprint(state);
    const trained = make();
    expect(await step(trained, 1)).toBe(true);
    const saved = await dinoStateTensors(trained);
    const without = { ...saved.tensors };
    delete without['teacher/backbone.blocks.0.attn.qkv.weight'];
    expect(() => loadDinoStateTensors(state, without, saved.scalars)).toThrow(/no tensor teacher\/backbone\.blocks\.0\.attn\.qkv\.weight/);
    expect(() => loadDinoStateTensors(state, { ...saved.tensors, extra: { shape: [1], data: new Float32Array(1) } }, saved.scalars)).toThrow(/unknown tensor extra/);
    expect(() => loadDinoStateTensors(state, { ...saved.tensors, center: { shape: [3], data: new Float32Array(3) } }, saved.scalars)).toThrow(/center has shape \[3\]/);
    expect(await fingerprint(state)).toEqual(before);
  });
});
