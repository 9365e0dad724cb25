import { updateCenter } from '@dinofleet/dino';
import { AbortedError, GrpcServer, INSECURE, TeacherSyncService, toServiceError, UnavailableError, UnimplementedError, unaryHandler } from '@dinofleet/proto';
import type { GetCenterResponse, PushTeacherSumsRequest, TeacherSyncServer } from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';

import { bytesToFloat32, float32ToBytes, TeacherSyncConnection } from './teacher-sync-client.ts';
import type { TeacherSumsPush } from './teacher-sync-client.ts';

/**
 * A teacher-sync with nothing but the center rule, in memory, so a restart loses every
 * push: center(g, s+1) = updateCenter(base, Σ sums, Σ count, m) once `world_size` ranks of
 * g pushed step s. Job `stale` answers GetCenter with ABORTED.
 */
interface CenterServer extends AsyncDisposable {
  readonly address: string;
  readonly pushes: PushTeacherSumsRequest[];
  close(): Promise<void>;
}

async function startCenterServer(listen = '127.0.0.1:0'): Promise<CenterServer> {
  const pushes: PushTeacherSumsRequest[] = [];
  const centers = new Map<string, GetCenterResponse>();
  const waiters = new Set<() => void>();
  const implementation: TeacherSyncServer = {
    pushTeacherSums: unaryHandler((request: PushTeacherSumsRequest) => {
      pushes.push(request);
      const same = new Map<number, PushTeacherSumsRequest>();
      for (const p of pushes) if (p.jobId === request.jobId && p.generation === request.generation && p.step === request.step) same.set(p.rank, p);
      const ready = same.size === request.worldSize;
      const key = `${request.jobId}/${request.generation}/${request.step + 1}`;
      if (ready && !centers.has(key)) {
        const ranks = [...same.entries()].sort(([a], [b]) => a - b).map(([, p]) => p);
        const total = new Float32Array(request.sums.length / 4);
        for (const p of ranks) {
          const sums = bytesToFloat32(p.sums);
          for (let i = 0; i < total.length; i++) total[i] = (total[i] as number) + (sums[i] as number);
        }
        const count = ranks.reduce((n, p) => n + p.count, 0);
        const center = updateCenter(bytesToFloat32(request.baseCenter), total, count, request.centerMomentum);
        centers.set(key, { step: request.step + 1, generation: request.generation, center: float32ToBytes(center), patchCenter: Buffer.alloc(0) });
        for (const wake of [...waiters]) wake();
      }
      return Promise.resolve({ ranksReceived: same.size, centerReady: ready });
    }),
    getCenter: unaryHandler(async (request, call) => {
      if (request.jobId === 'stale') throw new AbortedError(`generation ${request.generation} is over`);
      for (;;) {
        const found = centers.get(`${request.jobId}/${request.generation}/${request.step}`);
        if (found !== undefined) return found;
        if (closing) throw new UnavailableError('shutting down');
        if (call.cancelled) throw new UnavailableError('cancelled');
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            clearTimeout(timer);
            waiters.delete(wake);
            resolve();
          };
          const timer = setTimeout(wake, 20);
          waiters.add(wake);
        });
      }
    }),
    watchCenters: unimplemented,
    getTeacherSnapshot: unimplemented,
    putTeacherSnapshot: unimplemented,
    attestTeacher: unimplemented,
  };
  let closing = false;
  const server = new GrpcServer({ address: listen });
  server.addService(TeacherSyncService, implementation);
  const { address } = await server.start();
  const close = (): Promise<void> => {
    // Like teacher-sync: waiting GetCenters fail with UNAVAILABLE, then the server stops.
    closing = true;
    for (const wake of [...waiters]) wake();
    return server.close(200);
  };
  return { address, pushes, close, [Symbol.asyncDispose]: close };
}

function unimplemented(call: { emit(event: 'error', err: Error): boolean }): void {
  call.emit('error', toServiceError(new UnimplementedError('not in this test server')));
}

