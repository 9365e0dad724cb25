/**
 * The `dinofleet.v1.TeacherSync` gRPC service: request validation, the wait for a center,
 * snapshot transfers (header, then chunks) and the ranks' attestations of snapshots, over
 * a {@link CenterStore} and a {@link SnapshotStore}.
 */
import { createHash } from 'node:crypto';

import type { S3Client } from '@aws-sdk/client-s3';
import type { handleClientStreamingCall, ServerReadableStream, ServerUnaryCall } from '@grpc/grpc-js';
import {
  AbortedError,
  CancelledError,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  isInternalError,
  NotFoundError,
  ResourceExhaustedError,
  serverStreamHandler,
  toServiceError,
  UnavailableError,
  unaryHandler,
} from '@dinofleet/proto';
import type {
  AttestTeacherRequest,
  AttestTeacherResponse,
  GetCenterRequest,
  GetCenterResponse,
  GetTeacherSnapshotResponse,
  PushTeacherSumsRequest,
  PushTeacherSumsResponse,
  PutTeacherSnapshotRequest,
  PutTeacherSnapshotResponse,
  TeacherSnapshotHeader,
  TeacherSyncServer,
} from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';

import type { CenterRecord, CenterStore, PushResult } from './center-store.ts';
import { float32FromBytes, float32ToBytes } from './float32-bytes.ts';
import { parseStoreUri, readStoredSnapshot, storeSnapshot } from './snapshot-store.ts';
import type { KeptSnapshot, SnapshotCheck, SnapshotStore, TeacherSnapshot } from './snapshot-store.ts';
import type { TeacherSyncMetrics } from './teacher-sync-metrics.ts';

/** Size of the chunks GetTeacherSnapshot sends, and what uploaders should send, in bytes (1 MiB). */
export const SNAPSHOT_CHUNK_BYTES = 1024 * 1024;

/** Largest chunk PutTeacherSnapshot accepts, in bytes (4 MiB). */
export const MAX_SNAPSHOT_CHUNK_BYTES = 4 * 1024 * 1024;

/** Largest snapshot accepted by default, in bytes (1 GiB: a ViT-L teacher in float32 is ~1.2 GB with heads, so raise it for those). */
export const DEFAULT_MAX_SNAPSHOT_BYTES = 1024 * 1024 * 1024;

/** Longest a GetCenter waits when its deadline is later (or absent), in ms. */
export const DEFAULT_MAX_CENTER_WAIT_MS = 600_000;

/** The only snapshot encoding teacher-sync stores (an empty `format` means this one). */
export const SNAPSHOT_FORMAT = 'safetensors';

/** What the service needs. */
export interface TeacherSyncServiceOptions {
  readonly centers: CenterStore;
  readonly snapshots: SnapshotStore;
  readonly metrics: TeacherSyncMetrics;
  readonly logger: Logger;
  /** Client for snapshots with a `store_uri`; without one such uploads fail with FAILED_PRECONDITION. */
  readonly s3?: S3Client | undefined;
  /** Largest snapshot accepted, in bytes. */
  readonly maxSnapshotBytes: number;
  /** Longest a GetCenter waits, in ms, whatever its deadline. */
  readonly maxCenterWaitMs: number;
}

function checkJobId(jobId: string): void {
  if (jobId === '') throw new InvalidArgumentError('job_id must not be empty');
}

function validatePush(request: PushTeacherSumsRequest): void {
  checkJobId(request.jobId);
  const where = `job ${request.jobId} generation ${request.generation} step ${request.step} rank ${request.rank}`;
  if (request.worldSize < 1) throw new InvalidArgumentError(`${where}: world_size must be ≥ 1, got ${request.worldSize}`);
  if (request.rank >= request.worldSize) {
    throw new InvalidArgumentError(`${where}: rank ${request.rank} must be < world_size ${request.worldSize}`);
  }
  if (request.count < 1) throw new InvalidArgumentError(`${where}: count must be ≥ 1 (the teacher outputs summed into sums), got ${request.count}`);
  if (request.sums.length === 0) throw new InvalidArgumentError(`${where}: sums must not be empty`);
  const m = request.centerMomentum;
  if (!(Number.isFinite(m) && m >= 0 && m <= 1)) throw new InvalidArgumentError(`${where}: center_momentum must be in [0, 1], got ${m}`);
  if (request.patchSums.length === 0 && request.patchCount !== 0) {
    throw new InvalidArgumentError(`${where}: patch_count is ${request.patchCount} but patch_sums is empty`);
  }
}

