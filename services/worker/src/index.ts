/**
 * @dinofleet/worker: one rank of a training job. {@link startWorker} runs a whole worker
 * in this process (its Collective server and its Control stream), for tests and for
 * `main.ts`.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { CollectiveEndpoint } from '@dinofleet/collective';
import { initComputeBackend } from '@dinofleet/compute';
import type { ComputeBackend } from '@dinofleet/compute';
import { GrpcServer } from '@dinofleet/proto';
import { LogLevel, createLogger } from '@dinofleet/telemetry';
import type { Logger, Registry } from '@dinofleet/telemetry';
import { Worker } from './worker.ts';
import type { BatchSourceRequest, WorkerOptions } from './worker.ts';
import type { BatchSource } from './batch-loader.ts';

export { Worker, DEFAULT_HEARTBEAT_INTERVAL_MS, RECONNECT_INITIAL_BACKOFF_MS, RECONNECT_MAX_BACKOFF_MS, WORKER_VERSION } from './worker.ts';
export type { BatchSourceRequest, HeldState, WorkerOptions } from './worker.ts';
export { MemoryBatchSource, PrefetchingBatchSource, S3BatchLoader, INVALID_RECORD_REASON } from './batch-loader.ts';
export type { BatchSource, MemorySample, S3BatchLoaderOptions, TrainingBatch } from './batch-loader.ts';
export { LeaseReader } from './lease-reader.ts';
export type { LeaseReaderOptions, LeaseRecord } from './lease-reader.ts';
export { GradientLayout } from './gradient-buffer.ts';
export type { GradientSlot } from './gradient-buffer.ts';
export { STATE_HASH_BYTES, stateHash } from './state-hash.ts';
export { TeacherSyncConnection, bytesToFloat32, float32ToBytes } from './teacher-sync-client.ts';
export type { TeacherCenter, TeacherSnapshotUpload, TeacherSumsPush, TeacherSyncConnectionOptions } from './teacher-sync-client.ts';
export { checkpointTensors, encodeTeacherSnapshot, saveCheckpoint, teacherTensors } from './checkpoint-writer.ts';
export type { CheckpointTarget, StateTensor } from './checkpoint-writer.ts';
export { TEACHER_SNAPSHOT_EVERY_STEPS, computeStep, rankBatch, runStepLoop } from './step-loop.ts';
export { parseAssignedJobSpec } from './assigned-spec.ts';
export { WORKER_USAGE, WorkerConfigError, resolveWorkerConfig } from './worker-config.ts';
export type { WorkerConfig } from './worker-config.ts';
export type { StepLoopContext, StepOutcome, StepRing } from './step-loop.ts';

/** Settings of {@link startWorker}. */
export interface StartWorkerOptions {
  /** "host:port" of the coordinator. */
  coordinatorAddress: string;
  /** Stable worker id. @default `<hostname>-<pid>` */
  workerId?: string;
  /** Address of the Collective gRPC server. @default "127.0.0.1:0" */
  listen?: string;
  /** Host peers dial (the pod IP in Kubernetes). @default the host part of `listen` */
  advertiseHost?: string;
  /** Compute backend to select (idempotent when already selected). @default 'wasm' */
  backend?: ComputeBackend;
  /** S3 client for images and checkpoints. @default one from the environment */
  s3?: S3Client;
  /** Image objects in flight at once. @default 16 */
  fetchConcurrency?: number;
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
  /** GetCenter deadline, in ms. @default 120000 */
  getCenterTimeoutMs?: number;
}

/** A running worker. */
export interface WorkerProcess extends AsyncDisposable {
  readonly workerId: string;
  /** "host:port" peers dial for the ring. */
  readonly collectiveAddress: string;
  /** The gRPC server (Collective + health). */
  readonly server: GrpcServer;
  readonly worker: Worker;
  /** Sends `Leaving{reason}`, ends the run, closes the stream and the server. Idempotent. */
  close(reason?: string): Promise<void>;
}

/** The default worker id: hostname and pid. */
export function defaultWorkerId(): string {
  const host = process.env.HOSTNAME ?? 'worker';
  return `${host}-${process.pid}`;
}

/** Starts a worker in this process: its Collective server, then its Control stream. */
export async function startWorker(options: StartWorkerOptions): Promise<WorkerProcess> {
  const backend = options.backend ?? 'wasm';
  const info = await initComputeBackend(backend);
  const listen = options.listen ?? '127.0.0.1:0';
  const workerId = options.workerId ?? defaultWorkerId();
  const logger = options.logger ?? createLogger({ name: 'worker', level: LogLevel.Info });
  const server = new GrpcServer({ address: listen });
  const endpoint = new CollectiveEndpoint({ server });
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
    workerId,
    endpoint,
    collectiveAddress,
    backend,
    simd: info.simd,
    logger,
    ...(options.s3 !== undefined && { s3: options.s3 }),
    ...(options.fetchConcurrency !== undefined && { fetchConcurrency: options.fetchConcurrency }),
    ...(options.heartbeatIntervalMs !== undefined && { heartbeatIntervalMs: options.heartbeatIntervalMs }),
    ...(options.registry !== undefined && { registry: options.registry }),
    ...(options.batchSource !== undefined && { batchSource: options.batchSource }),
    ...(options.ring !== undefined && { ring: options.ring }),
    ...(options.getCenterTimeoutMs !== undefined && { getCenterTimeoutMs: options.getCenterTimeoutMs }),
  });
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
