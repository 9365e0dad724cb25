/**
 * The worker's calls to teacher-sync (docs/cluster.md, step loop items 4, 7 and 10, and
 * "Elasticity and failures" → worker item 8): the center for a step, this rank's teacher
 * sums, rank 0's teacher snapshots and every rank's attestation of them. Every call has a
 * deadline. Pushes and GetCenter ride out a teacher-sync restart: they retry UNAVAILABLE
 * and DEADLINE_EXCEEDED for up to `teacherSyncWaitMs`, and GetCenter pushes the rank's
 * sums again before each retry, since a restarted teacher-sync rebuilds the center from
 * the pushes alone.
 */
import { createHash } from 'node:crypto';
import { Metadata, status } from '@grpc/grpc-js';
import type { ClientUnaryCall, ServiceError } from '@grpc/grpc-js';
import {
  backoffMs,
  CancelledError,
  DataLossError,
  isRetryable,
  TeacherSyncClient,
  callOptions,
  callUnary,
  channelCredentials,
  createClient,
  fromServiceError,
  resolveRetryConfig,
  sleepUnlessAborted,
  UnavailableError,
  withRetry,
} from '@dinofleet/proto';
import type {
  TransportSecurity,
  AttestTeacherResponse,
  CallOptionsWithDeadline,
  GetCenterResponse,
  PushTeacherSumsResponse,
  PutTeacherSnapshotRequest,
  PutTeacherSnapshotResponse,
  UnaryMethodName,
  UnaryRequest,
  UnaryResponse,
} from '@dinofleet/proto';

/** Deadline of one GetCenter attempt by default, in ms (docs/cluster.md, worker item 8). */
export const DEFAULT_GET_CENTER_TIMEOUT_MS = 3_000;

/** Deadline of one PushTeacherSums attempt by default, in ms. */
export const DEFAULT_PUSH_TIMEOUT_MS = 5_000;

/** How long pushes and GetCenter keep retrying in all by default, in ms (docs/cluster.md, worker item 8). */
export const DEFAULT_TEACHER_SYNC_WAIT_MS = 30_000;

/** Settings of a {@link TeacherSyncConnection}. */
export interface TeacherSyncConnectionOptions {
  /** "host:port" of teacher-sync. */
  address: string;
  /** How to dial it (`channelCredentials(security)`: teacher-sync requires a fleet certificate under mTLS). */
  security: TransportSecurity;
  /**
   * Deadline of one GetCenter attempt, in ms. Short on purpose: a teacher-sync that
   * restarted holds no center until the ranks push again, so an attempt that times out
   * makes this rank push again and retry. @default 3000
   */
  getCenterTimeoutMs?: number;
  /** Deadline of one PushTeacherSums attempt, in ms. @default 5000 */
  pushTimeoutMs?: number;
  /**
   * How long PushTeacherSums and GetCenter keep retrying UNAVAILABLE and DEADLINE_EXCEEDED
   * in all, in ms; then they give up and the step fails. @default 30000
   */
  teacherSyncWaitMs?: number;
  /** Deadline of one AttestTeacher call, in ms. @default 30000 */
  attestTimeoutMs?: number;
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
  /** The center the step used (`state.center`); teacher-sync computes the next one from it. */
  readonly baseCenter: Float32Array;
  /** The patch center the step used (`state.ibotCenter`), or null when the recipe has none. */
  readonly basePatchCenter: Float32Array | null;
  /** Stops the push (the in-flight attempt is cancelled) and rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** How {@link TeacherSyncConnection.getCenter} waits. */
export interface GetCenterOptions {
  /** Generation whose center to get; 0 or absent: the newest generation that completed it. */
  readonly generation?: number;
  /**
   * Pushes this rank's sums of the step before it again (idempotent at teacher-sync). Called
   * after an attempt ends in DEADLINE_EXCEEDED or UNAVAILABLE, before the retry: a restarted
   * teacher-sync has lost the pushes it would build the center from. Its failure with
   * UNAVAILABLE or DEADLINE_EXCEEDED is tolerated (the retry finds out); any other ends the
   * wait with that error.
   */
  readonly repush?: () => Promise<unknown>;
  /** Stops waiting (the in-flight attempt is cancelled) and rejects with the signal's reason. */
  readonly signal?: AbortSignal;
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

/** Retry policy of the best-effort calls (snapshot uploads, attestations). */
const RETRY = { maxAttempts: 5, initialBackoffMs: 200, maxBackoffMs: 5_000 } as const;

/**
 * What a teacher-sync restart looks like to a push or a GetCenter: UNAVAILABLE while it is
 * down, DEADLINE_EXCEEDED while it waits for pushes it lost. Both calls are idempotent, so
 * both statuses are safe to retry (the shared default retries UNAVAILABLE only).
 */
const TEACHER_SYNC_RETRYABLE: ReadonlySet<status> = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]);