function validateAttestation(request: AttestTeacherRequest): void {
  checkJobId(request.jobId);
  const where = `attestation of job ${request.jobId} step ${request.step} generation ${request.generation} rank ${request.rank}`;
  if (request.step < 1) throw new InvalidArgumentError(`${where}: step must be ≥ 1 (the step after which the snapshot was taken), got ${request.step}`);
  if (request.worldSize < 1) throw new InvalidArgumentError(`${where}: world_size must be ≥ 1, got ${request.worldSize}`);
  if (request.rank >= request.worldSize) {
    throw new InvalidArgumentError(`${where}: rank ${request.rank} must be < world_size ${request.worldSize}`);
  }
  if (request.sha256.length !== 32) {
    throw new InvalidArgumentError(`${where}: sha256 must be 32 bytes (the SHA-256 of the encoded snapshot), got ${request.sha256.length}`);
  }
}

function centerResponse(record: CenterRecord): GetCenterResponse {
  return {
    step: record.step,
    center: float32ToBytes(record.center),
    generation: record.generation,
    patchCenter: float32ToBytes(record.patchCenter),
  };
}

/** An AbortSignal that fires at the call's deadline (capped at `maxWaitMs`) or when the client cancels. */
function callSignal(call: ServerUnaryCall<unknown, unknown>, maxWaitMs: number, what: string): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  const waitMs = Math.max(0, Math.min(deadlineMs - Date.now(), maxWaitMs));
  const timer = setTimeout(() => {
    controller.abort(new DeadlineExceededError(`${what} did not become available within ${Math.round(waitMs)} ms (the call's deadline)`));
  }, waitMs);
  const onCancelled = (): void => controller.abort(new CancelledError(`${what}: the call was cancelled`));
  call.on('cancelled', onCancelled);
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      call.off('cancelled', onCancelled);
    },
  };
}

interface SnapshotUpload {
  readonly header: TeacherSnapshotHeader;
  readonly bytes: Buffer;
  readonly hash: ReturnType<typeof createHash>;
  received: number;
}

function validateSnapshotHeader(header: TeacherSnapshotHeader, options: TeacherSyncServiceOptions): void {
  checkJobId(header.jobId);
  const where = `teacher snapshot of job ${header.jobId} step ${header.step}`;
  if (header.sha256.length !== 32) throw new InvalidArgumentError(`${where}: sha256 must be 32 bytes, got ${header.sha256.length}`);
  if (header.format !== '' && header.format !== SNAPSHOT_FORMAT) {
    throw new InvalidArgumentError(`${where}: format must be "${SNAPSHOT_FORMAT}", got ${JSON.stringify(header.format)}`);
  }
  if (header.sizeBytes > options.maxSnapshotBytes) {
    throw new ResourceExhaustedError(
      `${where}: ${header.sizeBytes} bytes exceed teacher-sync's limit of ${options.maxSnapshotBytes} (--max-snapshot-bytes)`,
    );
  }
  if (header.storeUri !== '') {
    parseStoreUri(header.storeUri);
    if (options.s3 === undefined) throw new FailedPreconditionError(`${where}: store_uri is set but this teacher-sync has no S3 client`);
  }
}

/**
 * Reads a PutTeacherSnapshot stream into one verified snapshot. Rejects at the first bad
 * message (the rest of the stream is ignored), so nothing unverified is ever kept.
 */
