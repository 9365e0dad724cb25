/**
 * One worker process's life: the Control stream to the coordinator (Register, heartbeats,
 * reconnects with backoff) and the state machine around it: idle → assigned (one
 * {@link JobRun} per Assignment) → committed steps → Stop → idle (docs/cluster.md,
 * "Control stream and the step loop").
 */
import { availableParallelism } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import type { S3Client } from '@aws-sdk/client-s3';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { CollectiveEndpoint, RingAllReduceOptions } from '@dinofleet/collective';
import { RingAllReduce } from '@dinofleet/collective';
import type { ComputeBackend as ComputeBackendName } from '@dinofleet/compute';
import { parseS3Uri, resolveRecipe } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { createDinoState, disposeDinoState } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import {
  AbortedError,
  ComputeBackend,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
  WorkerControlClient,
  callUnary,
  createClient,
  fromServiceError,
  withRetry,
} from '@dinofleet/proto';
import type { Assignment, CommitStep, ControlRequest, ControlResponse, ShardLease } from '@dinofleet/proto';
import { SkipReason, createTrainingMetrics } from '@dinofleet/telemetry';
import type { Logger, Registry, TrainingMetrics } from '@dinofleet/telemetry';
import { parseAssignedJobSpec } from './assigned-spec.ts';
import { PrefetchingBatchSource, S3BatchLoader } from './batch-loader.ts';
import type { BatchSource } from './batch-loader.ts';
import { LeaseReader } from './lease-reader.ts';
import { rankBatch, runStepLoop } from './step-loop.ts';
import { TeacherSyncConnection } from './teacher-sync-client.ts';

/** Version reported in Register. */
export const WORKER_VERSION = '0.1.0';
/** Default of {@link WorkerOptions.heartbeatIntervalMs}. */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000;
/** First reconnect backoff, in ms. */
export const RECONNECT_INITIAL_BACKOFF_MS = 200;
/** Largest reconnect backoff, in ms. */
export const RECONNECT_MAX_BACKOFF_MS = 5_000;
/** A stream that stayed up this long counts as healthy: the backoff starts over. */
const HEALTHY_STREAM_MS = 5_000;

/** What a batch source factory is told about the rank it loads for. */
export interface BatchSourceRequest {
  readonly assignment: Assignment;
  readonly spec: JobSpec;
  /** This rank's images per step. */
  readonly perRankBatch: number;
  /** Position of its first image in the global batch. */
  readonly batchOffset: number;
  /** Asks the coordinator for the next lease. */
  readonly acquireLease: () => Promise<ShardLease>;
}

/** Settings of a {@link Worker}. */
export interface WorkerOptions {
  /** "host:port" of the coordinator's WorkerControl service. */
  coordinatorAddress: string;
  /** Stable worker id; reused on every reconnect. */
  workerId: string;
  /** This worker's Collective endpoint, started, shared by every generation. */
  endpoint: CollectiveEndpoint;
  /** "host:port" peers dial to reach `endpoint`. @default endpoint.address */
  collectiveAddress?: string;
  /** The compute backend tfjs runs on (reported in Register). */
  backend: ComputeBackendName;
  /** Whether wasm SIMD is in use (reported as the "simd" feature). @default false */
  simd?: boolean;
  /** S3 client for images and checkpoints. @default one from the environment (`resolveS3Config`) */
  s3?: S3Client;
  /** Image objects in flight at once. @default 16 */
  fetchConcurrency?: number;
  /** Heartbeat period, in ms. @default 2000 */
  heartbeatIntervalMs?: number;
  /** Registry for the training metrics. @default none (no metrics) */
  registry?: Registry;
  logger: Logger;
  /** Replaces the S3 loader, e.g. with in-memory batches in tests. */
  batchSource?: (request: BatchSourceRequest) => BatchSource;
  /** Ring settings other than what the Assignment fixes. */
  ring?: Omit<RingAllReduceOptions, 'endpoint' | 'job' | 'generation' | 'rank' | 'peers'>;
  /** Deadline of an AcquireLease call, in ms. @default 30000 */
  acquireLeaseTimeoutMs?: number;
  /** GetCenter deadline, in ms. @default 120000 */
  getCenterTimeoutMs?: number;
}

