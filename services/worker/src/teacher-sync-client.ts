/**
 * The worker's calls to teacher-sync (docs/cluster.md, step loop items 4, 7 and 10):
 * the center for a step, this rank's teacher sums, rank 0's teacher snapshots and every
 * rank's attestation of them. Every call has a deadline and is retried on UNAVAILABLE with
 * the shared policy.
 */
import { createHash } from 'node:crypto';
import {
  DataLossError,
  TeacherSyncClient,
  callOptions,
  callUnary,
  createClient,
  fromServiceError,
  withRetry,
} from '@dinofleet/proto';
import type {
  AttestTeacherResponse,
  PushTeacherSumsResponse,
  PutTeacherSnapshotRequest,
  PutTeacherSnapshotResponse,
} from '@dinofleet/proto';

/** Settings of a {@link TeacherSyncConnection}. */
export interface TeacherSyncConnectionOptions {
  /** "host:port" of teacher-sync. */
  address: string;
  /**
   * Deadline of one GetCenter call, in ms. The call waits at teacher-sync until every rank
   * pushed the previous step's sums, so it must cover the slowest rank's step. @default 120000
   */
  getCenterTimeoutMs?: number;
  /** Deadline of one PushTeacherSums or AttestTeacher call, in ms. @default 30000 */
  pushTimeoutMs?: number;
  /** Deadline of one PutTeacherSnapshot upload, in ms. @default 120000 */
  snapshotTimeoutMs?: number;
  /** Bytes per snapshot chunk message. @default 4 MiB */
  snapshotChunkBytes?: number;
}

/** A center as teacher-sync serves it. */
export interface TeacherCenter {
  /** The step that uses it. */
  readonly step: number;
  /** CLS center, `outDim` values. */
  readonly center: Float32Array;
  /** iBOT patch center, or null when the recipe has none. */
  readonly patchCenter: Float32Array | null;
  /** Generation whose sums produced it. */
  readonly generation: number;
}

/** One rank's teacher sums for one step. */
export interface TeacherSumsPush {
  readonly jobId: string;
  readonly generation: number;
  readonly step: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly centerMomentum: number;
  readonly sums: Float32Array;
  readonly count: number;
  readonly patchSums: Float32Array | null;
  readonly patchCount: number;
}

/** Describes a snapshot upload. */
export interface TeacherSnapshotUpload {
  readonly jobId: string;
  readonly generation: number;
  readonly step: number;
  /** `s3://bucket/prefix/` teacher-sync also writes to, or "" for memory only. */
  readonly storeUri: string;
  /** Encoding of `bytes`. @default 'safetensors' */
  readonly format?: string;
  readonly bytes: Uint8Array;
}

/** One rank's word on the teacher at a snapshot step. */
export interface TeacherAttestation {
  readonly jobId: string;
  readonly generation: number;
  /** Step after which the teacher was taken (the snapshot's step). */
  readonly step: number;
  readonly rank: number;
  readonly worldSize: number;
  /** SHA-256 of the rank's encoded snapshot (32 bytes): the bytes rank 0 uploads. */
  readonly sha256: Uint8Array;
}

/** SHA-256 of snapshot bytes, as PutTeacherSnapshot's header and AttestTeacher carry it. */
export function snapshotSha256(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}

