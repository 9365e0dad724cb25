import { createHash } from 'node:crypto';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { readCheckpoint, decodeSafetensors } from '@dinofleet/data';
import { startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import { Rng, buildCropBatch, createDinoState, disposeDinoState, trainStep } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import { encodeTeacherSnapshot, loadCheckpointInto, parseCheckpointUri, saveCheckpoint } from './checkpoint-writer.ts';
import { stateHash } from './state-hash.ts';
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

  it('writes student, teacher, moments and centers under <uri><job>/step-<8 digits>/, reports the files, and leaves the manifest to the coordinator', async () => {
    const hash = await stateHash(state);
    const saved = await saveCheckpoint({ s3: s3.client, uri: `s3://${s3.bucket}/ckpt/`, jobId: 'job-abcdefgh' }, state, hash);
    expect(saved.uri).toBe(`s3://${s3.bucket}/ckpt/job-abcdefgh/step-00000001/`);
    expect(saved.files.map((f) => f.name)).toEqual(['model.safetensors', 'state.json']);
    // Incomplete until the coordinator writes manifest.json: nobody may restore it yet.
    expect(await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/`, 'job-abcdefgh')).toBeNull();
    const objects = new Map<string, Uint8Array>();
    for (const file of saved.files) {
      const got = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: `ckpt/job-abcdefgh/step-00000001/${file.name}` }));
      const bytes = await got.Body!.transformToByteArray();
      objects.set(file.name, bytes);
      expect(bytes.byteLength).toBe(file.bytes);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(file.sha256);
    }
    const tensors = decodeSafetensors(objects.get('model.safetensors')!).tensors;
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
    const json = JSON.parse(new TextDecoder().decode(objects.get('state.json'))) as Record<string, unknown>;
    expect(json).toMatchObject({ jobId: 'job-abcdefgh', step: 1, seed: 5, stateHash: hash.toString('hex'), optimizerStep: 1 });
    expect((json.optimizerSteps as Record<string, number>)[name]).toBe(1);

    // The coordinator completes it (manifest.json last); then a fresh state restores it bit for bit.
    const manifest = { step: 1, files: saved.files.map((f) => ({ key: f.name, bytes: f.bytes, sha256: f.sha256 })) };
    await s3.client.send(
      new PutObjectCommand({ Bucket: s3.bucket, Key: 'ckpt/job-abcdefgh/step-00000001/manifest.json', Body: JSON.stringify(manifest) }),
    );
    const restored = createDinoState(state.recipe, 5, { totalSteps: 4 });
    try {
      const loaded = await loadCheckpointInto(s3.client, saved.uri, 'job-abcdefgh', restored);
      expect(loaded).toEqual({ step: 1, stateHash: hash.toString('hex') });
      expect((await stateHash(restored)).equals(hash)).toBe(true);
      await expect(loadCheckpointInto(s3.client, saved.uri, 'other-job', restored)).rejects.toThrow(/belongs to job job-abcdefgh/);
      await expect(loadCheckpointInto(s3.client, `s3://${s3.bucket}/ckpt/job-abcdefgh/step-00000002/`, 'job-abcdefgh', restored)).rejects.toThrow(
        /no complete checkpoint/,
      );
    } finally {
      disposeDinoState(restored);
    }
  });

  it('parses a checkpoint step prefix', () => {
    expect(parseCheckpointUri('s3://b/ckpt/job-a/step-00000012/')).toEqual({ prefixUri: 's3://b/ckpt/', jobId: 'job-a', step: 12 });
    expect(parseCheckpointUri('s3://b/job-a/step-00000003')).toEqual({ prefixUri: 's3://b/', jobId: 'job-a', step: 3 });
    expect(() => parseCheckpointUri('s3://b/ckpt/job-a/')).toThrow(/must look like/);
  });

  it('encodes a teacher snapshot with only the teacher', async () => {
    const decoded = decodeSafetensors(await encodeTeacherSnapshot(state, 'job-abcdefgh'));
    // Named by parameter alone, as `dinofleet eval knn` and other readers of a snapshot expect.
    expect(Object.keys(decoded.tensors).sort()).toEqual(Object.keys(state.teacher).sort());
    expect(decoded.metadata).toMatchObject({ jobId: 'job-abcdefgh', step: '1' });
  });
});