/** The training state a worker holds between generations. */
export interface HeldState {
  readonly jobId: string;
  readonly state: DinoState;
  /** Steps committed (acknowledged) for this state; `state.step` may be one ahead mid-step. */
  committedStep: number;
  /** Hash of the state after `committedStep` steps (empty before the first commit). */
  committedHash: Buffer;
}

interface CommitWaiter {
  readonly step: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

/** One Assignment being trained. */
interface JobRun {
  readonly assignment: Assignment;
  readonly abort: AbortController;
  /** The step loop; settles when it has stopped. */
  done: Promise<void>;
  /** Last step computed (committed or not). */
  computedStep: number;
  /** Closes the ring, the loader and the teacher-sync channel (not the metrics). Idempotent. */
  readonly close: () => Promise<void>;
  /** The job's series on this rank: kept after the last step, removed when the run ends. */
  readonly metrics: TrainingMetrics | undefined;
}

const BACKEND_ENUM: Readonly<Record<ComputeBackendName, ComputeBackend>> = {
  wasm: ComputeBackend.COMPUTE_BACKEND_WASM,
  cpu: ComputeBackend.COMPUTE_BACKEND_CPU,
  tensorflow: ComputeBackend.COMPUTE_BACKEND_TENSORFLOW,
};

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** SkipReason of the metrics for a SkippedSample reason. */
function skipReasonOf(reason: string): SkipReason {
  const known = Object.values(SkipReason).find((r) => r === reason);
  return known ?? SkipReason.Other;
}

/**
 * A worker: holds the Control stream, trains Assignments, commits steps. `start()`,
 * then `close()` (or `await using`).
 */
export class Worker implements AsyncDisposable {
  readonly workerId: string;
  readonly #options: WorkerOptions;
  readonly #logger: Logger;
  readonly #client: WorkerControlClient;
  readonly #stopping = new AbortController();
  #loop: Promise<void> | undefined;
  #call: ClientDuplexStream<ControlRequest, ControlResponse> | undefined;
  #held: HeldState | null = null;
  #run: JobRun | null = null;
  #waiter: CommitWaiter | null = null;
  /** Serialises the handling of Assignment / Abort / Stop. */
  #queue: Promise<void> = Promise.resolve();
  #s3: S3Client | undefined;
  #closed: Promise<void> | undefined;
  #registrations = 0;

  constructor(options: WorkerOptions) {
    if (options.workerId === '') throw new InvalidArgumentError('workerId must not be empty');
    this.workerId = options.workerId;
    this.#options = options;
    this.#logger = options.logger.child({ workerId: options.workerId });
    this.#client = createClient(WorkerControlClient, options.coordinatorAddress);
    this.#s3 = options.s3;
  }

  /** The training state held now (null when idle without state); for tests and probes. */
  get heldState(): HeldState | null {
    return this.#held;
  }

  /** Times this worker has sent Register (one per stream). */
  get registrations(): number {
    return this.#registrations;
  }

