import { createHash } from 'node:crypto';

import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CheckpointError, readCheckpoint, writeCheckpoint } from './checkpoint.ts';
import { decodeSafetensors } from './safetensors.ts';
import type { NamedTensor } from './safetensors.ts';
import { startTestS3 } from './testing/s3.ts';
import type { TestS3 } from './testing/s3.ts';

let s3: TestS3;

beforeAll(async () => {
  s3 = await startTestS3();
});

afterAll(async () => {
  await s3.close();
});

function tensorsAt(step: number): Record<string, NamedTensor> {
  return {
    'student/w': { shape: [2, 2], data: new Float32Array([1, 2, 3, step]) },
    'teacher/w': { shape: [2, 2], data: new Float32Array([0.5, -0.25, Number.NaN, step]) },
    'optim/m/w': { shape: [2, 2], data: new Float32Array(4) },
    'optim/v/w': { shape: [2, 2], data: new Float32Array([1e-8, 0, 0, 0]) },
    center: { shape: [3], data: new Float32Array([0.1, 0.2, 0.3]) },
  };
}

async function getText(key: string): Promise<string> {
  const response = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return (await response.Body?.transformToString()) ?? '';
}

async function getBytes(key: string): Promise<Uint8Array> {
  const response = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return (await response.Body?.transformToByteArray()) ?? new Uint8Array();
}

async function keysUnder(prefix: string): Promise<string[]> {
  const page = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
  return (page.Contents ?? []).map((object) => object.Key ?? '').sort();
}

function expectSameBits(actual: NamedTensor | undefined, expected: NamedTensor): void {
  expect(actual?.shape).toEqual(expected.shape);
  expect(new Uint32Array((actual as NamedTensor).data.buffer)).toEqual(new Uint32Array(expected.data.slice().buffer));
}