function portOf(address: string): string {
  return address.slice(address.lastIndexOf(':') + 1);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function pushOf(rank: number, fields: Partial<TeacherSumsPush> = {}): TeacherSumsPush {
  return {
    jobId: 'job',
    generation: 2,
    step: 4,
    rank,
    worldSize: 2,
    centerMomentum: 0.9,
    sums: new Float32Array([rank + 1, 2 * rank - 3, 0.125]),
    count: 3 + rank,
    patchSums: null,
    patchCount: 0,
    baseCenter: new Float32Array([0.5, -0.25, 1]),
    basePatchCenter: null,
    ...fields,
  };
}

const EXPECTED = updateCenter(new Float32Array([0.5, -0.25, 1]), new Float32Array([1 + 2, -3 - 1, 0.25]), 7, 0.9);

describe('TeacherSyncConnection', () => {
  it('sends the base centers with the sums', async () => {
    await using server = await startCenterServer();
    const connection = new TeacherSyncConnection({ security: INSECURE, address: server.address });
    try {
      const patch = { patchSums: new Float32Array([1, 2]), patchCount: 2, basePatchCenter: new Float32Array([3, 4]) };
      expect(await connection.pushTeacherSums(pushOf(0, patch))).toEqual({ ranksReceived: 1, centerReady: false });
      const sent = server.pushes[0] as PushTeacherSumsRequest;
      expect(bytesToFloat32(sent.baseCenter)).toEqual(new Float32Array([0.5, -0.25, 1]));
      expect(bytesToFloat32(sent.basePatchCenter)).toEqual(new Float32Array([3, 4]));
      expect(bytesToFloat32(sent.patchSums)).toEqual(new Float32Array([1, 2]));
    } finally {
      connection.close();
    }
  });

  it('getCenter rides out a teacher-sync restart on the same port, pushing again, and gets the center', async () => {
    const first = await startCenterServer();
    const address = first.address;
    const rank0 = new TeacherSyncConnection({ security: INSECURE, address, getCenterTimeoutMs: 500, teacherSyncWaitMs: 10_000 });
    const rank1 = new TeacherSyncConnection({ security: INSECURE, address, teacherSyncWaitMs: 10_000 });
    let second: CenterServer | undefined;
    try {
      await rank0.pushTeacherSums(pushOf(0));
      let repushes = 0;
      const repush = (): Promise<unknown> => {
        repushes++;
        return rank0.pushTeacherSums(pushOf(0));
      };
      const center = rank0.getCenter('job', 5, { generation: 2, repush });
      // The first attempt is waiting at the first teacher-sync when it goes away with
      // rank 0's push; the new one comes back on the same port knowing nothing.
      await sleep(200);
      await first.close();
      await sleep(700);
      second = await startCenterServer(`127.0.0.1:${portOf(address)}`);
      await rank1.pushTeacherSums(pushOf(1));

      const got = await center;
      expect(got).toMatchObject({ step: 5, generation: 2, patchCenter: null });
      expect(got.center).toEqual(EXPECTED);
      expect(repushes).toBeGreaterThanOrEqual(1);
      expect(second.pushes.some((p) => p.rank === 0)).toBe(true);
    } finally {
      rank0.close();
      rank1.close();
      await first.close();
      await second?.close();
    }
  });

  it('pushTeacherSums retries until a teacher-sync listens again', async () => {
    const first = await startCenterServer();
    const address = first.address;
    await first.close();
    const connection = new TeacherSyncConnection({ security: INSECURE, address, teacherSyncWaitMs: 10_000 });
    let second: CenterServer | undefined;
    try {
      const pushed = connection.pushTeacherSums(pushOf(0));
      await sleep(500);
      second = await startCenterServer(`127.0.0.1:${portOf(address)}`);
      expect(await pushed).toEqual({ ranksReceived: 1, centerReady: false });
    } finally {
      connection.close();
      await second?.close();
    }
  });

  it('getCenter gives up after teacherSyncWaitMs with an error that names teacher-sync and the step', async () => {
    await using server = await startCenterServer();
    const connection = new TeacherSyncConnection({ security: INSECURE, address: server.address, getCenterTimeoutMs: 200, teacherSyncWaitMs: 1_500 });
    try {
      let repushes = 0;
      const started = Date.now();
      // Rank 1 never pushes: every attempt times out at teacher-sync, each followed by a push again.
      const err = await connection
        .getCenter('job', 5, { generation: 2, repush: () => (repushes++, connection.pushTeacherSums(pushOf(0))) })
        .catch((e: unknown) => e);
      const elapsedMs = Date.now() - started;
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toMatch(new RegExp(`^teacher-sync at ${server.address} gave no center for step 5 within 1.5 s: .*[Dd]eadline`));
      expect(elapsedMs).toBeGreaterThanOrEqual(1_000);
      expect(elapsedMs).toBeLessThan(3_000);
      expect(repushes).toBeGreaterThanOrEqual(2);
    } finally {
      connection.close();
    }
  });

  it('getCenter gives up the same way when no teacher-sync listens at all', async () => {
    const gone = await startCenterServer();
    await gone.close();
    const connection = new TeacherSyncConnection({ security: INSECURE, address: gone.address, teacherSyncWaitMs: 1_000 });
    try {
      const err = await connection.getCenter('job', 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toMatch(new RegExp(`^teacher-sync at ${gone.address} gave no center for step 1 within 1 s: `));
    } finally {
      connection.close();
    }
  });

  it('getCenter passes ABORTED through at once, and so does a repush that fails that way', async () => {
    await using server = await startCenterServer();
    const connection = new TeacherSyncConnection({ security: INSECURE, address: server.address, getCenterTimeoutMs: 200 });
    try {
      let repushes = 0;
      const stale = connection.getCenter('stale', 5, { generation: 1, repush: () => Promise.resolve(repushes++) });
      await expect(stale).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringContaining('generation 1 is over') as unknown });
      expect(repushes).toBe(0);
      const refused = connection.getCenter('job', 5, { generation: 2, repush: () => Promise.reject(new AbortedError('a newer generation pushed step 4')) });
      await expect(refused).rejects.toThrow('a newer generation pushed step 4');
    } finally {
      connection.close();
    }
  });

  it('stops getCenter and pushTeacherSums when their signal aborts', async () => {
    await using server = await startCenterServer();
    const connection = new TeacherSyncConnection({ security: INSECURE, address: server.address });
    const gone = await startCenterServer();
    await gone.close();
    const unreachable = new TeacherSyncConnection({ security: INSECURE, address: gone.address });
    try {
      const controller = new AbortController();
      const started = Date.now();
      const center = connection.getCenter('job', 5, { generation: 2, signal: controller.signal });
      const push = unreachable.pushTeacherSums({ ...pushOf(0), signal: controller.signal });
      await sleep(300);
      controller.abort(new Error('generation 2 aborted'));
      await expect(center).rejects.toThrow('generation 2 aborted');
      await expect(push).rejects.toThrow('generation 2 aborted');
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      connection.close();
      unreachable.close();
    }
  });
});