  /** Starts the Control stream (and reconnects it until {@link close}). Idempotent. */
  start(): void {
    if (this.#closed !== undefined) throw new FailedPreconditionError('Worker.start() after close()');
    this.#loop ??= this.#controlLoop();
  }

  // ---------------------------------------------------------------------------------
  // The Control stream

  async #controlLoop(): Promise<void> {
    let backoffMs = RECONNECT_INITIAL_BACKOFF_MS;
    while (!this.#stopping.signal.aborted) {
      const opened = Date.now();
      const healthy = await this.#runStream();
      if (this.#stopping.signal.aborted) break;
      if (healthy || Date.now() - opened >= HEALTHY_STREAM_MS) backoffMs = RECONNECT_INITIAL_BACKOFF_MS;
      // Jitter: a coordinator restart must not see every worker reconnect at once.
      const waitMs = backoffMs * (0.5 + Math.random() * 0.5);
      this.#logger.info('control stream ended; reconnecting', { inMs: Math.round(waitMs) });
      await sleep(waitMs, this.#stopping.signal);
      backoffMs = Math.min(backoffMs * 2, RECONNECT_MAX_BACKOFF_MS);
    }
  }

  /** One Control stream, from Register to its end. Resolves true when it carried a message. */
  async #runStream(): Promise<boolean> {
    // Deliberately no deadline: the stream lives as long as the membership it stands for;
    // a dead coordinator is noticed by keepalive pings (createClient's channel settings).
    const call = this.#client.control();
    this.#call = call;
    let heardFrom = false;
    const ended = new Promise<void>((resolve) => {
      call.on('data', (message: ControlResponse) => {
        heardFrom = true;
        this.#onMessage(message);
      });
      call.on('error', (err: Error) => {
        if (!this.#stopping.signal.aborted) this.#logger.warn('control stream failed', { err: fromServiceError(err).message });
        resolve();
      });
      call.on('end', () => resolve());
      call.on('close', () => resolve());
    });
    const heartbeat = setInterval(() => this.#sendHeartbeat(), this.#options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS);
    try {
      await this.#register(call);
      await ended;
    } catch (err) {
      this.#logger.warn('control stream could not register', { err: errorMessage(err) });
      call.cancel();
    } finally {
      clearInterval(heartbeat);
      if (this.#call === call) this.#call = undefined;
      call.removeAllListeners('data');
      // Errors after the end (a late cancel) must not crash the process.
      call.on('error', () => undefined);
    }
    // Membership ended with the stream: the coordinator has dropped this rank.
    this.#enqueue(() => this.#endRun(new UnavailableError('the control stream to the coordinator ended'), 'keep-committed'));
    return heardFrom;
  }

  async #register(call: ClientDuplexStream<ControlRequest, ControlResponse>): Promise<void> {
    // Job fields only for a state at an acknowledged step: the coordinator resumes a job
    // with workers whose (step, hash) match its last commit, and fails it on a mismatch.
    const held = this.#held !== null && this.#held.committedHash.length > 0 ? this.#held : null;
    const options = this.#options;
    call.write({
      message: {
        $case: 'register',
        register: {
          workerId: this.workerId,
          collectiveAddress: options.collectiveAddress ?? options.endpoint.address,
          backend: BACKEND_ENUM[options.backend],
          capabilities: {
            accelerators: 0,
            memoryBytes: getHeapStatistics().heap_size_limit,
            cpuCores: availableParallelism(),
            features: options.simd === true ? ['simd'] : [],
            version: WORKER_VERSION,
          },
          jobId: held?.jobId ?? '',
          stateStep: held?.committedStep ?? 0,
          stateHash: held?.committedHash ?? Buffer.alloc(0),
        },
      },
    });
    this.#registrations++;
    this.#logger.info('registered', { coordinator: options.coordinatorAddress, jobId: held?.jobId ?? '', stateStep: held?.committedStep ?? 0 });
    return Promise.resolve();
  }

  #send(message: ControlRequest['message']): boolean {
    const call = this.#call;
    if (call === undefined) return false;
    call.write({ message });
    return true;
  }

  #sendHeartbeat(): void {
    const run = this.#run;
    this.#send({
      $case: 'heartbeat',
      heartbeat: { sentAtUnixMs: Date.now(), generation: run?.assignment.generation ?? 0, step: run?.computedStep ?? this.#held?.state.step ?? 0 },
    });
  }

