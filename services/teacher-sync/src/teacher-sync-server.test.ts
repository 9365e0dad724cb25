import { createHash } from 'node:crypto';

import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { Metadata } from '@grpc/grpc-js';
import { encodeSafetensors } from '@dinofleet/data';
import { startTestS3 } from '@dinofleet/data/testing';
import type { TestS3 } from '@dinofleet/data/testing';
import { updateCenter } from '@dinofleet/dino';
import {
  callUnary,
  createClient,
  fromServiceError,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  INSECURE,
  TeacherSyncClient,
} from '@dinofleet/proto';
import type {
  AttestTeacherRequest,
  AttestTeacherResponse,
  DinofleetError,
  GetTeacherSnapshotResponse,
  PushTeacherSumsRequest,
  PutTeacherSnapshotRequest,
  PutTeacherSnapshotResponse,
  TeacherSnapshotHeader,
  WatchCentersResponse,
} from '@dinofleet/proto';
import { createLogger, LogLevel } from '@dinofleet/telemetry';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { float32FromBytes, float32ToBytes } from './float32-bytes.ts';
import { SNAPSHOT_CHUNK_BYTES } from './teacher-sync-service.ts';
import { startTeacherSync } from './teacher-sync-server.ts';
import type { TeacherSyncOptions, TeacherSyncServer } from './teacher-sync-server.ts';

const DEADLINE_MS = 10_000;
const silent = createLogger({ name: 'teacher-sync', level: LogLevel.Silent });

let s3: TestS3;

beforeAll(async () => {
  s3 = await startTestS3();
});

afterAll(async () => {
  await s3.close();
});

interface Fixture extends AsyncDisposable {
  readonly server: TeacherSyncServer;
  readonly client: TeacherSyncClient;
}

/** teacher-sync in plaintext (the transport has its own tests in security.test.ts). */
async function startFixture(options: Partial<TeacherSyncOptions> = {}): Promise<Fixture> {
  const server = await startTeacherSync({ security: INSECURE, logger: silent, s3: s3.client, drainGraceMs: 1000, ...options });
  const client = createClient(TeacherSyncClient, server.grpcAddress);
  return {
    server,
    client,
    [Symbol.asyncDispose]: async () => {
      client.close();
      await server.close();
    },
  };
}

/** Deterministic values with plenty of mantissa bits, so rounding order shows. */
function values(seed: number, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sin(seed * 12.9898 + i * 78.233) * 43758.5453 - 17.25 * i;
  return out;
}

type PushFields = Omit<Partial<PushTeacherSumsRequest>, 'sums' | 'baseCenter' | 'basePatchCenter'> & {
  rank: number;
  sums: Float32Array;
  /** @default none (zeros at step 0) */
  baseCenter?: Float32Array;
  basePatchCenter?: Float32Array;
};

function pushRequest(fields: PushFields): PushTeacherSumsRequest {
  const { baseCenter, basePatchCenter, ...rest } = fields;
  return {
    jobId: 'job-a',
    generation: 1,
    step: 0,
    count: 8,
    worldSize: 2,
    patchSums: Buffer.alloc(0),
    patchCount: 0,
    centerMomentum: 0.9,
    ...rest,
    sums: float32ToBytes(fields.sums),
    baseCenter: float32ToBytes(baseCenter ?? new Float32Array(0)),
    basePatchCenter: float32ToBytes(basePatchCenter ?? new Float32Array(0)),
  };
}

function push(client: TeacherSyncClient, request: PushTeacherSumsRequest) {
  return callUnary(client, 'pushTeacherSums', request, { deadlineMs: DEADLINE_MS });
}

function getCenter(client: TeacherSyncClient, jobId: string, step: number, deadlineMs = DEADLINE_MS, generation = 0) {
  return callUnary(client, 'getCenter', { jobId, step, generation }, { deadlineMs });
}

function centerOf(response: { center: Buffer }): Float32Array {
  return float32FromBytes(response.center, 'center');
}

function bits(values: Float32Array): number[] {
  return Array.from(new Uint32Array(values.buffer, values.byteOffset, values.length));
}

/** Σ in rank order, rounded to float32 after each addition, as docs/cluster.md fixes it. */
function float32Sum(parts: readonly Float32Array[]): Float32Array {
  const total = new Float32Array((parts[0] as Float32Array).length);
  for (const part of parts) for (let i = 0; i < total.length; i++) total[i] = Math.fround((total[i] as number) + (part[i] as number));
  return total;
}

function putSnapshot(client: TeacherSyncClient, messages: readonly PutTeacherSnapshotRequest[]): Promise<PutTeacherSnapshotResponse> {
  return new Promise((resolve, reject) => {
    const call = client.putTeacherSnapshot(new Metadata(), { deadline: Date.now() + DEADLINE_MS }, (err, response) => {
      if (err !== null) reject(fromServiceError(err));
      else resolve(response);
    });
    call.on('error', () => undefined);
    for (const message of messages) call.write(message);
    call.end();
  });
}

function snapshotMessages(header: TeacherSnapshotHeader, bytes: Uint8Array, chunkBytes = SNAPSHOT_CHUNK_BYTES): PutTeacherSnapshotRequest[] {
  const messages: PutTeacherSnapshotRequest[] = [{ part: { $case: 'header', header } }];
  for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
    messages.push({ part: { $case: 'chunk', chunk: { offset, data: Buffer.from(bytes.subarray(offset, offset + chunkBytes)) } } });
  }
  return messages;
}

