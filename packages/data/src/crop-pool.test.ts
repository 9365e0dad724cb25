import { describe, expect, it } from 'vitest';
import { FMNIST_MULTI_CROP, Rng, buildCropBatch, stepCropSeed } from '@dinofleet/dino';
import type { MultiCropConfig } from '@dinofleet/dino';
import { CropPool, allocateCropBatch } from './crop-pool.ts';
import { DecodeError, decodeImage, encodePng } from './image-decode.ts';

const RGB_CROPS: MultiCropConfig = {
  ...FMNIST_MULTI_CROP,
  globalSize: 32,
  localSize: 16,
  nLocal: 3,
  grayscaleProbability: 0.2,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

async function pngs(count: number, height: number, width: number, channels: 1 | 3, seed: number): Promise<Uint8Array[]> {
  const rng = new Rng(seed);
  return Promise.all(
    Array.from({ length: count }, () =>
      encodePng({ data: Float32Array.from({ length: height * width * channels }, () => rng.uniform()), height, width, channels }),
    ),
  );
}

describe('CropPool', () => {
  it('writes exactly the crops buildCropBatch builds for the same step and batch positions', async () => {
    await using pool = new CropPool({ threads: 2 });
    const seed = 11;
    const step = 4;
    const firstIndex = 5;
    const encoded = await pngs(6, 40, 52, 3, 3);
    const decoded = await Promise.all(encoded.map((bytes) => decodeImage(bytes, { channels: 3 })));
    const expected = buildCropBatch(decoded, RGB_CROPS, new Rng(seed).fork(step + 1), firstIndex);

    const batch = allocateCropBatch(RGB_CROPS, encoded.length, 3);
    const batchSeed = stepCropSeed(seed, step);
    const results = await Promise.all(
      encoded.map((bytes, slot) =>
        pool.decodeAndCrop(bytes, 3, { config: RGB_CROPS, batchSeed, globalIndex: firstIndex + slot, slot, batchSize: encoded.length, global: batch.global, local: batch.local }),
      ),
    );
    expect(results.map((r) => [r.width, r.height])).toEqual(encoded.map(() => [52, 40]));
    expect(batch.global.length).toBe(expected.global.length);
    expect(batch.local.length).toBe(expected.local.length);
    expect(Buffer.from(batch.global.buffer).equals(Buffer.from(expected.global.buffer))).toBe(true);
    expect(Buffer.from(batch.local.buffer).equals(Buffer.from(expected.local.buffer))).toBe(true);
  });

  it('decodes grey images to the pixels decodeImage gives', async () => {
    await using pool = new CropPool({ threads: 1 });
    const [bytes] = await pngs(1, 9, 7, 1, 8);
    const expected = await decodeImage(bytes as Uint8Array, { channels: 1 });
    const image = await pool.decode(bytes as Uint8Array, 1);
    expect([image.height, image.width, image.channels]).toEqual([9, 7, 1]);
    expect(Array.from(image.data)).toEqual(Array.from(expected.data));
  });

  it('rejects a corrupt image with a DecodeError and keeps serving', async () => {
    await using pool = new CropPool({ threads: 1 });
    const [good] = await pngs(1, 8, 8, 3, 2);
    const truncated = (good as Uint8Array).slice(0, 40);
    await expect(pool.decode(truncated, 3)).rejects.toBeInstanceOf(DecodeError);
    await expect(pool.decode(new Uint8Array([1, 2, 3, 4]), 3)).rejects.toMatchObject({ code: 'unsupported_format' });
    const image = await pool.decode(good as Uint8Array, 3);
    expect(image.width).toBe(8);
  });

  it('fails waiting jobs when closed', async () => {
    const pool = new CropPool({ threads: 1, jobsPerThread: 1 });
    const encoded = await pngs(4, 64, 64, 3, 5);
    const settling = Promise.allSettled(encoded.map((bytes) => pool.decode(bytes, 3)));
    await pool.close();
    const settled = await settling;
    expect(settled.some((s) => s.status === 'rejected')).toBe(true);
    await expect(pool.decode(encoded[0] as Uint8Array, 3)).rejects.toThrow(/closed/);
  });
});