function receiveSnapshot(
  call: ServerReadableStream<PutTeacherSnapshotRequest, PutTeacherSnapshotResponse>,
  options: TeacherSyncServiceOptions,
  onHeader: (header: TeacherSnapshotHeader) => void,
): Promise<TeacherSnapshot> {
  return new Promise((resolve, reject) => {
    let upload: SnapshotUpload | undefined;
    let settled = false;
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    call.on('data', (message: PutTeacherSnapshotRequest) => {
      if (settled) return;
      try {
        const part = message.part;
        if (part === undefined) throw new InvalidArgumentError('a PutTeacherSnapshot message carries neither header nor chunk');
        switch (part.$case) {
          case 'header': {
            if (upload !== undefined) throw new InvalidArgumentError('a second header in one PutTeacherSnapshot stream');
            validateSnapshotHeader(part.header, options);
            onHeader(part.header);
            upload = { header: part.header, bytes: Buffer.allocUnsafe(part.header.sizeBytes), hash: createHash('sha256'), received: 0 };
            break;
          }
          case 'chunk': {
            if (upload === undefined) throw new InvalidArgumentError('the first PutTeacherSnapshot message must be the header');
            const { offset, data } = part.chunk;
            if (offset !== upload.received) {
              throw new InvalidArgumentError(`chunk at offset ${offset}, expected ${upload.received}: chunks must be sent in order`);
            }
            if (data.length > MAX_SNAPSHOT_CHUNK_BYTES) {
              throw new InvalidArgumentError(`chunk of ${data.length} bytes exceeds ${MAX_SNAPSHOT_CHUNK_BYTES}; send chunks of ${SNAPSHOT_CHUNK_BYTES} bytes`);
            }
            if (upload.received + data.length > upload.header.sizeBytes) {
              throw new InvalidArgumentError(`the chunks hold more than the header's size_bytes ${upload.header.sizeBytes}`);
            }
            data.copy(upload.bytes, upload.received);
            upload.hash.update(data);
            upload.received += data.length;
            break;
          }
          default: {
            const unexpected: never = part;
            throw new InvalidArgumentError(`unknown PutTeacherSnapshot part ${JSON.stringify(unexpected)}`);
          }
        }
      } catch (err) {
        fail(err);
      }
    });
    call.on('end', () => {
      if (settled) return;
      try {
        if (upload === undefined) throw new InvalidArgumentError('the PutTeacherSnapshot stream ended without a header');
        const { header } = upload;
        if (upload.received !== header.sizeBytes) {
          throw new InvalidArgumentError(`the stream ended after ${upload.received} of ${header.sizeBytes} bytes; nothing was stored`);
        }
        const sha256 = upload.hash.digest();
        if (!sha256.equals(header.sha256)) {
          throw new DataLossError(
            `teacher snapshot of job ${header.jobId} step ${header.step}: SHA-256 of the bytes is ${sha256.toString('hex')}, the header says ${header.sha256.toString('hex')}; nothing was stored`,
          );
        }
        settled = true;
        resolve({
          jobId: header.jobId,
          generation: header.generation,
          step: header.step,
          format: SNAPSHOT_FORMAT,
          storeUri: header.storeUri,
          sha256,
          bytes: upload.bytes,
        });
      } catch (err) {
        fail(err);
      }
    });
    call.on('cancelled', () => fail(new CancelledError('the uploader cancelled the snapshot')));
    call.on('error', (err) => fail(new UnavailableError(`the snapshot stream failed: ${err.message}`, { cause: err })));
  });
}