async function getSnapshot(client: TeacherSyncClient, jobId: string, step: number): Promise<{ header: TeacherSnapshotHeader; bytes: Buffer }> {
  const stream = client.getTeacherSnapshot({ jobId, step }, { deadline: Date.now() + DEADLINE_MS });
  let header: TeacherSnapshotHeader | undefined;
  const chunks: Buffer[] = [];
  try {
    for await (const message of stream as AsyncIterable<GetTeacherSnapshotResponse>) {
      if (message.part?.$case === 'header') header = message.part.header;
      else if (message.part?.$case === 'chunk') {
        expect(message.part.chunk.offset).toBe(chunks.reduce((n, c) => n + c.length, 0));
        expect(message.part.chunk.data.length).toBeLessThanOrEqual(SNAPSHOT_CHUNK_BYTES);
        chunks.push(message.part.chunk.data);
      }
    }
  } catch (err) {
    throw fromServiceError(err);
  }
  if (header === undefined) throw new Error('no header');
  return { header, bytes: Buffer.concat(chunks) };
}

async function rejection(promise: Promise<unknown>): Promise<DinofleetError> {
  try {
    await promise;
  } catch (err) {
    return err as DinofleetError;
  }
  throw new Error('expected a rejection');
}

describe('teacher-sync centers', () => {
  it('computes the center from two ranks exactly as updateCenter of the rank-ordered float32 sums', async () => {
    await using f = await startFixture();
    const dims = 37;
    const [s0, s1] = [values(1, dims), values(2, dims)];
    const [p0, p1] = [values(3, 5), values(4, 5)];
    const patch = (rank: number, sums: Float32Array, patchCount: number) => ({ patchSums: float32ToBytes(sums), patchCount, rank });

    // Rank 1 first: the sum must still run in rank order.
    const first = await push(f.client, pushRequest({ ...patch(1, p1, 0), sums: s1, count: 6 }));
    expect(first).toEqual({ ranksReceived: 1, centerReady: false });
    const second = await push(f.client, pushRequest({ ...patch(0, p0, 11), sums: s0, count: 10 }));
    expect(second).toEqual({ ranksReceived: 2, centerReady: true });

    const center1 = updateCenter(new Float32Array(dims), float32Sum([s0, s1]), 16, 0.9);
    const patch1 = updateCenter(new Float32Array(5), float32Sum([p0, p1]), 11, 0.9);
    const got1 = await getCenter(f.client, 'job-a', 1);
    expect(got1.step).toBe(1);
    expect(got1.generation).toBe(1);
    expect(bits(float32FromBytes(got1.center, 'center'))).toEqual(bits(center1));
    expect(bits(float32FromBytes(got1.patchCenter, 'patch'))).toEqual(bits(patch1));

    // Step 1 builds on the base the ranks used (center_1); no patch outputs anywhere keeps
    // the patch center.
    const [t0, t1] = [values(5, dims), values(6, dims)];
    const bases = { baseCenter: center1, basePatchCenter: patch1 };
    await push(f.client, pushRequest({ ...patch(0, new Float32Array(5), 0), ...bases, step: 1, sums: t0, count: 4 }));
    await push(f.client, pushRequest({ ...patch(1, new Float32Array(5), 0), ...bases, step: 1, sums: t1, count: 4 }));
    const got2 = await getCenter(f.client, 'job-a', 2);
    expect(bits(float32FromBytes(got2.center, 'center'))).toEqual(bits(updateCenter(center1, float32Sum([t0, t1]), 8, 0.9)));
    expect(bits(float32FromBytes(got2.patchCenter, 'patch'))).toEqual(bits(patch1));

    const metrics = await f.server.registry.metrics();
    expect(metrics).toMatch(/^dinofleet_teacher_sync_pushes_total 4$/m);
    expect(metrics).toMatch(/^dinofleet_teacher_sync_centers_total 2$/m);
  });

  it('GetCenter waits for the center and answers once the last rank pushes', async () => {
    await using f = await startFixture();
    const waiting = getCenter(f.client, 'job-w', 1);
    let settled = false;
    void waiting.finally(() => {
      settled = true;
    });
    await push(f.client, pushRequest({ jobId: 'job-w', rank: 0, sums: values(1, 4) }));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(settled).toBe(false);
    await push(f.client, pushRequest({ jobId: 'job-w', rank: 1, sums: values(2, 4) }));
    const center = await waiting;
    expect(center.step).toBe(1);
    expect(bits(float32FromBytes(center.center, 'center'))).toEqual(
      bits(updateCenter(new Float32Array(4), float32Sum([values(1, 4), values(2, 4)]), 16, 0.9)),
    );
  });

  it('GetCenter fails with DEADLINE_EXCEEDED when the center does not appear in time', async () => {
    await using f = await startFixture();
    const started = Date.now();
    const err = await rejection(getCenter(f.client, 'job-d', 3, 300));
    expect(err.code).toBe('DEADLINE_EXCEEDED');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('treats a repeated push as idempotent', async () => {
    await using f = await startFixture();
    const r0 = pushRequest({ jobId: 'job-i', rank: 0, sums: values(1, 3) });
    expect(await push(f.client, r0)).toEqual({ ranksReceived: 1, centerReady: false });
    expect(await push(f.client, r0)).toEqual({ ranksReceived: 1, centerReady: false });
    expect(await push(f.client, pushRequest({ jobId: 'job-i', rank: 1, sums: values(2, 3) }))).toEqual({ ranksReceived: 2, centerReady: true });
    const before = await getCenter(f.client, 'job-i', 1);
    expect(await push(f.client, r0)).toEqual({ ranksReceived: 2, centerReady: true });
    const after = await getCenter(f.client, 'job-i', 1);
    expect(after).toEqual(before);
    expect(await f.server.registry.metrics()).toMatch(/^dinofleet_teacher_sync_centers_total 1$/m);
  });

  it('rejects malformed pushes with INVALID_ARGUMENT messages that say what is wrong', async () => {
    await using f = await startFixture();
    await push(f.client, pushRequest({ jobId: 'job-v', rank: 0, sums: values(1, 4) }));
    const cases: [PushFields, RegExp][] = [
      [{ rank: 1, sums: values(1, 5) }, /sums has 5 values, earlier pushes for the job had 4/],
      [{ rank: 1, sums: values(1, 4), count: 0 }, /count must be ≥ 1/],
      [{ rank: 0, sums: values(1, 4), worldSize: 0 }, /world_size must be ≥ 1, got 0/],
      [{ rank: 2, sums: values(1, 4) }, /rank 2 must be < world_size 2/],
      [{ rank: 1, sums: values(1, 4), centerMomentum: 1.5 }, /center_momentum must be in \[0, 1\], got 1.5/],
      [{ rank: 1, sums: values(1, 4), centerMomentum: Number.NaN }, /center_momentum must be in \[0, 1\], got NaN/],
      [{ rank: 1, sums: values(1, 4), worldSize: 3 }, /world_size 3 differs from 2/],
      [{ rank: 1, sums: values(1, 4), centerMomentum: 0.5 }, /center_momentum 0.5 differs from 0.9/],
      [{ rank: 1, sums: new Float32Array(0) }, /sums must not be empty/],
      [{ rank: 1, sums: values(1, 4), patchCount: 3 }, /patch_count is 3 but patch_sums is empty/],
      [{ rank: 1, sums: values(1, 4), jobId: '' }, /job_id must not be empty/],
      [{ rank: 1, sums: values(1, 4), baseCenter: values(1, 3) }, /base_center has 3 values, sums has 4; they must match/],
      [{ rank: 1, sums: values(1, 4), basePatchCenter: values(1, 2) }, /base_patch_center has 2 values, patch_sums has 0; they must match/],
      [{ rank: 1, step: 3, sums: values(1, 4) }, /step 3 rank 1: base_center is empty; every push after step 0 must carry the center its step used/],
    ];
    for (const [fields, message] of cases) {
      const err = await rejection(push(f.client, pushRequest({ jobId: 'job-v', ...fields })));
      expect(err.code, String(message)).toBe('INVALID_ARGUMENT');
      expect(err.message).toMatch(message);
    }
    const odd = { ...pushRequest({ jobId: 'job-v', rank: 1, sums: values(1, 4) }), sums: Buffer.alloc(7) };
    expect((await rejection(push(f.client, odd))).message).toMatch(/multiple of 4 bytes/);
    // None of that counted: rank 1's real push still completes the step.
    expect(await push(f.client, pushRequest({ jobId: 'job-v', rank: 1, sums: values(2, 4) }))).toEqual({ ranksReceived: 2, centerReady: true });
  });

  it('computes each center from the pushed base alone, in whatever order the steps arrive', async () => {
    await using f = await startFixture();
    const single = (step: number, seed: number, baseCenter?: Float32Array) =>
      pushRequest({ jobId: 'job-h', step, rank: 0, worldSize: 1, sums: values(seed, 3), ...(baseCenter !== undefined && { baseCenter }) });
    const center1 = updateCenter(new Float32Array(3), values(1, 3), 8, 0.9);
    const center2 = updateCenter(center1, values(2, 3), 8, 0.9);
    // Step 1 before step 0: its base says what center 1 is, so center 2 exists at once.
    expect(await push(f.client, single(1, 2, center1))).toEqual({ ranksReceived: 1, centerReady: true });
    expect(bits(centerOf(await getCenter(f.client, 'job-h', 2)))).toEqual(bits(center2));
    expect(await push(f.client, single(0, 1))).toEqual({ ranksReceived: 1, centerReady: true });
    expect(bits(centerOf(await getCenter(f.client, 'job-h', 1)))).toEqual(bits(center1));
    // Step 0 uses zeros once the job's shape is known.
    expect(bits(centerOf(await getCenter(f.client, 'job-h', 0)))).toEqual([0, 0, 0]);
  });

  it('refuses a push whose base differs from the other ranks with FAILED_PRECONDITION naming the ranks', async () => {
    await using f = await startFixture();
    const base = values(7, 4);
    const request = (rank: number, baseCenter: Float32Array) => pushRequest({ jobId: 'job-b', step: 5, worldSize: 3, rank, sums: values(rank, 4), baseCenter });
    await push(f.client, request(0, base));
    await push(f.client, request(2, base));
    const other = Float32Array.from(base);
    other[2] = (other[2] as number) + 1;
    const err = await rejection(push(f.client, request(1, other)));
    expect(err.code).toBe('FAILED_PRECONDITION');
    expect(err.message).toMatch(
      /job job-b generation 1 step 5 rank 1: base_center differs from the one ranks 0, 2 pushed for the step \(first difference at value 2: .+\); the ranks did not use the same center, so they are not in lock-step/,
    );
    // The refused push did not count: the step still waits for rank 1.
    expect(await push(f.client, request(1, base))).toEqual({ ranksReceived: 3, centerReady: true });
  });

  it('gives two generations that push the same step their own centers', async () => {
    await using f = await startFixture();
    const base = values(11, 4);
    // Generation 1 (two ranks) completes step 3, then fails; generation 2 (one rank) runs step 3 again.
    await push(f.client, pushRequest({ jobId: 'job-g', generation: 1, step: 3, rank: 0, sums: values(1, 4), baseCenter: base }));
    await push(f.client, pushRequest({ jobId: 'job-g', generation: 1, step: 3, rank: 1, sums: values(2, 4), baseCenter: base }));
    const waiting = getCenter(f.client, 'job-g', 4, DEADLINE_MS, 2);
    await push(f.client, pushRequest({ jobId: 'job-g', generation: 2, step: 3, rank: 0, worldSize: 1, count: 5, sums: values(3, 4), baseCenter: base }));

    const first = updateCenter(base, float32Sum([values(1, 4), values(2, 4)]), 16, 0.9);
    const second = updateCenter(base, values(3, 4), 5, 0.9);
    const got2 = await waiting;
    expect(got2.generation).toBe(2);
    expect(bits(centerOf(got2))).toEqual(bits(second));
    const got1 = await getCenter(f.client, 'job-g', 4, DEADLINE_MS, 1);
    expect(got1.generation).toBe(1);
    expect(bits(centerOf(got1))).toEqual(bits(first));
    // Generation 0: the newest generation's.
    expect(await getCenter(f.client, 'job-g', 4)).toEqual(got2);
    expect(await f.server.registry.metrics()).toMatch(/^dinofleet_teacher_sync_centers_total 2$/m);
  });

  it('refuses a stale generation with ABORTED, for pushes and for the center they would make', async () => {
    await using f = await startFixture();
    const base = values(5, 2);
    const request = (generation: number, rank: number) => pushRequest({ jobId: 'job-x', generation, step: 8, rank, sums: values(rank, 2), baseCenter: base });
    await push(f.client, request(1, 0));
    const waiting = rejection(getCenter(f.client, 'job-x', 9, DEADLINE_MS, 1));
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Generation 2 pushes step 8: generation 1 can no longer complete it.
    await push(f.client, request(2, 1));
    const waited = await waiting;
    expect(waited.code).toBe('ABORTED');
    expect(waited.message).toMatch(/center for step 9 of job job-x from generation 1 will not come: generation 2 has pushed step 8 since/);
    const pushed = await rejection(push(f.client, request(1, 1)));
    expect(pushed.code).toBe('ABORTED');
    expect(pushed.message).toMatch(/job job-x generation 1 step 8 rank 1: generation 2 has pushed step 8 since, so generation 1 is over/);
    expect((await rejection(getCenter(f.client, 'job-x', 9, DEADLINE_MS, 1))).code).toBe('ABORTED');
    // Generation 2 goes on undisturbed: rank 0's push completes its step.
    expect(await push(f.client, request(2, 0))).toEqual({ ranksReceived: 2, centerReady: true });
    expect((await getCenter(f.client, 'job-x', 9, DEADLINE_MS, 2)).generation).toBe(2);
    const metrics = await f.server.registry.metrics();
    expect(metrics).toMatch(/^dinofleet_teacher_sync_stale_pushes_total 1$/m);
    expect(metrics).toMatch(/^dinofleet_teacher_sync_pushes_total 3$/m);
  });

  it('after a restart on the same port, gives the same center as an uninterrupted teacher-sync once the ranks push again', async () => {
    const dims = 16;
    const sums = (step: number, rank: number) => values(10 * step + rank + 1, dims);
    const patchSums = (step: number, rank: number) => values(100 + 10 * step + rank, 3);
    const request = (step: number, rank: number, baseCenter: Float32Array, basePatchCenter: Float32Array) =>
      pushRequest({ jobId: 'job-r', step, rank, sums: sums(step, rank), count: 4 + rank, patchSums: float32ToBytes(patchSums(step, rank)), patchCount: 3, baseCenter, basePatchCenter });
    /** Runs steps 0..2 on both ranks, each step's base being the center teacher-sync gave for it. */
    const run = async (client: TeacherSyncClient, restartBeforeStep2?: () => Promise<TeacherSyncClient>) => {
      let center: Float32Array = new Float32Array(dims);
      let patch: Float32Array = new Float32Array(3);
      for (let step = 0; step < 3; step++) {
        await push(client, request(step, 0, center, patch));
        if (step === 2 && restartBeforeStep2 !== undefined) {
          // Rank 0's push is lost with the old process; the new one knows nothing.
          client = await restartBeforeStep2();
          expect((await rejection(getCenter(client, 'job-r', 3, 300))).code).toBe('DEADLINE_EXCEEDED');
          await push(client, request(step, 0, center, patch));
        }
        await push(client, request(step, 1, center, patch));
        const next = await getCenter(client, 'job-r', step + 1);
        center = centerOf(next);
        patch = float32FromBytes(next.patchCenter, 'patch');
      }
      return { center, patch };
    };

    let uninterrupted;
    {
      await using f = await startFixture();
      uninterrupted = await run(f.client);
    }
    const first = await startFixture();
    const port = first.server.grpcAddress.split(':').at(-1) as string;
    let second: Fixture | undefined;
    try {
      const restarted = await run(first.client, async () => {
        await first[Symbol.asyncDispose]();
        second = await startFixture({ listen: `127.0.0.1:${port}` });
        expect(second.server.grpcAddress).toBe(first.server.grpcAddress);
        return second.client;
      });
      expect(bits(restarted.center)).toEqual(bits(uninterrupted.center));
      expect(bits(restarted.patch)).toEqual(bits(uninterrupted.patch));
    } finally {
      await first[Symbol.asyncDispose]();
      await second?.[Symbol.asyncDispose]();
    }
  });

  it('WatchCenters sends the kept centers, then each new one', async () => {
    await using f = await startFixture();
    const single = (step: number, seed: number) => pushRequest({ jobId: 'job-s', step, rank: 0, worldSize: 1, sums: values(seed, 2), baseCenter: values(seed + 50, 2) });
    await push(f.client, single(0, 1));
    await push(f.client, single(1, 2));
    const stream = f.client.watchCenters({ jobId: 'job-s', fromStep: 2 }, { deadline: Date.now() + DEADLINE_MS });
    const seen: WatchCentersResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (message: WatchCentersResponse) => {
        seen.push(message);
        if (seen.length === 3) resolve();
      });
      stream.on('error', (err) => reject(fromServiceError(err)));
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    await push(f.client, single(2, 3));
    await push(f.client, single(3, 4));
    await done;
    stream.cancel();
    expect(seen.map((m) => m.step)).toEqual([2, 3, 4]);
    expect(seen[2]?.center).toEqual((await getCenter(f.client, 'job-s', 4)).center);
  });

  it('on close, a waiting GetCenter fails with UNAVAILABLE instead of holding the drain', async () => {
    const f = await startFixture();
    const waiting = rejection(getCenter(f.client, 'job-c', 9));
    await new Promise((resolve) => setTimeout(resolve, 100));
    const started = Date.now();
    await f.server.close();
    expect(Date.now() - started).toBeLessThan(900);
    expect((await waiting).code).toBe('UNAVAILABLE');
    f.client.close();
  });
});

describe('teacher-sync snapshots', () => {
  const snapshotBytes = encodeSafetensors({ 'teacher/w': { shape: [3, 100_000], data: values(7, 300_000) } });
  const sha256 = createHash('sha256').update(snapshotBytes).digest();
  const header = (fields: Partial<TeacherSnapshotHeader> = {}): TeacherSnapshotHeader => ({
    jobId: 'job-snap',
    generation: 1,
    step: 50,
    sizeBytes: snapshotBytes.length,
    sha256,
    format: 'safetensors',
    storeUri: '',
    verified: false,
    ...fields,
  });

  it('round-trips a snapshot through gRPC and writes it to S3', async () => {
    await using f = await startFixture();
    const storeUri = `s3://${s3.bucket}/ckpt/job-snap/`;
    expect(snapshotBytes.length).toBeGreaterThan(SNAPSHOT_CHUNK_BYTES);
    const stored = await putSnapshot(f.client, snapshotMessages(header({ storeUri }), snapshotBytes));
    expect(stored).toEqual({ step: 50, sizeBytes: snapshotBytes.length });

    const latest = await getSnapshot(f.client, 'job-snap', 0);
    expect(latest.header).toMatchObject({ jobId: 'job-snap', generation: 1, step: 50, sizeBytes: snapshotBytes.length, format: 'safetensors', storeUri });
    expect(latest.header.sha256.equals(sha256)).toBe(true);
    expect(latest.bytes.equals(snapshotBytes)).toBe(true);
    expect((await getSnapshot(f.client, 'job-snap', 50)).bytes.equals(snapshotBytes)).toBe(true);

    const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: 'ckpt/job-snap/teacher/step-00000050.safetensors' }));
    expect(Buffer.from(await (object.Body as NonNullable<typeof object.Body>).transformToByteArray()).equals(snapshotBytes)).toBe(true);

    // Two are kept: after steps 100 and 150, step 50 is gone and 0 means 150.
    const small = new Uint8Array([1, 2, 3]);
    const smallSha = createHash('sha256').update(small).digest();
    for (const step of [100, 150]) await putSnapshot(f.client, snapshotMessages(header({ step, sizeBytes: 3, sha256: smallSha }), small));
    expect((await getSnapshot(f.client, 'job-snap', 0)).header.step).toBe(150);
    expect((await rejection(getSnapshot(f.client, 'job-snap', 50))).code).toBe('NOT_FOUND');
    const metrics = await f.server.registry.metrics();
    expect(metrics).toMatch(/^dinofleet_teacher_sync_snapshots_total 3$/m);
    expect(metrics).toMatch(/^dinofleet_teacher_sync_snapshot_bytes 3$/m);
  });

  it('rejects a SHA-256 mismatch with DATA_LOSS and stores nothing', async () => {
    await using f = await startFixture();
    const storeUri = `s3://${s3.bucket}/bad/`;
    const wrong = Buffer.from(sha256);
    wrong[0] = (wrong[0] as number) ^ 0xff;
    const err = await rejection(putSnapshot(f.client, snapshotMessages(header({ sha256: wrong, storeUri }), snapshotBytes)));
    expect(err.code).toBe('DATA_LOSS');
    expect(err.message).toMatch(/SHA-256 of the bytes is [0-9a-f]{64}, the header says [0-9a-f]{64}; nothing was stored/);
    expect((await rejection(getSnapshot(f.client, 'job-snap', 0))).code).toBe('NOT_FOUND');
    const listing = await s3.client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: 'bad/' }));
    expect(listing.Contents ?? []).toEqual([]);
    expect(await f.server.registry.metrics()).toMatch(/^dinofleet_teacher_sync_snapshots_total 0$/m);
  });

  it('rejects short, long, out-of-order, oversized and headless uploads', async () => {
    await using f = await startFixture({ maxSnapshotBytes: 1000 });
    const bytes = new Uint8Array(600).fill(7);
    const h = header({ sizeBytes: 600, sha256: createHash('sha256').update(bytes).digest() });
    const messages = snapshotMessages(h, bytes, 200);
    const cases: [PutTeacherSnapshotRequest[], string, RegExp][] = [
      [messages.slice(0, 3), 'INVALID_ARGUMENT', /ended after 400 of 600 bytes/],
      [[...messages, messages[1] as PutTeacherSnapshotRequest], 'INVALID_ARGUMENT', /chunk at offset 0, expected 600/],
      [[messages[0] as PutTeacherSnapshotRequest, messages[2] as PutTeacherSnapshotRequest], 'INVALID_ARGUMENT', /chunk at offset 200, expected 0/],
      [messages.slice(1), 'INVALID_ARGUMENT', /first PutTeacherSnapshot message must be the header/],
      [snapshotMessages(header({ sizeBytes: 5000 }), new Uint8Array(0)), 'RESOURCE_EXHAUSTED', /5000 bytes exceed teacher-sync's limit of 1000/],
      [snapshotMessages(header({ sha256: Buffer.alloc(3), sizeBytes: 0 }), new Uint8Array(0)), 'INVALID_ARGUMENT', /sha256 must be 32 bytes/],
      [snapshotMessages(header({ format: 'npz', sizeBytes: 0 }), new Uint8Array(0)), 'INVALID_ARGUMENT', /format must be "safetensors"/],
      [snapshotMessages(header({ storeUri: 'gs://x/', sizeBytes: 0 }), new Uint8Array(0)), 'INVALID_ARGUMENT', /store_uri "gs:\/\/x\/" must look like s3:\/\/bucket\/prefix\//],
    ];
    for (const [stream, code, message] of cases) {
      const err = await rejection(putSnapshot(f.client, stream));
      expect(err.code, String(message)).toBe(code);
      expect(err.message).toMatch(message);
    }
    expect((await rejection(getSnapshot(f.client, 'job-snap', 0))).code).toBe('NOT_FOUND');
  });
});