/** Raw little-endian float32 bytes of `values` (the wire encoding of centers and sums). */
export function float32ToBytes(values: Float32Array): Buffer {
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

/** Float32 values of raw little-endian bytes (copied, so alignment does not matter). */
export function bytesToFloat32(bytes: Uint8Array): Float32Array {
  if (bytes.byteLength % 4 !== 0) throw new DataLossError(`a float32 vector of ${bytes.byteLength} bytes is not a multiple of 4`);
  const out = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

const RETRY = { maxAttempts: 5, initialBackoffMs: 200, maxBackoffMs: 5_000 } as const;

/** A client of one teacher-sync service. `close()` it when the job ends on this worker. */
export class TeacherSyncConnection {
  readonly #client: TeacherSyncClient;
  readonly #getCenterTimeoutMs: number;
  readonly #pushTimeoutMs: number;
  readonly #snapshotTimeoutMs: number;
  readonly #chunkBytes: number;

  constructor(options: TeacherSyncConnectionOptions) {
    this.#client = createClient(TeacherSyncClient, options.address);
    this.#getCenterTimeoutMs = options.getCenterTimeoutMs ?? 120_000;
    this.#pushTimeoutMs = options.pushTimeoutMs ?? 30_000;
    this.#snapshotTimeoutMs = options.snapshotTimeoutMs ?? 120_000;
    this.#chunkBytes = options.snapshotChunkBytes ?? 4 * 1024 * 1024;
  }

  /** The center step `step` uses; waits at teacher-sync (within the deadline) until it exists. */
  async getCenter(jobId: string, step: number): Promise<TeacherCenter> {
    const response = await withRetry(
      () => callUnary(this.#client, 'getCenter', { jobId, step }, { deadlineMs: this.#getCenterTimeoutMs }),
      RETRY,
    );
    if (response.step !== step) throw new DataLossError(`teacher-sync answered GetCenter(step ${step}) with the center of step ${response.step}`);
    return {
      step: response.step,
      center: bytesToFloat32(response.center),
      patchCenter: response.patchCenter.byteLength > 0 ? bytesToFloat32(response.patchCenter) : null,
      generation: response.generation,
    };
  }

  /** Adds this rank's sums of one step (idempotent at teacher-sync, so retrying is safe). */
  pushTeacherSums(push: TeacherSumsPush): Promise<PushTeacherSumsResponse> {
    const request = {
      jobId: push.jobId,
      generation: push.generation,
      step: push.step,
      rank: push.rank,
      sums: float32ToBytes(push.sums),
      count: push.count,
      worldSize: push.worldSize,
      patchSums: push.patchSums === null ? Buffer.alloc(0) : float32ToBytes(push.patchSums),
      patchCount: push.patchCount,
      centerMomentum: push.centerMomentum,
    };
    return withRetry(() => callUnary(this.#client, 'pushTeacherSums', request, { deadlineMs: this.#pushTimeoutMs }), RETRY);
  }

  /** Uploads a teacher snapshot: the header (size, SHA-256), then the bytes in chunks. */
  putTeacherSnapshot(upload: TeacherSnapshotUpload): Promise<PutTeacherSnapshotResponse> {
    const bytes = Buffer.from(upload.bytes.buffer, upload.bytes.byteOffset, upload.bytes.byteLength);
    const sha256 = snapshotSha256(bytes);
    return withRetry(
      () =>
        new Promise<PutTeacherSnapshotResponse>((resolve, reject) => {
          const call = this.#client.putTeacherSnapshot(callOptions({ deadlineMs: this.#snapshotTimeoutMs }), (err, response) => {
            if (err !== null) reject(fromServiceError(err));
            else resolve(response);
          });
          const messages: PutTeacherSnapshotRequest[] = [
            {
              part: {
                $case: 'header',
                header: {
                  jobId: upload.jobId,
                  generation: upload.generation,
                  step: upload.step,
                  sizeBytes: bytes.byteLength,
                  sha256,
                  format: upload.format ?? 'safetensors',
                  storeUri: upload.storeUri,
                  verified: false,
                },
              },
            },
          ];
          for (let offset = 0; offset < bytes.byteLength; offset += this.#chunkBytes) {
            messages.push({ part: { $case: 'chunk', chunk: { offset, data: bytes.subarray(offset, offset + this.#chunkBytes) } } });
          }
          for (const message of messages) call.write(message);
          call.end();
        }),
      RETRY,
    );
  }

  /** Attests this rank's snapshot hash of one step (idempotent at teacher-sync, so retrying is safe). */
  attestTeacher(attestation: TeacherAttestation): Promise<AttestTeacherResponse> {
    const request = {
      jobId: attestation.jobId,
      generation: attestation.generation,
      step: attestation.step,
      rank: attestation.rank,
      worldSize: attestation.worldSize,
      sha256: Buffer.from(attestation.sha256.buffer, attestation.sha256.byteOffset, attestation.sha256.byteLength),
    };
    return withRetry(() => callUnary(this.#client, 'attestTeacher', request, { deadlineMs: this.#pushTimeoutMs }), RETRY);
  }

  /** Closes the channel. Idempotent. */
  close(): void {
    this.#client.close();
  }
}
