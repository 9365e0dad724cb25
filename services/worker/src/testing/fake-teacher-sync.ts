/**
 * Test-only: a tiny TeacherSync server with teacher-sync's center rule (docs/cluster.md,
 * "teacher-sync (changes)"): the center of (generation g, step s+1) =
 * updateCenter(base_center, Σ_r sums_r, Σ_r count_r, m) over the ranks of g pushing step s,
 * summing ranks in rank order in float32. GetCenter waits for the asked generation's
 * center (0: the newest). Snapshots and the ranks' attestations are kept in memory.
 */
import { createHash } from 'node:crypto';
import { updateCenter } from '@dinofleet/dino';
import {
  DataLossError,
  DeadlineExceededError,
  GrpcServer,
  INSECURE,
  InvalidArgumentError,
  TeacherSyncService,
  serverCredentials,
  toServiceError,
  unaryHandler,
} from '@dinofleet/proto';
import type {
  TransportSecurity,
  AttestTeacherRequest,
  PushTeacherSumsRequest,
  PutTeacherSnapshotRequest,
  TeacherSnapshotHeader,
  TeacherSyncServer,
} from '@dinofleet/proto';
import { bytesToFloat32, float32ToBytes } from '../teacher-sync-client.ts';

/** A received snapshot. */
export interface FakeSnapshot {
  readonly header: TeacherSnapshotHeader;
  readonly bytes: Buffer;
}

/** The fake's server and what it saw. */
export interface FakeTeacherSync extends AsyncDisposable {
  readonly address: string;
  /** The newest center of each step. */
  readonly centers: Map<number, { center: Float32Array; patch: Float32Array | null; generation: number }>;
  readonly pushes: PushTeacherSumsRequest[];
  readonly snapshots: FakeSnapshot[];
  /** Every AttestTeacher call, in arrival order. */
  readonly attestations: AttestTeacherRequest[];
  close(): Promise<void>;
}

function sumInRankOrder(pushes: readonly PushTeacherSumsRequest[], pick: (p: PushTeacherSumsRequest) => Buffer): Float32Array {
  const vectors = pushes.map((p) => bytesToFloat32(pick(p)));
  const out = new Float32Array(vectors[0]?.length ?? 0);
  // Float32Array stores round every partial sum to float32.
  for (const v of vectors) for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) + (v[i] as number);
  return out;
}

/** Settings of the fake's server. */
export interface FakeTeacherSyncOptions {
  /** As teacher-sync's port: under mTLS only clients with a fleet certificate connect. @default INSECURE */
  security?: TransportSecurity;
}