describe('teacher-sync attestations', () => {
  /** A small snapshot per step, with its SHA-256. */
  const snapshotOf = (step: number): { bytes: Uint8Array; sha256: Buffer } => {
    const bytes = encodeSafetensors({ 'backbone.w': { shape: [4, 8], data: values(step, 32) } }, { jobId: 'job-att', step: String(step) });
    return { bytes, sha256: createHash('sha256').update(bytes).digest() };
  };
  const upload = (client: TeacherSyncClient, step: number, jobId = 'job-att', bytes = snapshotOf(step).bytes) =>
    putSnapshot(
      client,
      snapshotMessages(
        {
          jobId,
          generation: 1,
          step,
          sizeBytes: bytes.length,
          sha256: createHash('sha256').update(bytes).digest(),
          format: 'safetensors',
          storeUri: '',
          verified: false,
        },
        bytes,
      ),
    );
  const attest = (client: TeacherSyncClient, fields: Partial<AttestTeacherRequest> & { step: number; rank: number }): Promise<AttestTeacherResponse> =>
    callUnary(
      client,
      'attestTeacher',
      { jobId: 'job-att', generation: 1, worldSize: 2, sha256: snapshotOf(fields.step).sha256, ...fields },
      { deadlineMs: DEADLINE_MS },
    );
  const metric = async (f: Fixture, name: string): Promise<number> => {
    const match = new RegExp(`^dinofleet_teacher_sync_${name} (\\d+)$`, 'm').exec(await f.server.registry.metrics());
    return Number(match?.[1]);
  };

  it('verifies a snapshot once every rank attested its hash after the upload, and says so in the streamed header', async () => {
    await using f = await startFixture();
    await upload(f.client, 50);
    expect((await getSnapshot(f.client, 'job-att', 50)).header.verified).toBe(false);
    expect(await attest(f.client, { step: 50, rank: 1 })).toEqual({ ranksAttested: 1, verified: false });
    expect((await getSnapshot(f.client, 'job-att', 0)).header.verified).toBe(false);
    expect(await attest(f.client, { step: 50, rank: 0 })).toEqual({ ranksAttested: 2, verified: true });
    for (const step of [0, 50]) {
      const { header, bytes } = await getSnapshot(f.client, 'job-att', step);
      expect(header).toMatchObject({ step: 50, verified: true });
      expect(bytes.equals(snapshotOf(50).bytes)).toBe(true);
    }
    // A repeated attestation is idempotent and verifies nothing twice.
    expect(await attest(f.client, { step: 50, rank: 0 })).toEqual({ ranksAttested: 2, verified: true });
    expect(await metric(f, 'snapshots_verified_total')).toBe(1);
    expect(await metric(f, 'snapshot_mismatches_total')).toBe(0);
    expect(await metric(f, 'attestations_total')).toBe(3);
  });

  it('verifies a snapshot whose attestations all came before the upload', async () => {
    await using f = await startFixture();
    expect(await attest(f.client, { step: 100, rank: 0, worldSize: 3 })).toEqual({ ranksAttested: 1, verified: false });
    expect(await attest(f.client, { step: 100, rank: 2, worldSize: 3 })).toEqual({ ranksAttested: 2, verified: false });
    expect(await attest(f.client, { step: 100, rank: 1, worldSize: 3 })).toEqual({ ranksAttested: 3, verified: false });
    expect(await metric(f, 'snapshots_verified_total')).toBe(0);
    await upload(f.client, 100);
    expect((await getSnapshot(f.client, 'job-att', 0)).header).toMatchObject({ step: 100, verified: true });
    expect(await metric(f, 'snapshots_verified_total')).toBe(1);
  });

  it('rejects a snapshot a rank disagrees with: its step fails with DATA_LOSS and the latest falls back to the verified one', async () => {
    const lines: string[] = [];
    await using f = await startFixture({ logger: createLogger({ name: 'teacher-sync', level: LogLevel.Error, stream: { write: (line: string) => lines.push(line) } }) });
    await upload(f.client, 50);
    await attest(f.client, { step: 50, rank: 0 });
    expect(await attest(f.client, { step: 50, rank: 1 })).toEqual({ ranksAttested: 2, verified: true });

    // Step 100: rank 1's teacher encodes to other bytes than the uploaded ones (rank 0's).
    await upload(f.client, 100);
    const other = createHash('sha256').update('another teacher').digest();
    expect(await attest(f.client, { step: 100, rank: 0 })).toEqual({ ranksAttested: 1, verified: false });
    expect(await attest(f.client, { step: 100, rank: 1, sha256: other })).toEqual({ ranksAttested: 2, verified: false });

    const latest = await getSnapshot(f.client, 'job-att', 0);
    expect(latest.header).toMatchObject({ step: 50, verified: true });
    expect(latest.bytes.equals(snapshotOf(50).bytes)).toBe(true);
    const prefix = (sha256: Buffer): string => sha256.toString('hex').slice(0, 8);
    const err = await rejection(getSnapshot(f.client, 'job-att', 100));
    expect(err.code).toBe('DATA_LOSS');
    expect(err.message).toContain(
      `step 100 was rejected: the ranks' attested SHA-256s do not match it (snapshot ${prefix(snapshotOf(100).sha256)}…; generation 1 rank 0: ${prefix(snapshotOf(100).sha256)}…, rank 1: ${prefix(other)}…)`,
    );
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0] as string)).toMatchObject({
      level: 'error',
      msg: expect.stringMatching(/^teacher snapshot rejected/) as unknown,
      job: 'job-att',
      step: 100,
      hashes: `snapshot ${prefix(snapshotOf(100).sha256)}…; generation 1 rank 0: ${prefix(snapshotOf(100).sha256)}…, rank 1: ${prefix(other)}…`,
    });

    // Step 150: the ranks agree with each other, but the uploaded bytes are not their teacher.
    const corrupt = Uint8Array.from(snapshotOf(150).bytes);
    corrupt[corrupt.length - 1] = (corrupt[corrupt.length - 1] as number) ^ 1;
    await attest(f.client, { step: 150, rank: 0 });
    await attest(f.client, { step: 150, rank: 1 });
    await upload(f.client, 150, 'job-att', corrupt);
    expect((await rejection(getSnapshot(f.client, 'job-att', 150))).message).toMatch(/generation 1 ranks 0, 1: [0-9a-f]{8}…\)/);
    expect((await getSnapshot(f.client, 'job-att', 0)).header).toMatchObject({ step: 50, verified: true });
    expect(await metric(f, 'snapshots_verified_total')).toBe(1);
    expect(await metric(f, 'snapshot_mismatches_total')).toBe(2);

    // A new upload of the step is checked again against the attestations it has.
    await upload(f.client, 150);
    expect((await getSnapshot(f.client, 'job-att', 0)).header).toMatchObject({ step: 150, verified: true });
    expect(await metric(f, 'snapshots_verified_total')).toBe(2);
  });

  it('counts one generation per step: a later one starts over, an earlier one is ignored', async () => {
    await using f = await startFixture();
    await upload(f.client, 50);
    expect(await attest(f.client, { step: 50, rank: 0, generation: 1 })).toEqual({ ranksAttested: 1, verified: false });
    // Generation 2 runs the step again with one rank (its world size is its own).
    expect(await attest(f.client, { step: 50, rank: 0, generation: 2, worldSize: 1 })).toEqual({ ranksAttested: 1, verified: true });
    expect(await attest(f.client, { step: 50, rank: 1, generation: 1, sha256: Buffer.alloc(32) })).toEqual({ ranksAttested: 0, verified: true });
    expect((await getSnapshot(f.client, 'job-att', 50)).header.verified).toBe(true);
  });

  const storedHeader = (step: number, storeUri: string): TeacherSnapshotHeader => ({
    jobId: 'job-att',
    generation: 1,
    step,
    sizeBytes: snapshotOf(step).bytes.length,
    sha256: snapshotOf(step).sha256,
    format: 'safetensors',
    storeUri,
    verified: false,
  });
  const uploadStored = (client: TeacherSyncClient, step: number, storeUri: string) =>
    putSnapshot(client, snapshotMessages(storedHeader(step, storeUri), snapshotOf(step).bytes));

  it('with nothing in memory, serves the newest snapshot under the store_uri that was not rejected', async () => {
    await using f = await startFixture({ keptSnapshots: 1 });
    const storeUri = `s3://${s3.bucket}/readback/job-att/`;
    await uploadStored(f.client, 50, storeUri);
    await attest(f.client, { step: 50, rank: 0 });
    await attest(f.client, { step: 50, rank: 1 });
    await uploadStored(f.client, 100, storeUri);
    // Rank 1 disagrees at step 100: the only snapshot in memory is dropped.
    await attest(f.client, { step: 100, rank: 0 });
    await attest(f.client, { step: 100, rank: 1, sha256: createHash('sha256').update('another teacher').digest() });

    for (const step of [0, 50]) {
      const { header, bytes } = await getSnapshot(f.client, 'job-att', step);
      expect(header).toMatchObject({ jobId: 'job-att', generation: 1, step: 50, storeUri, verified: true, sizeBytes: bytes.length });
      expect(header.sha256.equals(snapshotOf(50).sha256)).toBe(true);
      expect(bytes.equals(snapshotOf(50).bytes)).toBe(true);
    }
    expect((await rejection(getSnapshot(f.client, 'job-att', 100))).code).toBe('DATA_LOSS');
    expect((await rejection(getSnapshot(f.client, 'job-att', 150))).message).toMatch(/no teacher snapshot for step 150 of job job-att \(.*and none under s3:/);
  });

  it('after a restart knows no store_uri until an upload names one, and then reads S3 even when that upload broke off', async () => {
    const storeUri = `s3://${s3.bucket}/restart/job-att/`;
    {
      await using before = await startFixture();
      await uploadStored(before.client, 50, storeUri);
    }
    await using f = await startFixture();
    expect((await rejection(getSnapshot(f.client, 'job-att', 0))).code).toBe('NOT_FOUND');
    const headerOnly = snapshotMessages(storedHeader(100, storeUri), snapshotOf(100).bytes).slice(0, 1);
    expect((await rejection(putSnapshot(f.client, headerOnly))).message).toMatch(/ended after 0 of \d+ bytes/);
    const { header, bytes } = await getSnapshot(f.client, 'job-att', 0);
    expect(header).toMatchObject({ step: 50, storeUri, verified: false });
    expect(bytes.equals(snapshotOf(50).bytes)).toBe(true);
    // The next upload puts one in memory again, and that one is served.
    await uploadStored(f.client, 100, storeUri);
    expect((await getSnapshot(f.client, 'job-att', 0)).header.step).toBe(100);
  });

  it('rejects malformed attestations with INVALID_ARGUMENT messages that say what is wrong', async () => {
    await using f = await startFixture();
    await attest(f.client, { step: 50, rank: 0 });
    const cases: [Partial<AttestTeacherRequest> & { step: number; rank: number }, RegExp][] = [
      [{ step: 50, rank: 1, sha256: Buffer.alloc(31) }, /sha256 must be 32 bytes \(the SHA-256 of the encoded snapshot\), got 31/],
      [{ step: 50, rank: 2 }, /rank 2 must be < world_size 2/],
      [{ step: 50, rank: 0, worldSize: 0 }, /world_size must be ≥ 1, got 0/],
      [{ step: 50, rank: 1, worldSize: 3 }, /world_size 3 differs from 2 in the generation's earlier attestations of the step/],
      [{ step: 50, rank: 0, sha256: Buffer.alloc(32, 1) }, /rank 0: the rank already attested SHA-256 [0-9a-f]{8}…, now 01010101…; a rank attests one hash per step/],
      [{ step: 0, rank: 0 }, /step must be ≥ 1/],
      [{ step: 50, rank: 1, jobId: '' }, /job_id must not be empty/],
    ];
    for (const [fields, message] of cases) {
      const err = await rejection(attest(f.client, fields));
      expect(err.code, String(message)).toBe('INVALID_ARGUMENT');
      expect(err.message).toMatch(message);
    }
    // None of that counted: rank 1's real attestation completes the step.
    expect(await attest(f.client, { step: 50, rank: 1 })).toEqual({ ranksAttested: 2, verified: false });
    expect(await metric(f, 'attestations_total')).toBe(2);
  });
});

describe('teacher-sync server', () => {
  it('serves health for the server and TeacherSync, and /metrics', async () => {
    await using f = await startFixture();
    const health = createClient(HealthClient, f.server.grpcAddress);
    try {
      for (const service of ['', 'dinofleet.v1.TeacherSync']) {
        expect((await callUnary(health, 'check', { service }, { deadlineMs: DEADLINE_MS })).status).toBe(ServingStatus.SERVING);
      }
    } finally {
      health.close();
    }
    const response = await fetch(`http://${f.server.metricsAddress}/metrics`);
    const text = await response.text();
    for (const name of ['pushes_total', 'centers_total', 'stale_pushes_total', 'snapshots_total', 'snapshot_bytes', 'attestations_total', 'snapshots_verified_total', 'snapshot_mismatches_total']) {
      expect(text).toContain(`dinofleet_teacher_sync_${name}`);
    }
  });
});