/** Backoff between the attempts of a push or a GetCenter: jittered, 100 ms growing to 2 s. */
const WAIT_BACKOFF = { initialBackoffMs: 100, maxBackoffMs: 2_000 } as const;

/** Shortest GetCenter attempt worth making at the end of the wait, in ms. */
const MIN_ATTEMPT_MS = 100;

/**
 * Channel settings: grpc-js waits up to 120 s between reconnects by default, far longer
 * than the whole wait for a restarted teacher-sync, so the backoff is capped at 1 s.
 */
const CHANNEL_OPTIONS = { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1_000 } as const;

// A function, not an inline check, so the compiler does not assume `aborted` is unchanged
// across the awaits in between.
function isAborted(signal: AbortSignal | undefined): signal is AbortSignal {
  return signal?.aborted === true;
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new CancelledError(`the teacher-sync call was cancelled (${String(signal.reason)})`);
}

function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `30000` → `30`, `1500` → `1.5`. */
function seconds(ms: number): string {
  return String(Number((ms / 1000).toFixed(1)));
}

/**
 * Settles like `promise`, or with `{ done: false }` once `untilMs` (ms since the epoch)
 * passes or `signal` aborts; `promise` is then left to settle on its own.
 */
function settleBefore<T>(promise: Promise<T>, untilMs: number, signal: AbortSignal | undefined): Promise<{ done: true; value: T } | { done: false }> {
  return new Promise((resolve, reject) => {
    const finish = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onStop);
    };
    const onStop = (): void => {
      finish();
      resolve({ done: false });
    };
    const timer = setTimeout(onStop, Math.max(0, untilMs - Date.now()));
    signal?.addEventListener('abort', onStop, { once: true });
    promise.then(
      (value) => {
        finish();
        resolve({ done: true, value });
      },
      (err: unknown) => {
        finish();
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

/** The full (last) overload of a generated unary method. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: ReturnType<typeof callOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * `callUnary`, but `signal` cancels the call in flight: the promise then rejects with the
 * signal's reason at once instead of when the deadline passes.
 */
function callUnaryUntilAborted<C extends object, M extends UnaryMethodName<C>>(
  client: C,
  method: M,
  request: UnaryRequest<C, M>,
  options: CallOptionsWithDeadline,
  signal: AbortSignal | undefined,
): Promise<UnaryResponse<C, M>> {
  if (signal === undefined) return callUnary(client, method, request, options);
  if (signal.aborted) return Promise.reject(abortReason(signal));
  const fn = client[method] as UnaryMethod<UnaryRequest<C, M>, UnaryResponse<C, M>>;
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      call.cancel();
      reject(abortReason(signal));
    };
    const call = fn.call(client, request, new Metadata(), callOptions(options), (error, response) => {
      signal.removeEventListener('abort', onAbort);
      if (error !== null) reject(fromServiceError(error));
      else resolve(response);
    });
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** The response as a {@link TeacherCenter}, after checking it is the one asked for. */
function checkedCenter(response: GetCenterResponse, step: number, generation: number): TeacherCenter {
  if (response.step !== step) throw new DataLossError(`teacher-sync answered GetCenter(step ${step}) with the center of step ${response.step}`);
  // Step 0's center is zeros whatever the generation, and teacher-sync says generation 0.
  if (generation !== 0 && step !== 0 && response.generation !== generation) {
    throw new DataLossError(`teacher-sync answered GetCenter(step ${step}, generation ${generation}) with the center of generation ${response.generation}`);
  }
  return {
    step: response.step,
    center: bytesToFloat32(response.center),
    patchCenter: response.patchCenter.byteLength > 0 ? bytesToFloat32(response.patchCenter) : null,
    generation: response.generation,
  };
}

/** A client of one teacher-sync service. `close()` it when the job ends on this worker. */
export class TeacherSyncConnection {
  readonly #address: string;
  readonly #client: TeacherSyncClient;
  readonly #getCenterTimeoutMs: number;
  readonly #pushTimeoutMs: number;
  readonly #waitMs: number;
  readonly #attestTimeoutMs: number;
  readonly #snapshotTimeoutMs: number;
  readonly #chunkBytes: number;

  constructor(options: TeacherSyncConnectionOptions) {
    this.#address = options.address;
    this.#client = createClient(TeacherSyncClient, options.address, { credentials: channelCredentials(options.security), channelOptions: CHANNEL_OPTIONS });
    this.#getCenterTimeoutMs = options.getCenterTimeoutMs ?? DEFAULT_GET_CENTER_TIMEOUT_MS;
    this.#pushTimeoutMs = options.pushTimeoutMs ?? DEFAULT_PUSH_TIMEOUT_MS;
    this.#waitMs = options.teacherSyncWaitMs ?? DEFAULT_TEACHER_SYNC_WAIT_MS;
    this.#attestTimeoutMs = options.attestTimeoutMs ?? 30_000;
    this.#snapshotTimeoutMs = options.snapshotTimeoutMs ?? 120_000;
    this.#chunkBytes = options.snapshotChunkBytes ?? 4 * 1024 * 1024;
  }

  /**
   * The center step `step` uses. Each attempt waits at teacher-sync up to
   * `getCenterTimeoutMs`; after one that ends in DEADLINE_EXCEEDED or UNAVAILABLE,
   * `repush()` runs (if given) and the call retries after a jittered backoff, for up to
   * `teacherSyncWaitMs` in all.
   *
   * @throws UnavailableError `teacher-sync at <addr> gave no center for step N within 30 s: …`
   *   when the wait is over; any other error of teacher-sync (ABORTED: the generation is
   *   stale) or of `repush` as it is; the signal's reason when it aborts.
   */
  async getCenter(jobId: string, step: number, options: GetCenterOptions = {}): Promise<TeacherCenter> {
    const { generation = 0, repush, signal } = options;
    const untilMs = Date.now() + this.#waitMs;
    const backoff = resolveRetryConfig(WAIT_BACKOFF);
    let lastError: unknown;
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await callUnaryUntilAborted(
          this.#client,
          'getCenter',
          { jobId, step, generation },
          { deadlineMs: this.#getCenterTimeoutMs, notAfterMs: untilMs },
          signal,
        );
        return checkedCenter(response, step, generation);
      } catch (err) {
        if (isAborted(signal)) throw abortReason(signal);
        if (!isRetryable(err, TEACHER_SYNC_RETRYABLE)) throw err;
        lastError = err;
      }
      if (repush !== undefined && Date.now() < untilMs) {
        try {
          await settleBefore(repush(), untilMs, signal);
        } catch (err) {
          if (!isAborted(signal) && !isRetryable(err, TEACHER_SYNC_RETRYABLE)) throw err;
        }
        if (isAborted(signal)) throw abortReason(signal);
      }
      // The last attempt gets what is left of the wait, but never less than a round trip.
      const leftMs = untilMs - Date.now() - MIN_ATTEMPT_MS;
      if (leftMs <= 0) break;
      await sleepUnlessAborted(Math.min(backoffMs(attempt, backoff), leftMs), signal);
      if (isAborted(signal)) throw abortReason(signal);
    }
    throw new UnavailableError(
      `teacher-sync at ${this.#address} gave no center for step ${step} within ${seconds(this.#waitMs)} s: ${describeError(lastError)}`,
      { cause: lastError },
    );
  }

  /**
   * Adds this rank's sums of one step, with the centers the step used. Idempotent at
   * teacher-sync, so UNAVAILABLE and DEADLINE_EXCEEDED are retried (each attempt with
   * `pushTimeoutMs`) for up to `teacherSyncWaitMs` in all.
   *
   * @throws UnavailableError naming teacher-sync when the wait is over; any other error of
   *   teacher-sync as it is (ABORTED: a newer generation pushed the step; FAILED_PRECONDITION:
   *   the ranks' base centers differ); the signal's reason when it aborts.
   */
  async pushTeacherSums(push: TeacherSumsPush): Promise<PushTeacherSumsResponse> {
    const { signal } = push;
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
      baseCenter: float32ToBytes(push.baseCenter),
      basePatchCenter: push.basePatchCenter === null ? Buffer.alloc(0) : float32ToBytes(push.basePatchCenter),
    };
    try {
      return await withRetry(
        ({ deadlineMs }) =>
          callUnaryUntilAborted(this.#client, 'pushTeacherSums', request, { deadlineMs: this.#pushTimeoutMs, notAfterMs: deadlineMs }, signal),
        {
          ...WAIT_BACKOFF,
          maxAttempts: 100,
          deadline: Date.now() + this.#waitMs,
          retryableStatuses: TEACHER_SYNC_RETRYABLE,
          ...(signal !== undefined && { signal }),
        },
      );
    } catch (err) {
      if (isAborted(signal)) throw abortReason(signal);
      if (!isRetryable(err, TEACHER_SYNC_RETRYABLE)) throw err;
      throw new UnavailableError(
        `teacher-sync at ${this.#address} took no sums of step ${push.step} (rank ${push.rank}) within ${seconds(this.#waitMs)} s: ${describeError(err)}`,
        { cause: err },
      );
    }
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
    return withRetry(() => callUnary(this.#client, 'attestTeacher', request, { deadlineMs: this.#attestTimeoutMs }), RETRY);
  }

  /** Closes the channel. Idempotent. */
  close(): void {
    this.#client.close();
  }
}