describe('writeCheckpoint / readCheckpoint', () => {
  it('writes the layout of docs/cluster.md and reads it back bit for bit', async () => {
    const prefix = `s3://${s3.bucket}/ckpt/a/`;
    const state = { seed: 7, recipe: 'dinov2', optimizerSteps: { w: 12 } };
    const uri = await writeCheckpoint(s3.client, prefix, 'job-1', 12, tensorsAt(12), state);
    expect(uri).toBe(`s3://${s3.bucket}/ckpt/a/job-1/step-00000012/`);

    expect(await keysUnder('ckpt/a/')).toEqual([
      'ckpt/a/job-1/latest.json',
      'ckpt/a/job-1/step-00000012/manifest.json',
      'ckpt/a/job-1/step-00000012/model.safetensors',
      'ckpt/a/job-1/step-00000012/state.json',
    ]);
    expect(JSON.parse(await getText('ckpt/a/job-1/latest.json'))).toEqual({ step: 12, prefix: uri });

    const model = await getBytes('ckpt/a/job-1/step-00000012/model.safetensors');
    const stateJson = await getBytes('ckpt/a/job-1/step-00000012/state.json');
    const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');
    expect(JSON.parse(await getText('ckpt/a/job-1/step-00000012/manifest.json'))).toEqual({
      step: 12,
      files: [
        { key: 'model.safetensors', bytes: model.length, sha256: sha(model) },
        { key: 'state.json', bytes: stateJson.length, sha256: sha(stateJson) },
      ],
    });
    expect(decodeSafetensors(model).metadata).toEqual({ jobId: 'job-1', step: '12' });

    const loaded = await readCheckpoint(s3.client, prefix, 'job-1');
    expect(loaded?.step).toBe(12);
    expect(loaded?.uri).toBe(uri);
    for (const [name, tensor] of Object.entries(tensorsAt(12))) expectSameBits(loaded?.tensors[name], tensor);
    expect(loaded?.state).toMatchObject({ jobId: 'job-1', step: 12, ...state });
    expect(typeof loaded?.state.createdAt).toBe('string');
  });

  it('reads the newest complete checkpoint, or the one asked for', async () => {
    const prefix = `s3://${s3.bucket}/ckpt/b`; // no trailing '/': one is added
    await writeCheckpoint(s3.client, prefix, 'job-2', 5, tensorsAt(5), { createdAt: 'then' });
    await writeCheckpoint(s3.client, prefix, 'job-2', 10, tensorsAt(10), {});
    // Step 100 sorts after step 10 only because the step is zero-padded.
    await writeCheckpoint(s3.client, prefix, 'job-2', 100, tensorsAt(100), {});

    expect((await readCheckpoint(s3.client, prefix, 'job-2'))?.step).toBe(100);
    const five = await readCheckpoint(s3.client, prefix, 'job-2', 5);
    expect(five?.step).toBe(5);
    expect(five?.state.createdAt).toBe('then');
    expectSameBits(five?.tensors['teacher/w'], tensorsAt(5)['teacher/w'] as NamedTensor);
    expect(await readCheckpoint(s3.client, prefix, 'job-2', 6)).toBeNull();
  });

  it('ignores a checkpoint without manifest.json', async () => {
    const prefix = `s3://${s3.bucket}/ckpt/c/`;
    await writeCheckpoint(s3.client, prefix, 'job-3', 4, tensorsAt(4), {});
    await writeCheckpoint(s3.client, prefix, 'job-3', 8, tensorsAt(8), {});
    // A writer that died after the tensors and state but before the manifest.
    await s3.client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: 'ckpt/c/job-3/step-00000008/manifest.json' }));
    // And one that only got as far as the tensors.
    await s3.client.send(
      new PutObjectCommand({ Bucket: s3.bucket, Key: 'ckpt/c/job-3/step-00000012/model.safetensors', Body: new Uint8Array(8) }),
    );

    expect((await readCheckpoint(s3.client, prefix, 'job-3'))?.step).toBe(4);
    expect(await readCheckpoint(s3.client, prefix, 'job-3', 8)).toBeNull();
  });

  it('returns null for a job with no checkpoint', async () => {
    expect(await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/none/`, 'job-x')).toBeNull();
    expect(await readCheckpoint(s3.client, `s3://${s3.bucket}/ckpt/none/`, 'job-x', 3)).toBeNull();
  });

  it('fails on a file whose bytes do not match the manifest', async () => {
    const prefix = `s3://${s3.bucket}/ckpt/d/`;
    await writeCheckpoint(s3.client, prefix, 'job-4', 3, tensorsAt(3), {});
    const key = 'ckpt/d/job-4/step-00000003/model.safetensors';
    const tampered = await getBytes(key);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: tampered }));

    const read = readCheckpoint(s3.client, prefix, 'job-4');
    await expect(read).rejects.toBeInstanceOf(CheckpointError);
    await expect(read).rejects.toThrow(/model\.safetensors has SHA-256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}/);

    await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: tampered.subarray(0, 100) }));
    await expect(readCheckpoint(s3.client, prefix, 'job-4', 3)).rejects.toThrow(/has 100 bytes, the manifest says/);
  });

  it('rejects a bad URI, job id or step before touching S3', async () => {
    await expect(writeCheckpoint(s3.client, 'gs://b/x/', 'j', 1, {}, {})).rejects.toThrow(/must look like s3:\/\/bucket\/prefix\//);
    await expect(writeCheckpoint(s3.client, `s3://${s3.bucket}/x/`, 'a/b', 1, {}, {})).rejects.toThrow(/job id/);
    await expect(writeCheckpoint(s3.client, `s3://${s3.bucket}/x/`, 'j', -1, {}, {})).rejects.toThrow(/non-negative integer/);
    await expect(
      writeCheckpoint(s3.client, `s3://${s3.bucket}/x/`, 'j', 1, { w: { shape: [2], data: new Float32Array(1) } }, {}),
    ).rejects.toThrow(CheckpointError);
    expect(await keysUnder('x/')).toEqual([]);
  });
});
