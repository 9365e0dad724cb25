import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { decodeSafetensors } from '@dinofleet/data';
import { Rng, buildCropBatch, createDinoState, disposeDinoState, trainStep } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import { DINO_STATE_FORMAT, decodeDinoStateInto, encodeDinoState } from './state-codec.ts';
import { stateHash } from './state-hash.ts';
import { randomImages, tinyDinoRecipe } from './testing/recipes.ts';

describe('the state encoding', () => {
  const states: DinoState[] = [];
  let trained: DinoState;

  beforeAll(async () => {
    await initComputeBackend('cpu');
    const recipe = tinyDinoRecipe();
    trained = createDinoState(recipe, 5, { totalSteps: 6 });
    states.push(trained);
    for (let s = 0; s < 2; s++) {
      await trainStep(trained, buildCropBatch(randomImages(4, 10 + s, 16), recipe.crops, new Rng(5).fork(s + 1)));
    }
  });

  afterAll(() => {
    for (const s of states) disposeDinoState(s);
  });

  it('round-trips a trained state bit for bit: equal state hashes', async () => {
    const bytes = await encodeDinoState(trained, 'job-abcdefgh');
    const fresh = createDinoState(trained.recipe, 5, { totalSteps: 6 });
    states.push(fresh);
    expect((await stateHash(fresh)).equals(await stateHash(trained))).toBe(false);
    const info = decodeDinoStateInto(fresh, bytes);
    expect(info).toMatchObject({ jobId: 'job-abcdefgh', step: 2, optimizerStep: 2 });
    expect(fresh.step).toBe(2);
    expect((await stateHash(fresh)).equals(await stateHash(trained))).toBe(true);
    // Deterministic: the same state encodes to the same bytes.
    expect(Buffer.from(await encodeDinoState(fresh, 'job-abcdefgh')).equals(Buffer.from(bytes))).toBe(true);
    const { metadata, tensors } = decodeSafetensors(bytes);
    expect(metadata.format).toBe(DINO_STATE_FORMAT);
    expect(Object.keys(tensors)).toContain('optim/m/backbone.blocks.0.attn.qkv.weight');
  });

  it('refuses other bytes and leaves the state alone', async () => {
    const fresh = createDinoState(trained.recipe, 5, { totalSteps: 6 });
    states.push(fresh);
    const before = await stateHash(fresh);
    expect(() => decodeDinoStateInto(fresh, new Uint8Array(16))).toThrow(/not safetensors/);
    const other = createDinoState({ ...trained.recipe, dinoHead: { ...trained.recipe.dinoHead, outDim: 16 } }, 5, { totalSteps: 6 });
    states.push(other);
    expect(() => decodeDinoStateInto(fresh, new Uint8Array(0))).toThrow();
    await expect(encodeDinoState(other, 'job').then((bytes) => decodeDinoStateInto(fresh, bytes))).rejects.toThrow(/does not fit the model/);
    expect((await stateHash(fresh)).equals(before)).toBe(true);
  });
});
