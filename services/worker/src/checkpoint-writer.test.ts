import type * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { readCheckpoint, decodeSafetensors } from '@dinofleet/data';
import { startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import { Rng, buildCropBatch, createDinoState, disposeDinoState, trainStep } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import { encodeTeacherSnapshot, saveCheckpoint } from './checkpoint-writer.ts';
import { randomImages, tinyDinoRecipe } from './testing/recipes.ts';

describe('checkpoints of the state', () => {
  let s3: TestS3;
  let state: DinoState;

  beforeAll(async () => {
    await initComputeBackend('cpu');
    s3 = await startTestS3();
    const recipe = tinyDinoRecipe();
    state = createDinoState(recipe, 5, { totalSteps: 4 });
    await trainStep(state, buildCropBatch(randomImages(4, 1, 16), recipe.crops, new Rng(5).fork(1)));
  });

  afterAll(async () => {
    disposeDinoState(state);
    await s3?.close();
  });

  it('writes student, teacher, moments and centers under <uri><job>/step-<8 digits>/ and reads them back', async () => {
    const uri = await saveCheckpoint({ s3: s3.client, uri: `s3://${s3.bucket}/ckpt/`, jobId: 'job-abcdefgh' }, state);
    expect(uri).toBe(`s3://${s3.bucket}/ckpt/job-abcdefgh/step-00000001/`);
    const loaded = await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/`, 'job-abcdefgh');
    expect(loaded?.step).toBe(1);
    const tensors = loaded?.tensors ?? {};
    const names = Object.keys(state.student).sort();
    const trained = Object.keys(state.optimizer.state().paramSteps).sort();
    expect(Object.keys(tensors).sort()).toEqual(
      [
        ...names.map((n) => `student/${n}`),
        ...names.map((n) => `teacher/${n}`),
        ...trained.map((n) => `optim/m/${n}`),
        ...trained.map((n) => `optim/v/${n}`),
        'center',
      ].sort(),
    );
    const name = 'backbone.blocks.0.attn.qkv.weight';
    expect(tensors[`teacher/${name}`]?.shape).toEqual((state.teacher[name] as tf.Tensor).shape);
    expect(Array.from(tensors[`teacher/${name}`]?.data ?? [])).toEqual(Array.from((state.teacher[name] as tf.Tensor).dataSync()));
    expect(Array.from(tensors.center?.data ?? [])).toEqual(Array.from(state.center));
    expect(loaded?.state).toMatchObject({ jobId: 'job-abcdefgh', step: 1, seed: 5 });
    expect((loaded?.state.optimizerSteps as Record<string, number>)[name]).toBe(1);
  });

  it('encodes a teacher snapshot with only the teacher', async () => {
    const decoded = decodeSafetensors(await encodeTeacherSnapshot(state, 'job-abcdefgh'));
    // Named by parameter alone, as `dinofleet eval knn` and other readers of a snapshot expect.
    expect(Object.keys(decoded.tensors).sort()).toEqual(Object.keys(state.teacher).sort());
    expect(decoded.metadata).toMatchObject({ jobId: 'job-abcdefgh', step: '1' });
  });
});
