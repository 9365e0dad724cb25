/**
 * @dinofleet/worker: one rank of a training job. {@link startWorker} runs a whole worker
 * in this process (its Collective server and its Control stream), for tests and for
 * `main.ts`.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { CollectiveEndpoint } from '@dinofleet/collective';
import { initComputeBackend } from '@dinofleet/compute';
import type { ComputeBackend } from '@dinofleet/compute';
import type { BackoffOptions } from '@dinofleet/data';
import { GrpcServer, StateTransferService, UnavailableError, serverCredentials } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { LogLevel, createLogger } from '@dinofleet/telemetry';
import type { Logger, Registry } from '@dinofleet/telemetry';
import { Worker } from './worker.ts';
import type { BatchSourceRequest, WorkerOptions } from './worker.ts';
import type { BatchSource } from './batch-loader.ts';
import type { NonfiniteFaults } from './fault-injection.ts';
import { stateTransferServer } from './state-transfer.ts';

export {
  Worker,
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  GRACEFUL_LEAVE_TIMEOUT_MS,
  RECONNECT_INITIAL_BACKOFF_MS,
  RECONNECT_MAX_BACKOFF_MS,
  WORKER_VERSION,
} from './worker.ts';
export type { BatchSourceRequest, HeldState, WorkerOptions } from './worker.ts';
export {
  DEFAULT_PREFETCH_BATCHES,
  DEFAULT_PREFETCH_BYTES,
  ImageReadError,
  MemoryBatchSource,
  PrefetchingBatchSource,
  READ_BACKOFF,
  READ_RETRIES,
  S3BatchLoader,
  batchBytes,
  batchImageCount,
} from './batch-loader.ts';
export type { BatchSource, LoaderCrops, LoaderMetrics, MemorySample, PrefetchOptions, S3BatchLoaderOptions, TrainingBatch } from './batch-loader.ts';
export { DEFAULT_MAX_WINDOW_BYTES, LeaseReader } from './lease-reader.ts';
export type { LeaseReaderOptions, LeaseSample, SampleSkip } from './lease-reader.ts';
export { GradientLayout } from './gradient-buffer.ts';
export type { GradientSlot } from './gradient-buffer.ts';
export { STATE_HASH_BYTES, stateHash } from './state-hash.ts';
export { TeacherSyncConnection, bytesToFloat32, float32ToBytes } from './teacher-sync-client.ts';
export type { TeacherCenter, TeacherSnapshotUpload, TeacherSumsPush, TeacherSyncConnectionOptions } from './teacher-sync-client.ts';
export { checkpointTensors, encodeTeacherSnapshot, loadCheckpointInto, parseCheckpointUri, saveCheckpoint, teacherTensors } from './checkpoint-writer.ts';
export type { CheckpointLocation, CheckpointTarget, SavedCheckpoint, StateTensor } from './checkpoint-writer.ts';
export { DINO_STATE_FORMAT, decodeDinoStateInto, encodeDinoState } from './state-codec.ts';
export type { EncodedStateInfo } from './state-codec.ts';
export { FETCH_STATE_DEADLINE_MS, STATE_CHUNK_BYTES, fetchState, stateTransferServer } from './state-transfer.ts';
export type { FetchStateOptions, FetchedState, ServableState, StateTransferSource } from './state-transfer.ts';
export { FAULT_NONFINITE_STEPS_ENV, NonfiniteFaults } from './fault-injection.ts';
export { ALLREDUCE_SECONDS_BUCKETS, BUSBW_MIN_BYTES, CollectiveRunMetrics, STATE_TRANSFER_SECONDS_BUCKETS, StateTransferRole, WorkerMetrics } from './worker-metrics.ts';
export type { CollectiveRunLabels } from './worker-metrics.ts';
export { TEACHER_SNAPSHOT_EVERY_STEPS, computeStep, rankBatch, runStepLoop } from './step-loop.ts';
export { parseAssignedJobSpec } from './assigned-spec.ts';
export { WORKER_S3_MAX_ATTEMPTS, WORKER_USAGE, WorkerConfigError, resolveWorkerConfig, resolveWorkerS3Config } from './worker-config.ts';
export type { WorkerConfig } from './worker-config.ts';
export type { StepLoopContext, StepOutcome, StepRing } from './step-loop.ts';

/** Settings of {@link startWorker}. */
export interface StartWorkerOptions {
  /** "host:port" of the coordinator. */
  coordinatorAddress: string;
  /**
   * How the worker secures every connection (`--tls-dir` / `--insecure`): under mTLS its
   * gRPC server (Collective, StateTransfer, health) and its data listener accept only
   * clients with a certificate of the fleet CA, and it presents its own certificate to the
   * coordinator, teacher-sync and its ring peers.
   */
  security: TransportSecurity;
  /** Stable worker id. @default `<hostname>-<pid>` */
  workerId?: string;
  /** Address of the Collective gRPC server. @default "127.0.0.1:0" */
  listen?: string;
  /**
   * "host:port" of the Collective endpoint's TCP data listener, which peers dial after an
   * OpenDataLink call (transport 'tcp'). @default the host part of `listen`, port 0
   */
  dataListen?: string;
  /** Host peers dial (the pod IP in Kubernetes). @default the host part of `listen` */
  advertiseHost?: string;
  /** Compute backend to select (idempotent when already selected). @default 'wasm' */
  backend?: ComputeBackend;
  /** S3 client for images and checkpoints. @default one from the environment */
  s3?: S3Client;
  /** Image objects in flight at once. @default 16 */
  fetchConcurrency?: number;
  /** Threads that decode and crop images. @default the machine's available parallelism */
  loaderThreads?: number;
  /** Bytes of batches loaded ahead of the step. @default 512 MiB */
  prefetchBytes?: number;
  /** Heartbeat period, in ms. @default 2000 */
  heartbeatIntervalMs?: number;
  /** Registry for the training metrics. @default none */
  registry?: Registry;
  /** @default a JSON-lines logger on stderr at level info */
  logger?: Logger;
  /** Replaces the S3 loader (tests). */
  batchSource?: (request: BatchSourceRequest) => BatchSource;
  /** Ring settings other than what the Assignment fixes. */
  ring?: WorkerOptions['ring'];
  /** Deadline of one GetCenter attempt, in ms. @default the teacher-sync client's */
  getCenterTimeoutMs?: number;
  /** How long teacher-sync calls keep retrying, in ms. @default the teacher-sync client's (30000) */
  teacherSyncWaitMs?: number;
  /** Backoff between the retries of a failing image read. @default READ_BACKOFF (0.5, 1, 2 s upper bounds) */
  readBackoff?: BackoffOptions;
  /** Steps that get a NaN loss slot (test hook). @default from DINOFLEET_FAULT_NONFINITE_STEPS */
  nonfiniteFaults?: NonfiniteFaults;
  /** Deadline of a whole state transfer, in ms. @default 60000 */
  stateTransferTimeoutMs?: number;
}