/** The grpc-js implementation of `dinofleet.v1.TeacherSync`. */
export function createTeacherSyncService(options: TeacherSyncServiceOptions): TeacherSyncServer {
  const { centers, snapshots, metrics, logger } = options;
  const onInternalError = (err: unknown, path: string): void => logger.error('internal error in a call', { path, err });
  const handlerOptions = { onInternalError };

  const reportCheck = (check: SnapshotCheck | undefined): void => {
    if (check === undefined) return;
    const fields = { job: check.jobId, step: check.step, generation: check.generation, hashes: check.hashes };
    if (check.verified) {
      metrics.snapshotsVerified.inc();
      logger.info('teacher snapshot verified by every rank', fields);
    } else {
      metrics.snapshotMismatches.inc();
      logger.error('teacher snapshot rejected: the ranks attested other SHA-256s; GetTeacherSnapshot serves the latest one not rejected', fields);
    }
  };

  const attestTeacher = (request: AttestTeacherRequest): AttestTeacherResponse => {
    validateAttestation(request);
    const result = snapshots.attest({
      jobId: request.jobId,
      generation: request.generation,
      step: request.step,
      rank: request.rank,
      worldSize: request.worldSize,
      sha256: request.sha256,
    });
    metrics.attestations.inc();
    if (result.ignoredFor !== undefined) {
      logger.warn('attestation ignored: a later generation attests the step', {
        job: request.jobId,
        step: request.step,
        generation: request.generation,
        rank: request.rank,
        attestingGeneration: result.ignoredFor,
      });
    }
    reportCheck(result.check);
    return { ranksAttested: result.ranksAttested, verified: result.verified };
  };

  const pushTeacherSums = (request: PushTeacherSumsRequest): PushTeacherSumsResponse => {
    validatePush(request);
    let result: PushResult;
    try {
      result = centers.push({
        jobId: request.jobId,
        generation: request.generation,
        step: request.step,
        rank: request.rank,
        sums: float32FromBytes(request.sums, 'sums'),
        count: request.count,
        patchSums: float32FromBytes(request.patchSums, 'patch_sums'),
        patchCount: request.patchCount,
        worldSize: request.worldSize,
        centerMomentum: request.centerMomentum,
        baseCenter: float32FromBytes(request.baseCenter, 'base_center'),
        basePatchCenter: float32FromBytes(request.basePatchCenter, 'base_patch_center'),
      });
    } catch (err) {
      if (err instanceof AbortedError) {
        metrics.stalePushes.inc();
        logger.info('refused teacher sums of a stale generation', { job: request.jobId, generation: request.generation, step: request.step, rank: request.rank });
      }
      throw err;
    }
    metrics.pushes.inc();
    if (result.computed !== null) {
      metrics.centers.inc();
      logger.debug('center computed', { job: request.jobId, step: result.computed.step, generation: result.computed.generation });
    }
    return { ranksReceived: result.ranksReceived, centerReady: result.centerReady };
  };

  const getCenter = async (request: GetCenterRequest, call: ServerUnaryCall<GetCenterRequest, GetCenterResponse>): Promise<GetCenterResponse> => {
    checkJobId(request.jobId);
    const which = request.generation === 0 ? '' : ` from generation ${request.generation}`;
    const what = `the center for step ${request.step} of job ${request.jobId}${which}`;
    const { signal, dispose } = callSignal(call, options.maxCenterWaitMs, what);
    try {
      return centerResponse(await centers.waitForCenter(request.jobId, request.step, request.generation, signal));
    } finally {
      dispose();
    }
  };

  /**
   * The snapshot GetTeacherSnapshot serves: the kept one, or with none kept for the job
   * (a restart, or every kept one rejected) the copy under its last known `store_uri`.
   */
  const findSnapshot = async (jobId: string, step: number): Promise<KeptSnapshot | undefined> => {
    const kept = snapshots.get(jobId, step);
    if (kept !== undefined) return kept;
    const storeUri = snapshots.storeUri(jobId);
    if (snapshots.steps(jobId).length > 0 || storeUri === '' || options.s3 === undefined) return undefined;
    // A rejected step stays rejected, whatever S3 still holds of it.
    if (step !== 0 && snapshots.rejection(jobId, step) !== undefined) return undefined;
    const stored = await readStoredSnapshot(options.s3, {
      jobId,
      storeUri,
      step,
      skip: (candidate) => snapshots.rejection(jobId, candidate) !== undefined,
      maxBytes: options.maxSnapshotBytes,
    });
    if (stored === undefined) return undefined;
    logger.info('teacher snapshot read back from S3 (none in memory)', { job: jobId, step: stored.step, storeUri });
    return { snapshot: stored, verified: snapshots.attestedAs(jobId, stored.step, stored.sha256) };
  };

  const putTeacherSnapshot: handleClientStreamingCall<PutTeacherSnapshotRequest, PutTeacherSnapshotResponse> = (call, callback) => {
    const handle = async (): Promise<PutTeacherSnapshotResponse> => {
      const snapshot = await receiveSnapshot(call, options, (header) => snapshots.rememberStoreUri(header.jobId, header.storeUri));
      if (snapshot.storeUri !== '' && options.s3 !== undefined) {
        let uri: string;
        try {
          uri = await storeSnapshot(options.s3, snapshot);
        } catch (err) {
          logger.warn('writing a teacher snapshot to S3 failed', { job: snapshot.jobId, step: snapshot.step, storeUri: snapshot.storeUri, err });
          const reason = err instanceof Error ? err.message : String(err);
          throw new UnavailableError(`writing the snapshot under ${snapshot.storeUri} failed (${reason}); nothing was stored, retry`, { cause: err });
        }
        logger.info('teacher snapshot written', { job: snapshot.jobId, step: snapshot.step, uri, bytes: snapshot.bytes.length });
      }
      const check = snapshots.put(snapshot);
      metrics.snapshots.inc();
      metrics.snapshotBytes.set(snapshot.bytes.length);
      reportCheck(check);
      return { step: snapshot.step, sizeBytes: snapshot.bytes.length };
    };
    handle().then(
      (response) => callback(null, response),
      (err: unknown) => {
        if (isInternalError(err)) onInternalError(err, call.getPath());
        callback(toServiceError(err), null);
      },
    );
  };

  return {
    // The executor turns a throw into a rejection, which the adapter maps to a status.
    pushTeacherSums: unaryHandler((request: PushTeacherSumsRequest) => new Promise<PushTeacherSumsResponse>((resolve) => resolve(pushTeacherSums(request))), handlerOptions),
    getCenter: unaryHandler(getCenter, handlerOptions),
    watchCenters: serverStreamHandler(async function* (request, signal) {
      checkJobId(request.jobId);
      for await (const record of centers.watchCenters(request.jobId, request.fromStep, signal)) yield centerResponse(record);
    }, handlerOptions),
    getTeacherSnapshot: serverStreamHandler(async function* (request): AsyncGenerator<GetTeacherSnapshotResponse> {
      checkJobId(request.jobId);
      const kept = await findSnapshot(request.jobId, request.step);
      if (kept === undefined) {
        const rejection = request.step === 0 ? undefined : snapshots.rejection(request.jobId, request.step);
        if (rejection !== undefined) {
          throw new DataLossError(
            `the teacher snapshot of job ${request.jobId} step ${request.step} was rejected: the ranks' attested SHA-256s do not match it (${rejection}); ask for step 0, the latest snapshot not rejected`,
          );
        }
        const steps = snapshots.steps(request.jobId);
        const storeUri = snapshots.storeUri(request.jobId);
        const which = request.step === 0 ? 'no teacher snapshot' : `no teacher snapshot for step ${request.step}`;
        const stored = steps.length === 0 && storeUri !== '' ? `, and none under ${storeUri}` : '';
        throw new NotFoundError(
          `${which} of job ${request.jobId} (teacher-sync keeps the latest ${steps.length === 0 ? 'few; it has none' : `few: steps ${steps.join(', ')}`}${stored})`,
        );
      }
      const { snapshot, verified } = kept;
      yield {
        part: {
          $case: 'header',
          header: {
            jobId: snapshot.jobId,
            generation: snapshot.generation,
            step: snapshot.step,
            sizeBytes: snapshot.bytes.length,
            sha256: snapshot.sha256,
            format: snapshot.format,
            storeUri: snapshot.storeUri,
            verified,
          },
        },
      };
      for (let offset = 0; offset < snapshot.bytes.length; offset += SNAPSHOT_CHUNK_BYTES) {
        yield { part: { $case: 'chunk', chunk: { offset, data: snapshot.bytes.subarray(offset, offset + SNAPSHOT_CHUNK_BYTES) } } };
      }
    }, handlerOptions),
    putTeacherSnapshot,
    // The executor turns a throw into a rejection, which the adapter maps to a status.
    attestTeacher: unaryHandler((request: AttestTeacherRequest) => new Promise<AttestTeacherResponse>((resolve) => resolve(attestTeacher(request))), handlerOptions),
  };
}
