/**
 * The coordinator process in one object: Redis, the `jobs` queue and its processor, the
 * worker registry, JobService + WorkerControl on one gRPC server, `/metrics`, the scaler.
 * `startCoordinator` is what `main.ts` runs and what tests run in-process.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { Queue, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import type { Job } from 'bullmq';
import { Redis } from 'ioredis';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { JOB_SPEC_LIMITS } from '@dinofleet/config';
import {
  ApiTokenAuthenticator,
  GrpcServer,
  JobServiceService,
  serverCredentials,
  splitHostPort,
  UnavailableError,
  WorkerControlService,
} from '@dinofleet/proto';
import type { ApiTokenEntry, HostPort, TransportSecurity } from '@dinofleet/proto';
import { createLogger, MetricsServer, Registry } from '@dinofleet/telemetry';
import type { Logger } from '@dinofleet/telemetry';
import { workerControlService } from './control-stream.ts';
import {
  DEFAULT_MAX_QUEUED_JOBS_PER_CALLER,
  DEFAULT_MAX_SPEC_BYTES,
  MAX_QUEUED_JOBS_PER_CALLER_RANGE,
  MAX_SPEC_BYTES_RANGE,
} from './coordinator-config.ts';
import { CoordinatorMetrics } from './coordinator-metrics.ts';
import { JobRunner } from './job-runner.ts';
import type { RunOutcome } from './job-runner.ts';
import { jobService } from './job-service.ts';
import type { QueuedJobData } from './job-service.ts';
import { JobStore, TERMINAL_STATES } from './job-store.ts';
import type { JobStateName } from './job-store.ts';
import { KubernetesScaler, kubeConfigFromFile } from './kubernetes-scaler.ts';
import type { KubernetesScalerOptions } from './kubernetes-scaler.ts';
import { LocalProcessScaler } from './local-process-scaler.ts';
import type { SpawnWorker } from './local-process-scaler.ts';
import { NoScaler } from './scaler.ts';
import type { Scaler } from './scaler.ts';
import { WorkerRegistry } from './worker-registry.ts';

/** Name of the BullMQ queue of training jobs. */
export const JOBS_QUEUE = 'jobs';

/** Options of {@link startCoordinator} (the flags of docs/cluster.md "coordinator"). */
export interface CoordinatorOptions {
  /** `redis://host:port`. Required. */
  readonly redisUrl: string;
  /**
   * `--tls-dir` (mutual TLS with the fleet CA: JobService for token holders, WorkerControl
   * for fleet members only) or `--insecure` (`INSECURE` of `@dinofleet/proto`). Required: nothing defaults
   * to plaintext. Local-scaler workers get the same `--tls-dir` (or `--insecure`).
   */
  readonly security: TransportSecurity;
  /**
   * The job API's tokens (`--api-tokens`, from `loadApiTokens`). Required with mTLS and
   * refused with insecure security, where every caller is an anonymous admin.
   */
  readonly apiTokens?: readonly ApiTokenEntry[];
  /** Largest SubmitJob spec, bytes of UTF-8, in [1024, 16 MiB]. @default 262144 */
  readonly maxSpecBytes?: number;
  /** Most jobs one caller may have QUEUED or STARTING, in [1, 100000]. @default 32 */
  readonly maxQueuedJobsPerCaller?: number;
  /** Prefix of every Redis key and BullMQ queue. @default 'dinofleet' */
  readonly redisPrefix?: string;
  /** teacher-sync "host:port" sent in every Assignment. Required. */
  readonly teacherSyncAddress: string;
  /** gRPC listen address. @default '127.0.0.1:0' */
  readonly listen?: string;
  /** `/metrics` listen address. @default '127.0.0.1:0' */
  readonly metricsListen?: string;
  /** Jobs run at once. @default 1 */
  readonly maxRunningJobs?: number;
  /**
   * 'none' (workers are started by someone else), 'local' (worker processes), 'kubernetes'
   * (the worker StatefulSet's scale subresource, settings in {@link kubernetes}), or a
   * function making a Scaler. @default 'none'
   */
  readonly scaler?: 'none' | 'local' | 'kubernetes' | ((coordinatorAddress: string) => Scaler);
  /** Kubernetes scaler: the StatefulSet, its namespace, and how to reach the API server. */
  readonly kubernetes?: CoordinatorKubernetesOptions;
  /** Workers the scaler makes exist at boot and keeps at least while jobs want fewer. @default 0 */
  readonly initialWorkers?: number;
  /** Local scaler: `--backend` of its workers. @default 'wasm' */
  readonly workerBackend?: string;
  /** Local scaler: directory of `<id>.log` files. */
  readonly workerLogDir?: string;
  /** Local scaler: how to spawn a worker. @default `spawnService` of `@dinofleet/local` */
  readonly spawnWorker?: SpawnWorker;
  /** A job fails if its workers do not register within this, seconds. @default 300 */
  readonly workerWaitSeconds?: number;
  /** A silent worker is lost after this, seconds. @default 10 */
  readonly heartbeatTimeoutSeconds?: number;
  /**
   * After a restart, how long a running job waits for workers holding its committed state
   * before it restores its checkpoint, seconds. @default 10
   */
  readonly resumeWaitSeconds?: number;
  /** S3 client; @default one from `resolveS3Config({}, env)` (closed with the coordinator). */
  readonly s3Client?: S3Client;
  /** Environment for S3 settings. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** Logger. @default JSON lines on stderr at info */
  readonly logger?: Logger;
  /** How long close() lets gRPC calls drain, ms. @default 10000 */
  readonly closeGraceMs?: number;
}