/** Starts the fake on 127.0.0.1:0. */
export async function startFakeTeacherSync(options: FakeTeacherSyncOptions = {}): Promise<FakeTeacherSync> {
  const centers = new Map<number, { center: Float32Array; patch: Float32Array | null; generation: number }>();
  /** Centers by `${generation}/${step}`. */
  const byGeneration = new Map<string, { center: Float32Array; patch: Float32Array | null; generation: number }>();
  const pending = new Map<string, Map<number, PushTeacherSumsRequest>>();
  const pushes: PushTeacherSumsRequest[] = [];
  const snapshots: FakeSnapshot[] = [];
  const attestations: AttestTeacherRequest[] = [];
  const waiters = new Set<() => void>();
  const notify = (): void => {
    for (const w of [...waiters]) w();
  };

  const implementation: TeacherSyncServer = {
    pushTeacherSums: unaryHandler(async (request: PushTeacherSumsRequest) => {
      pushes.push(request);
      const key = `${request.generation}/${request.step}`;
      const ranks = pending.get(key) ?? new Map<number, PushTeacherSumsRequest>();
      pending.set(key, ranks);
      ranks.set(request.rank, request);
      const ready = ranks.size === request.worldSize;
      const next = `${request.generation}/${request.step + 1}`;
      if (ready && !byGeneration.has(next)) {
        const ordered = [...ranks.entries()].sort(([a], [b]) => a - b).map(([, p]) => p);
        const first = ordered[0] as PushTeacherSumsRequest;
        const base = bytesToFloat32(first.baseCenter);
        const basePatch = first.basePatchCenter.byteLength > 0 ? bytesToFloat32(first.basePatchCenter) : null;
        const count = ordered.reduce((n, p) => n + p.count, 0);
        const center = updateCenter(base, sumInRankOrder(ordered, (p) => p.sums), count, request.centerMomentum);
        const patchCount = ordered.reduce((n, p) => n + p.patchCount, 0);
        const patch =
          basePatch !== null && patchCount > 0
            ? updateCenter(basePatch, sumInRankOrder(ordered, (p) => p.patchSums), patchCount, request.centerMomentum)
            : basePatch;
        const made = { center, patch, generation: request.generation };
        byGeneration.set(next, made);
        centers.set(request.step + 1, made);
        notify();
      }
      return Promise.resolve({ ranksReceived: ranks.size, centerReady: ready });
    }),
    getCenter: unaryHandler(async (request, call) => {
      const deadline = call.getDeadline();
      const deadlineMs = deadline instanceof Date ? deadline.getTime() : Number(deadline);
      for (;;) {
        const found = request.generation === 0 ? centers.get(request.step) : byGeneration.get(`${request.generation}/${request.step}`);
        if (found !== undefined) {
          return {
            step: request.step,
            center: float32ToBytes(found.center),
            generation: found.generation,
            patchCenter: found.patch === null ? Buffer.alloc(0) : float32ToBytes(found.patch),
          };
        }
        if (Date.now() >= deadlineMs - 50) throw new DeadlineExceededError(`no center for step ${request.step}`);
        await new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            waiters.delete(done);
            resolve();
          };
          const timer = setTimeout(done, Math.max(1, Math.min(1_000, deadlineMs - Date.now() - 50)));
          waiters.add(done);
        });
      }
    }),
    watchCenters: (call) => {
      call.emit('error', toServiceError(new InvalidArgumentError('not in the fake')));
    },
    attestTeacher: unaryHandler((request: AttestTeacherRequest) => {
      attestations.push(request);
      const same = attestations.filter((a) => a.jobId === request.jobId && a.generation === request.generation && a.step === request.step);
      const ranks = new Set(same.map((a) => a.rank));
      const snapshot = snapshots.findLast((s) => s.header.jobId === request.jobId && s.header.step === request.step);
      const verified = ranks.size === request.worldSize && snapshot !== undefined && same.every((a) => a.sha256.equals(snapshot.header.sha256));
      return Promise.resolve({ ranksAttested: ranks.size, verified });
    }),
    getTeacherSnapshot: (call) => {
      call.emit('error', toServiceError(new InvalidArgumentError('not in the fake')));
    },
    putTeacherSnapshot: (call, callback) => {
      let header: TeacherSnapshotHeader | undefined;
      const chunks: Buffer[] = [];
      call.on('data', (message: PutTeacherSnapshotRequest) => {
        if (message.part?.$case === 'header') header = message.part.header;
        else if (message.part?.$case === 'chunk') chunks.push(Buffer.from(message.part.chunk.data));
      });
      call.on('end', () => {
        const bytes = Buffer.concat(chunks);
        if (header === undefined || bytes.byteLength !== header.sizeBytes || !createHash('sha256').update(bytes).digest().equals(header.sha256)) {
          callback(toServiceError(new DataLossError('snapshot size or SHA-256 mismatch')), null);
          return;
        }
        snapshots.push({ header, bytes });
        callback(null, { step: header.step, sizeBytes: bytes.byteLength });
      });
    },
  };
  const server = new GrpcServer({ credentials: serverCredentials(options.security ?? INSECURE, { clientCertificate: 'require' }) });
  server.addService(TeacherSyncService, implementation);
  const { address } = await server.start();
  const close = (): Promise<void> => server.close(500);
  return { address, centers, pushes, snapshots, attestations, close, [Symbol.asyncDispose]: close };
}