/** A running worker. */
export interface WorkerProcess extends AsyncDisposable {
  readonly workerId: string;
  /** "host:port" peers dial for the ring. */
  readonly collectiveAddress: string;
  /** The gRPC server (Collective, StateTransfer, health). */
  readonly server: GrpcServer;
  readonly worker: Worker;
  /** Sends `Leaving{reason}` (unless a graceful leave was stopped), ends the run, closes the stream and the server. Idempotent. */
  close(reason?: string): Promise<void>;
}

/** The default worker id: hostname and pid. */
export function defaultWorkerId(): string {
  const host = process.env.HOSTNAME ?? 'worker';
  return `${host}-${process.pid}`;
}

/**
 * Starts a worker in this process: its gRPC server (Collective and StateTransfer, which a
 * joining rank fetches this worker's state from), then its Control stream.
 */
export async function startWorker(options: StartWorkerOptions): Promise<WorkerProcess> {
  const backend = options.backend ?? 'wasm';
  const info = await initComputeBackend(backend);
  const listen = options.listen ?? '127.0.0.1:0';
  const workerId = options.workerId ?? defaultWorkerId();
  const logger = options.logger ?? createLogger({ name: 'worker', level: LogLevel.Info });
  const { security } = options;
  // Only ring peers (and joiners fetching state) call this server: fleet members all.
  const server = new GrpcServer({ address: listen, credentials: serverCredentials(security, { clientCertificate: 'require' }) });
  // On a shared server the endpoint cannot see `listen`: without dataListen its data
  // listener would bind 127.0.0.1, out of other hosts' reach.
  const dataListen = options.dataListen ?? `${listen.slice(0, listen.lastIndexOf(':'))}:0`;
  const endpoint = new CollectiveEndpoint({
    server,
    dataListen,
    security,
    onRefusedDataLink: (refusal) => logger.warn('data link refused', { remoteAddress: refusal.remoteAddress, stage: refusal.stage, reason: refusal.reason }),
  });
  // Services go on before the server starts; the worker that answers exists only after
  // it (it needs the bound address), so the handler looks it up per call.
  const serving: { worker?: Worker } = {};
  server.addService(
    StateTransferService,
    stateTransferServer(
      {
        encodeHeldState: (jobId, step, requester) =>
          serving.worker === undefined ? Promise.reject(new UnavailableError('the worker is starting')) : serving.worker.encodeHeldState(jobId, step, requester),
      },
      { onInternalError: (err, path) => logger.error('state transfer failed', { path, err }) },
    ),
  );
  let bound;
  try {
    bound = await endpoint.start();
  } catch (err) {
    await server.close(0);
    throw err;
  }
  const host = options.advertiseHost ?? listen.slice(0, listen.lastIndexOf(':'));
  const collectiveAddress = `${host}:${bound.port}`;
  const worker = new Worker({
    coordinatorAddress: options.coordinatorAddress,
    security,
    workerId,
    endpoint,
    collectiveAddress,
    backend,
    simd: info.simd,
    logger,
    ...(options.s3 !== undefined && { s3: options.s3 }),
    ...(options.fetchConcurrency !== undefined && { fetchConcurrency: options.fetchConcurrency }),
    ...(options.loaderThreads !== undefined && { loaderThreads: options.loaderThreads }),
    ...(options.prefetchBytes !== undefined && { prefetchBytes: options.prefetchBytes }),
    ...(options.heartbeatIntervalMs !== undefined && { heartbeatIntervalMs: options.heartbeatIntervalMs }),
    ...(options.registry !== undefined && { registry: options.registry }),
    ...(options.batchSource !== undefined && { batchSource: options.batchSource }),
    ...(options.ring !== undefined && { ring: options.ring }),
    ...(options.getCenterTimeoutMs !== undefined && { getCenterTimeoutMs: options.getCenterTimeoutMs }),
    ...(options.teacherSyncWaitMs !== undefined && { teacherSyncWaitMs: options.teacherSyncWaitMs }),
    ...(options.readBackoff !== undefined && { readBackoff: options.readBackoff }),
    ...(options.nonfiniteFaults !== undefined && { nonfiniteFaults: options.nonfiniteFaults }),
    ...(options.stateTransferTimeoutMs !== undefined && { stateTransferTimeoutMs: options.stateTransferTimeoutMs }),
  });
  serving.worker = worker;
  worker.start();
  let closing: Promise<void> | undefined;
  const close = (reason = 'closed'): Promise<void> => {
    closing ??= (async () => {
      const results = await Promise.allSettled([worker.close(reason)]);
      results.push(...(await Promise.allSettled([endpoint.close()])));
      results.push(...(await Promise.allSettled([server.close(1_000)])));
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed.length > 0) throw new AggregateError(failed.map((f) => f.reason as unknown), 'closing the worker failed');
    })();
    return closing;
  };
  return { workerId, collectiveAddress, server, worker, close, [Symbol.asyncDispose]: () => close() };
}