/** Settings of the Kubernetes scaler (`--scaler kubernetes`). */
export interface CoordinatorKubernetesOptions extends Pick<KubernetesScalerOptions, 'statefulSet' | 'namespace' | 'kubeConfig' | 'callTimeoutMs' | 'operationTimeoutMs' | 'retry'> {
  /** A kubeconfig file to use instead of the in-cluster configuration (`--kubeconfig`); ignored when `kubeConfig` is given. */
  readonly kubeconfigPath?: string;
}

/** A running coordinator. */
export interface Coordinator extends AsyncDisposable {
  /** "host:port" of JobService and WorkerControl. */
  readonly grpcAddress: string;
  /** "host:port" of `/metrics` and `/healthz`. */
  readonly metricsAddress: string;
  /** Internals for tests. */
  readonly store: JobStore;
  readonly registry: WorkerRegistry;
  /** The runner of a job running here. */
  runnerOf(jobId: string): JobRunner | undefined;
  /** Health NOT_SERVING, runners suspended, scaler workers stopped, everything closed. Idempotent. */
  close(): Promise<void>;
}

/**
 * Largest gRPC message the coordinator's port receives or sends, bytes. Its biggest real
 * messages: a SubmitJobRequest (the spec, up to `maxSpecBytes`), GetJob's answer (the same
 * spec back), and a CommitStep, which carries a rank's per-step sample ids (varints of at
 * most 10 bytes) and their epochs (at most 3 bytes below a million epochs) for a per-rank
 * batch that the spec schema lets reach `maxGlobalBatchSize` (2^20) on one worker: about
 * 13 MiB. An Assignment holds the resolved spec (parseJobSpec reads at most 64 KiB) and at
 * most 1024 ranks. So 16 MiB, or the spec limit with room for the rest of the message.
 */
export function coordinatorMaxMessageBytes(maxSpecBytes: number): number {
  const commitStepBytes = JOB_SPEC_LIMITS.maxGlobalBatchSize * (10 + 3);
  const mib = 1024 * 1024;
  return Math.max(16 * mib, Math.ceil((commitStepBytes + mib) / mib) * mib, maxSpecBytes + mib);
}

function checkInteger(value: number, field: string, range: { readonly min: number; readonly max: number }): number {
  if (!Number.isInteger(value) || value < range.min || value > range.max) {
    throw new RangeError(`${field} must be an integer in [${range.min}, ${range.max}], got ${value}`);
  }
  return value;
}

function hostPortOf(address: string, flag: string): HostPort {
  const parsed = splitHostPort(address);
  if (parsed === undefined) throw new RangeError(`${flag} must be host:port, got ${JSON.stringify(address)}`);
  return parsed;
}