  #onMessage(message: ControlResponse): void {
    const m = message.message;
    if (m === undefined) return;
    switch (m.$case) {
      case 'assignment':
        this.#enqueue(() => this.#onAssignment(m.assignment));
        break;
      case 'commitAck':
        this.#onCommitAck(m.commitAck.generation, m.commitAck.step);
        break;
      case 'abort': {
        const run = this.#run;
        if (run !== null && m.abort.generation < run.assignment.generation) {
          this.#logger.info('abort of an older generation ignored', { generation: m.abort.generation });
          break;
        }
        this.#logger.warn('generation aborted', { generation: m.abort.generation, reason: m.abort.reason });
        this.#enqueue(() => this.#endRun(new AbortedError(`generation ${m.abort.generation} aborted: ${m.abort.reason}`), 'keep-committed'));
        break;
      }
      case 'stop':
        this.#logger.info('stopped', { reason: m.stop.reason, jobId: this.#held?.jobId ?? '' });
        this.#enqueue(async () => {
          await this.#endRun(new AbortedError(`stopped: ${m.stop.reason}`), 'drop');
        });
        break;
    }
  }

  #enqueue(task: () => Promise<void>): void {
    this.#queue = this.#queue.then(task).catch((err: unknown) => {
      this.#logger.error('control message handling failed', { err: errorMessage(err) });
    });
  }

  #onCommitAck(generation: number, step: number): void {
    const waiter = this.#waiter;
    const run = this.#run;
    if (waiter === null || run === null || generation !== run.assignment.generation || step !== waiter.step) {
      this.#logger.warn('unexpected CommitAck ignored', { generation, step, waiting: waiter?.step ?? null });
      return;
    }
    this.#waiter = null;
    waiter.resolve();
  }

  /** Sends a CommitStep and resolves when its CommitAck arrives. */
  #commit(run: JobRun, commit: CommitStep): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (run.abort.signal.aborted) {
        reject(new AbortedError('the run ended before its commit'));
        return;
      }
      this.#waiter = { step: commit.step, resolve, reject };
      if (!this.#send({ $case: 'commitStep', commitStep: commit })) {
        this.#waiter = null;
        reject(new UnavailableError(`no control stream to send the commit of step ${commit.step} on`));
      }
    });
  }

  /**
   * Ends the current stream, so the loop re-registers on a new one. Half-closes first so
   * what was written (a Leaving) reaches the coordinator; cancels if it does not end
   * its side within `graceMs`.
   */
  #restartStream(graceMs = 2_000): void {
    const call = this.#call;
    if (call === undefined) return;
    // Nothing more may be written on it (heartbeats would fail after end()).
    this.#call = undefined;
    call.end();
    const force = setTimeout(() => call.cancel(), graceMs);
    const settled = (): void => clearTimeout(force);
    call.once('end', settled);
    call.once('close', settled);
    call.once('error', settled);
  }

  // ---------------------------------------------------------------------------------
  // Assignments and runs

  #dropState(why: string): void {
    const held = this.#held;
    if (held === null) return;
    this.#held = null;
    disposeDinoState(held.state);
    this.#logger.info('training state dropped', { jobId: held.jobId, step: held.state.step, why });
  }

  /**
   * Ends the current run (if any) and waits for it to stop. `keep-committed` keeps the
   * state when it holds no uncommitted update (an Abort, a broken stream); `drop` drops it
   * (Stop, a failure).
   */
  async #endRun(reason: Error, state: 'keep-committed' | 'drop'): Promise<void> {
    const run = this.#run;
    if (run !== null) {
      this.#run = null;
      run.abort.abort(reason);
      const waiter = this.#waiter;
      this.#waiter = null;
      waiter?.reject(reason);
      await run.close();
      await run.done.catch(() => undefined);
      run.metrics?.remove();
    }
    const held = this.#held;
    if (held === null) return;
    if (state === 'drop') this.#dropState(reason.message);
    else if (held.state.step !== held.committedStep) this.#dropState(`it holds uncommitted step ${held.state.step} (${reason.message})`);
  }

  async #onAssignment(a: Assignment): Promise<void> {
    const log = this.#logger.child({ jobId: a.jobId, generation: a.generation, rank: a.rank });
    if (this.#run !== null) await this.#endRun(new AbortedError(`superseded by generation ${a.generation}`), 'keep-committed');
    try {
      await this.#startRun(a, log);
    } catch (err) {
      log.error('assignment failed', { err: errorMessage(err) });
      this.#dropState(`assignment failed: ${errorMessage(err)}`);
      this.#send({ $case: 'leaving', leaving: { reason: `rank ${a.rank} (${this.workerId}) could not start generation ${a.generation}: ${errorMessage(err)}` } });
      this.#restartStream();
    }
  }

  async #startRun(a: Assignment, log: Logger): Promise<void> {
    const worldSize = a.ranks.length;
    if (a.ranks.some((peer, i) => peer.rank !== i)) throw new InvalidArgumentError('the rank list is not in rank order');
    if (a.rank >= worldSize) throw new InvalidArgumentError(`rank ${a.rank} outside a rank list of ${worldSize}`);
    if (a.gradientAccumulation > 1) throw new InvalidArgumentError(`gradient_accumulation ${a.gradientAccumulation} is not supported (1 only)`);
    const { offset, size } = rankBatch(a.globalBatch, worldSize, a.rank);
    if (size !== a.perRankBatch) {
      throw new InvalidArgumentError(`per_rank_batch ${a.perRankBatch} differs from the split of ${a.globalBatch} over ${worldSize} ranks (${size})`);
    }
    const spec = parseAssignedJobSpec(a.jobSpecJson);
    const recipe = resolveRecipe(spec);

    if (this.#held !== null && this.#held.jobId !== a.jobId) this.#dropState(`assigned to another job, ${a.jobId}`);
    if (this.#held === null) {
      const state = createDinoState(recipe, spec.spec.training.seed, { totalSteps: a.totalSteps });
      this.#held = { jobId: a.jobId, state, committedStep: state.step, committedHash: Buffer.alloc(0) };
    }
    const held = this.#held;
    if (held.state.step !== a.startStep) {
      // Issue 4 adds state transfer; until then a rank without the right state cannot join.
      log.warn('cannot join: the state is at another step; re-registering without it', { stateStep: held.state.step, startStep: a.startStep });
      this.#dropState(`state at step ${held.state.step}, assignment starts at ${a.startStep}`);
      this.#restartStream();
      return;
    }

    const ring = new RingAllReduce({
      ...this.#options.ring,
      endpoint: this.#options.endpoint,
      job: a.jobId,
      generation: a.generation,
      rank: a.rank,
      peers: a.ranks.map((peer) => peer.collectiveAddress),
    });
    const acquireLease = (): Promise<ShardLease> => this.#acquireLease(a);
    const request: BatchSourceRequest = { assignment: a, spec, perRankBatch: size, batchOffset: offset, acquireLease };
    const metrics: TrainingMetrics | undefined =
      this.#options.registry === undefined ? undefined : createTrainingMetrics(this.#options.registry, { job: a.jobId, rank: String(a.rank) });
    let batches: BatchSource;
    let teacherSync: TeacherSyncConnection | null = null;
    try {
      batches = this.#options.batchSource?.(request) ?? this.#s3BatchSource(request, recipe.vit.inChannels, log, metrics);
      if (a.teacherSyncAddress !== '') {
        teacherSync = new TeacherSyncConnection({
          address: a.teacherSyncAddress,
          ...(this.#options.getCenterTimeoutMs !== undefined && { getCenterTimeoutMs: this.#options.getCenterTimeoutMs }),
        });
      } else if (recipe.targets === 'centering') {
        throw new InvalidArgumentError('a centering recipe needs teacher_sync_address');
      }
    } catch (err) {
      await ring.close();
      throw err;
    }
    const checkpointSpec = spec.spec.checkpoint;
    const abort = new AbortController();
    let closed: Promise<void> | undefined;
    const close = (): Promise<void> => {
      closed ??= (async () => {
        await Promise.allSettled([ring.close(), batches.close()]);
        teacherSync?.close();
      })();
      return closed;
    };
    const run: JobRun = {
      assignment: a,
      abort,
      computedStep: held.state.step,
      close,
      metrics,
      done: Promise.resolve(),
    };
    log.info('generation started', { worldSize, startStep: a.startStep, totalSteps: a.totalSteps, perRankBatch: size, offset });
    const done = runStepLoop({
      jobId: a.jobId,
      generation: a.generation,
      rank: a.rank,
      worldSize,
      globalBatch: a.globalBatch,
      perRankBatch: size,
      batchOffset: offset,
      totalSteps: a.totalSteps,
      state: held.state,
      ring,
      batches,
      teacherSync,
      checkpoint:
        a.rank === 0 && checkpointSpec !== null
          ? { s3: this.#s3Client(), uri: checkpointSpec.uri, jobId: a.jobId, everySteps: checkpointSpec.everySteps }
          : null,
      commit: async (commit) => {
        await this.#commit(run, commit);
        held.committedStep = commit.step;
        held.committedHash = Buffer.from(commit.stateHash);
      },
      onComputed: (step) => {
        run.computedStep = step;
      },
      ...(metrics !== undefined && { metrics }),
      logger: log,
      signal: abort.signal,
    });
    run.done = done;
    this.#run = run;
    done.then(
      () => {
        log.info('all steps committed; waiting for Stop', { step: held.state.step });
        void close();
      },
      (err: unknown) => {
        if (abort.signal.aborted) return; // ended on purpose (Abort, Stop, a broken stream)
        this.#enqueue(() => this.#failRun(run, err, log));
      },
    );
    return Promise.resolve();
  }

  /** A step failed (ring, teacher-sync, S3): tell the coordinator, drop the state, re-register. */
  async #failRun(run: JobRun, err: unknown, log: Logger): Promise<void> {
    if (this.#run !== run) return;
    const step = this.#held?.state.step ?? run.computedStep;
    const reason = `rank ${run.assignment.rank} (${this.workerId}) failed at step ${step}: ${errorMessage(err)}`;
    log.error('step failed', { step, err: errorMessage(err) });
    await this.#endRun(err instanceof Error ? err : new Error(String(err)), 'drop');
    this.#send({ $case: 'leaving', leaving: { reason } });
    this.#restartStream();
  }

  async #acquireLease(a: Assignment): Promise<ShardLease> {
    const response = await withRetry(
      () =>
        callUnary(
          this.#client,
          'acquireLease',
          { jobId: a.jobId, generation: a.generation, rank: a.rank, workerId: this.workerId },
          { deadlineMs: this.#options.acquireLeaseTimeoutMs ?? 30_000 },
        ),
      { maxAttempts: 5, initialBackoffMs: 200 },
    );
    if (response.lease === undefined) throw new FailedPreconditionError('AcquireLease returned no lease');
    return response.lease;
  }

  #s3Client(): S3Client {
    this.#s3 ??= createS3Client(resolveS3Config());
    return this.#s3;
  }

  #s3BatchSource(request: BatchSourceRequest, channels: number, log: Logger, metrics: TrainingMetrics | undefined): BatchSource {
    const { assignment } = request;
    const lease = assignment.shardLease;
    if (lease === undefined) throw new InvalidArgumentError('the assignment has no shard lease');
    const manifest = parseS3Uri(assignment.manifestUri);
    const s3 = this.#s3Client();
    const reader = new LeaseReader({
      s3,
      bucket: manifest.bucket,
      key: manifest.key,
      etag: assignment.manifestEtag,
      firstLease: lease,
      acquireLease: request.acquireLease,
    });
    const loader = new S3BatchLoader({
      reader,
      s3,
      bucket: manifest.bucket,
      batchSize: request.perRankBatch,
      concurrency: this.#options.fetchConcurrency ?? 16,
      channels: channels === 1 ? 1 : 3,
      onSkip: (skipped, detail) => {
        log.warn('sample skipped', { sampleId: skipped.sampleId, key: skipped.key, reason: skipped.reason, detail });
        metrics?.skipSamples(skipReasonOf(skipped.reason));
      },
    });
    return new PrefetchingBatchSource(loader, Math.max(0, assignment.totalSteps - assignment.startStep));
  }

  // ---------------------------------------------------------------------------------
  // Shutdown

  /**
   * Leaves: sends `Leaving{reason}` when connected, ends the run, closes the stream and
   * drops the state. Idempotent; the endpoint stays the caller's.
   */
  close(reason = 'closed'): Promise<void> {
    this.#closed ??= this.#shutdown(reason);
    return this.#closed;
  }

  async #shutdown(reason: string): Promise<void> {
    this.#send({ $case: 'leaving', leaving: { reason } });
    this.#stopping.abort();
    this.#restartStream(1_000);
    await this.#queue;
    await this.#endRun(new AbortedError(`worker closing: ${reason}`), 'drop');
    await this.#loop?.catch(() => undefined);
    await this.#queue;
    this.#client.close();
  }

  /** `await using worker = ...` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