/** Starts a coordinator; resolves once it serves. */
export async function startCoordinator(options: CoordinatorOptions): Promise<Coordinator> {
  const logger = options.logger ?? createLogger({ name: 'coordinator' });
  const prefix = options.redisPrefix ?? 'dinofleet';
  const maxRunningJobs = options.maxRunningJobs ?? 1;
  if (!Number.isInteger(maxRunningJobs) || maxRunningJobs < 1) throw new RangeError(`maxRunningJobs must be an integer >= 1, got ${maxRunningJobs}`);
  const workerWaitMs = (options.workerWaitSeconds ?? 300) * 1000;
  const heartbeatTimeoutMs = (options.heartbeatTimeoutSeconds ?? 10) * 1000;
  const metricsListen = hostPortOf(options.metricsListen ?? '127.0.0.1:0', 'metricsListen');
  const { security } = options;
  if (security.kind === 'mtls' && (options.apiTokens === undefined || options.apiTokens.length === 0)) {
    throw new RangeError('apiTokens (--api-tokens) is required with mutual TLS: without tokens nobody could call the job API');
  }
  if (security.kind === 'insecure' && options.apiTokens !== undefined) {
    throw new RangeError('--api-tokens has no effect with --insecure (plaintext carries no authentication); drop one');
  }
  const authenticator = security.kind === 'mtls' ? new ApiTokenAuthenticator(options.apiTokens ?? []) : undefined;
  const maxSpecBytes = checkInteger(options.maxSpecBytes ?? DEFAULT_MAX_SPEC_BYTES, 'maxSpecBytes', MAX_SPEC_BYTES_RANGE);
  const maxQueuedJobsPerCaller = checkInteger(
    options.maxQueuedJobsPerCaller ?? DEFAULT_MAX_QUEUED_JOBS_PER_CALLER,
    'maxQueuedJobsPerCaller',
    MAX_QUEUED_JOBS_PER_CALLER_RANGE,
  );
  // Before anything starts: a TLS directory without tls.crt/tls.key throws here.
  const credentials = serverCredentials(security, { clientCertificate: 'request' });

  const cleanups: (() => Promise<unknown> | void)[] = [];
  const runCleanups = async (): Promise<void> => {
    const errors: unknown[] = [];
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) logger.warn('some cleanups failed', { errors: errors.map(String) });
  };

  try {
    // Reconnects forever (a Redis restart is survived: commands wait in the offline queue,
    // a commit transaction cut short is retried by the runner), and resends a command that
    // met a Redis still loading its data after the restart.
    const redis = new Redis(options.redisUrl, {
      maxRetriesPerRequest: null,
      lazyConnect: true,
      enableOfflineQueue: true,
      retryStrategy: (times) => Math.min(100 * times, 2000),
      reconnectOnError: (err) => (/^(LOADING|READONLY)/.test(err.message) ? 2 : false),
    });
    redis.on('error', (err: Error) => logger.debug('redis error', { err: err.message }));
    cleanups.push(() => redis.quit().catch(() => redis.disconnect()));
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      throw new UnavailableError(
        `cannot reach Redis at ${options.redisUrl}: ${err instanceof Error ? err.message : String(err)}; start redis-server or fix --redis-url`,
        { cause: err },
      );
    }

    const s3 = options.s3Client ?? createS3Client(resolveS3Config({}, options.env ?? process.env));
    if (options.s3Client === undefined) cleanups.push(() => s3.destroy());

    const store = new JobStore(redis, prefix);
    const registry = new WorkerRegistry({
      heartbeatTimeoutMs,
      onCountChange: (n) => metrics.workersRegistered.set({}, n),
    });
    const metricsRegistry = new Registry();
    const metrics = new CoordinatorMetrics(metricsRegistry, async () => {
      const ids = await store.listIds();
      const counts = new Map<JobStateName, number>();
      for (const record of await store.getMany(ids)) counts.set(record.state, (counts.get(record.state) ?? 0) + 1);
      return counts;
    });
    const metricsServer = new MetricsServer({ registry: metricsRegistry });
    cleanups.push(() => metricsServer.close());
    const { port: metricsPort } = await metricsServer.start(metricsListen);

    const queue = new Queue<QueuedJobData>(JOBS_QUEUE, { connection: redis, prefix });
    cleanups.push(() => queue.close());

    const runners = new Map<string, JobRunner>();
    const wanted = new Map<string, number>();
    let scaler: Scaler = new NoScaler();
    const initialWorkers = options.initialWorkers ?? 0;
    const requestWorkers = async (jobId: string, workers: number): Promise<void> => {
      if (workers > 0) wanted.set(jobId, workers);
      else wanted.delete(jobId);
      const total = [...wanted.values()].reduce((a, b) => a + b, 0);
      await scaler.scaleTo(Math.max(initialWorkers, total));
    };
    const releaseWorkers = async (jobId: string, workerIds: readonly string[], workers: number): Promise<void> => {
      wanted.set(jobId, workers);
      // The named workers first, so the count that follows has nothing left to stop.
      await scaler.release(workerIds);
      const total = [...wanted.values()].reduce((a, b) => a + b, 0);
      await scaler.scaleTo(Math.max(initialWorkers, total));
    };

    // 'request': API clients need only the CA (their bearer token says who they are);
    // WorkerControl admits only callers whose certificate the fleet CA issued.
    const server = new GrpcServer({ address: options.listen ?? '127.0.0.1:0', credentials, maxMessageBytes: coordinatorMaxMessageBytes(maxSpecBytes) });
    const closingController = new AbortController();
    server.addService(JobServiceService, jobService({
      store,
      queue,
      s3,
      logger,
      cancelRunner: (jobId, reason) => {
        const runner = runners.get(jobId);
        runner?.cancel(reason);
        return runner !== undefined;
      },
      scaleRunner: (jobId, workers) => {
        const runner = runners.get(jobId);
        runner?.scale(workers);
        return runner !== undefined;
      },
      closing: closingController.signal,
      authenticator,
      maxSpecBytes,
      maxQueuedJobsPerCaller,
    }));
    server.addService(WorkerControlService, workerControlService({
      registry,
      security,
      logger,
      runnerOf: (jobId) => runners.get(jobId),
      heldJobIsLive: async (jobId) => {
        const record = await store.get(jobId);
        return record !== undefined && !TERMINAL_STATES.has(record.state);
      },
    }));
    const grpcGraceMs = options.closeGraceMs ?? 10_000;
    cleanups.push(() => server.close(grpcGraceMs));
    const { address: grpcAddress } = await server.start();

    // Control and watch streams end before the gRPC server drains, or it would wait for them.
    cleanups.push(() => {
      registry.close();
      closingController.abort();
    });
    if (options.scaler === 'local') {
      scaler = new LocalProcessScaler({
        coordinatorAddress: grpcAddress,
        security,
        ...(options.workerBackend !== undefined && { backend: options.workerBackend }),
        ...(options.workerLogDir !== undefined && { logDir: options.workerLogDir }),
        ...(options.spawnWorker !== undefined && { spawn: options.spawnWorker }),
        logger,
      });
    } else if (options.scaler === 'kubernetes') {
      const kubernetes = options.kubernetes;
      if (kubernetes === undefined) throw new RangeError("scaler 'kubernetes' needs the kubernetes options (statefulSet, namespace)");
      const kubeConfig = kubernetes.kubeConfig ?? (kubernetes.kubeconfigPath === undefined ? undefined : await kubeConfigFromFile(kubernetes.kubeconfigPath));
      // Reads the scale once: a missing StatefulSet or Role stops the start with a message.
      scaler = await KubernetesScaler.connect({
        statefulSet: kubernetes.statefulSet,
        namespace: kubernetes.namespace,
        ...(kubeConfig !== undefined && { kubeConfig }),
        ...(kubernetes.callTimeoutMs !== undefined && { callTimeoutMs: kubernetes.callTimeoutMs }),
        ...(kubernetes.operationTimeoutMs !== undefined && { operationTimeoutMs: kubernetes.operationTimeoutMs }),
        ...(kubernetes.retry !== undefined && { retry: kubernetes.retry }),
        logger,
      });
    } else if (typeof options.scaler === 'function') {
      scaler = options.scaler(grpcAddress);
    }
    // Workers go before the gRPC server closes (cleanups run in reverse), so their
    // Leaving reaches a coordinator whose runners are already suspended.
    const activeScaler = scaler;
    cleanups.push(() => activeScaler.close());
    if (initialWorkers > 0) {
      // In the background: the coordinator serves (and is ready) while workers boot.
      scaler.scaleTo(initialWorkers).catch((err: unknown) => logger.error('starting the initial workers failed', { err }));
    }

    const context = {
      store,
      registry,
      metrics,
      logger,
      s3,
      connection: redis,
      prefix,
      teacherSyncAddress: options.teacherSyncAddress,
      workerWaitMs,
      requestWorkers,
      releaseWorkers,
      ...(options.resumeWaitSeconds !== undefined && { resumeWaitMs: options.resumeWaitSeconds * 1000 }),
    };
    const processor = async (job: Job<QueuedJobData>, token?: string): Promise<{ committedStep: number; checkpointUri: string }> => {
      const jobId = job.data.jobId;
      const running = runners.get(jobId);
      let outcome: RunOutcome;
      if (running !== undefined) {
        // Our lock lapsed (Redis was away longer than lockDuration) and the job came back
        // as stalled: the run here goes on; this delivery reports its outcome.
        logger.warn('job delivered again while it runs here; following the running run', { jobId });
        outcome = await running.finished();
      } else {
        const runner = new JobRunner(context, jobId);
        runners.set(jobId, runner);
        try {
          outcome = await runner.run();
        } finally {
          runners.delete(jobId);
        }
      }
      switch (outcome.kind) {
        case 'succeeded':
          return { committedStep: outcome.committedStep, checkpointUri: outcome.checkpointUri };
        case 'failed':
          throw new UnrecoverableError(outcome.message);
        case 'cancelled':
          throw new UnrecoverableError(`cancelled: ${outcome.reason}`);
        case 'suspended':
          // Back to waiting for the next coordinator, without counting as a failure.
          await job.moveToWait(token);
          throw new WaitingError();
        default: {
          const unknown: never = outcome;
          return unknown;
        }
      }
    };
    // One coordinator per prefix: a job still active now belongs to a coordinator that
    // died (SIGKILL), so it goes back to waiting at once instead of after its lock expires.
    for (const active of await queue.getActive()) {
      await active.moveToWait('0').catch((err: unknown) => logger.warn('moving an orphaned job back to waiting failed', { jobId: active.id, err }));
      logger.info('job of an earlier coordinator moved back to waiting', { jobId: active.id });
    }
    const jobsWorker = new Worker<QueuedJobData>(JOBS_QUEUE, processor, {
      connection: redis,
      prefix,
      concurrency: maxRunningJobs,
      // Short lock and stalled check: a job whose coordinator died is picked up within
      // seconds even by another coordinator that did not do the boot move above.
      lockDuration: 5_000,
      stalledInterval: 2_000,
      maxStalledCount: 1000,
    });
    jobsWorker.on('error', (err) => logger.warn('jobs worker error', { err: err.message }));
    jobsWorker.on('failed', (job, err) => logger.info('job ended', { jobId: job?.id, outcome: err.message }));
    cleanups.push(async () => {
      for (const runner of runners.values()) runner.suspend();
      await Promise.all([...runners.values()].map((r) => r.finished()));
      await jobsWorker.close();
    });

    let closing: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closing ??= (async () => {
        server.setServing('', false);
        server.setServing('dinofleet.v1.JobService', false);
        server.setServing('dinofleet.v1.WorkerControl', false);
        // Runners first (no job reacts to workers going away), then workers, then servers.
        await runCleanups();
      })();
      return closing;
    };
    const metricsHost = metricsListen.host;
    logger.info('coordinator serving', {
      grpcAddress,
      metricsAddress: `${metricsHost}:${metricsPort}`,
      prefix,
      security: security.kind,
      apiTokens: authenticator?.size ?? 0,
      maxSpecBytes,
      maxQueuedJobsPerCaller,
    });
    return {
      grpcAddress,
      metricsAddress: `${metricsHost}:${metricsPort}`,
      store,
      registry,
      runnerOf: (jobId) => runners.get(jobId),
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (err) {
    await runCleanups();
    throw err;
  }
}
