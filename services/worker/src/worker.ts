/**
 * One worker process's life: the Control stream to the coordinator (Register, heartbeats,
 * reconnects with backoff) and the state machine around it: idle → assigned (one
 * {@link JobRun} per Assignment) → committed steps → Stop → idle (docs/cluster.md,
 * "Control stream and the step loop", and "Elasticity and failures": the rollback copy,
 * getting the state at a generation's start step, StepFailed, graceful leaving).
 *
 * The state is never dropped for a failure: an Abort, a newer Assignment, a broken stream
 * or a failed step restores the rollback copy, so the worker always comes out holding the
 * job's state at its last acknowledged step. Only Stop, an assignment to another job, or a
 * state that cannot be the job's (a failed transfer, a hash mismatch) drops it.
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
import { CropPool, createS3Client } from '@dinofleet/data';
import type { BackoffOptions } from '@dinofleet/data';
import { createDinoState, disposeDinoState, disposeDinoStateCopy, restoreDinoState } from '@dinofleet/dino';
import type { DinoRecipe, DinoState, DinoStateCopy } from '@dinofleet/dino';
import {
  AbortedError,
  ComputeBackend,
  DataLossError,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
  WorkerControlClient,
  callUnary,
  channelCredentials,
  createClient,
  fromServiceError,
  withRetry,
} from '@dinofleet/proto';
import type { Assignment, CommitStep, ControlRequest, ControlResponse, ShardLease, TransportSecurity } from '@dinofleet/proto';
import { SkipReason, createTrainingMetrics } from '@dinofleet/telemetry';
import type { Logger, Registry, TrainingMetrics } from '@dinofleet/telemetry';
import { parseAssignedJobSpec } from './assigned-spec.ts';
import { DEFAULT_PREFETCH_BYTES, PrefetchingBatchSource, S3BatchLoader } from './batch-loader.ts';
import type { BatchSource } from './batch-loader.ts';
import { loadCheckpointInto } from './checkpoint-writer.ts';
import { NonfiniteFaults } from './fault-injection.ts';
import { LeaseReader } from './lease-reader.ts';
import { decodeDinoStateInto, encodeDinoState } from './state-codec.ts';
import { stateHash } from './state-hash.ts';
import { fetchState } from './state-transfer.ts';
import type { ServableState, StateTransferSource } from './state-transfer.ts';
import { rankBatch, runStepLoop } from './step-loop.ts';
import { TeacherSyncConnection } from './teacher-sync-client.ts';
import { resolveWorkerS3Config } from './worker-config.ts';
import { StateTransferRole, WorkerMetrics } from './worker-metrics.ts';
import type { CollectiveRunMetrics } from './worker-metrics.ts';

/** Version reported in Register. */
export const WORKER_VERSION = '0.1.0';
/** Default of {@link WorkerOptions.heartbeatIntervalMs}. */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000;
/** First reconnect backoff, in ms. */
export const RECONNECT_INITIAL_BACKOFF_MS = 200;
/** Largest reconnect backoff, in ms (a restarted coordinator sees its workers back within it). */
export const RECONNECT_MAX_BACKOFF_MS = 2_000;
/** Longest wait for Stop after a graceful Leaving, in ms (docs/cluster.md, worker item 7). */
export const GRACEFUL_LEAVE_TIMEOUT_MS = 30_000;
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
  /**
   * How this worker dials the coordinator, teacher-sync and the rank it fetches state from
   * (`channelCredentials(security)`: its fleet certificate under mTLS). The ring's own
   * connections follow `endpoint.security`, which should be the same.
   */
  security: TransportSecurity;
  /** Stable worker id; reused on every reconnect. */
  workerId: string;
  /** This worker's Collective endpoint, started, shared by every generation. */
  endpoint: CollectiveEndpoint;
  /** "host:port" peers dial to reach `endpoint` (and this worker's StateTransfer service). @default endpoint.address */
  collectiveAddress?: string;
  /** The compute backend tfjs runs on (reported in Register). */
  backend: ComputeBackendName;
  /** Whether wasm SIMD is in use (reported as the "simd" feature). @default false */
  simd?: boolean;
  /** S3 client for images and checkpoints. @default one from the environment (`resolveWorkerS3Config`) */
  s3?: S3Client;
  /** Image objects in flight at once. @default 16 */
  fetchConcurrency?: number;
  /** Threads that decode and crop images (one pool for the worker's life). @default the machine's available parallelism */
  loaderThreads?: number;
  /** Bytes of batches loaded ahead of the step. @default {@link DEFAULT_PREFETCH_BYTES} */
  prefetchBytes?: number;
  /** Heartbeat period, in ms. @default 2000 */
  heartbeatIntervalMs?: number;
  /** Registry for the training and worker metrics. @default none (no metrics) */
  registry?: Registry;
  logger: Logger;
  /** Replaces the S3 loader, e.g. with in-memory batches in tests. */
  batchSource?: (request: BatchSourceRequest) => BatchSource;
  /**
   * Ring settings other than what the Assignment fixes (tests). Each field given replaces
   * the job spec's (`spec.collective`), so keep the result consistent (transport 'grpc'
   * needs compression 'none' and smallMessageBytes 0); `onStats` and `onLinkBandwidth` are
   * called besides the worker's metrics. @default the spec's settings
   */
  ring?: Omit<RingAllReduceOptions, 'endpoint' | 'job' | 'generation' | 'rank' | 'peers'>;
  /** Deadline of an AcquireLease call, in ms. @default 30000 */
  acquireLeaseTimeoutMs?: number;
  /** Deadline of one GetCenter attempt, in ms. @default teacher-sync client's (3000) */
  getCenterTimeoutMs?: number;
  /** How long teacher-sync calls keep retrying before the step fails, in ms. @default teacher-sync client's (30000) */
  teacherSyncWaitMs?: number;
  /** Deadline of a whole state transfer, in ms. @default 60000 */
  stateTransferTimeoutMs?: number;
  /** Backoff between the retries of a failing image read. @default READ_BACKOFF (0.5, 1, 2 s upper bounds) */
  readBackoff?: BackoffOptions;
  /** Steps that get a NaN loss slot (test hook). @default from DINOFLEET_FAULT_NONFINITE_STEPS */
  nonfiniteFaults?: NonfiniteFaults;
}

/** The training state a worker holds between generations. */
export interface HeldState {
  readonly jobId: string;
  readonly state: DinoState;
  /** Steps committed (acknowledged) for this state; `state.step` may be one ahead mid-step. */
  committedStep: number;
  /** Hash of the state after `committedStep` steps (empty while unknown, e.g. a fresh state before its first commit). */
  committedHash: Buffer;
  /** The state at `committedStep` while `state` holds an update not acknowledged yet. */
  rollback: DinoStateCopy | null;
  /** The (finite) CommitStep sent for the state as it is, while not acknowledged. */
  pending: { readonly step: number; readonly hash: Buffer } | null;
}

interface CommitWaiter {
  readonly step: number;
  readonly nonfinite: boolean;
  readonly resolve: (ack: { hold: boolean }) => void;
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
  /** Whether a step is being computed or waits for its ack (an end now abandons it). */
  inStep: boolean;
  /** Closes the ring, the loader and the teacher-sync channel (not the metrics). Idempotent. */
  readonly close: () => Promise<void>;
  /** The job's series on this rank: kept after the last step, removed when the run ends. */
  readonly metrics: TrainingMetrics | undefined;
  /** The run's all-reduce series: kept after the last step, removed when the run ends. */
  readonly collectiveMetrics: CollectiveRunMetrics;
}

/** What happens to the held state when a run ends. */
type EndPolicy =
  /** Back to the last acknowledged step (Abort, a failed step, a newer Assignment). */
  | 'rollback'
  /** Keep a state whose CommitStep was sent, with its copy, for the next Register (a broken stream). */
  | 'keep-pending'
  /** Drop it (Stop, closing). */
  | 'drop';

/** The state at a generation's start step could not be had (transfer, checkpoint, hash): the rank cannot join. */
class StateUnavailableError extends FailedPreconditionError {}

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

function hex(hash: Uint8Array): string {
  return Buffer.from(hash).toString('hex');
}

/**
 * A worker: holds the Control stream, trains Assignments, commits steps, serves its state
 * to joining ranks. `start()`, then `close()` (or `await using`).
 */
export class Worker implements AsyncDisposable, StateTransferSource {
  readonly workerId: string;
  readonly #options: WorkerOptions;
  readonly #logger: Logger;
  readonly #client: WorkerControlClient;
  readonly #stopping = new AbortController();
  readonly #metrics: WorkerMetrics;
  readonly #faults: NonfiniteFaults;
  #loop: Promise<void> | undefined;
  #call: ClientDuplexStream<ControlRequest, ControlResponse> | undefined;
  #held: HeldState | null = null;
  #run: JobRun | null = null;
  #waiter: CommitWaiter | null = null;
  /** Serialises the handling of Assignment / Abort / Stop and failed steps. */
  #queue: Promise<void> = Promise.resolve();
  #s3: S3Client | undefined;
  /** Decode-and-crop threads, started with the first S3 batch source and kept for the worker's life. */
  #cropPool: CropPool | undefined;
  #closed: Promise<void> | undefined;
  #registrations = 0;
  /** Set by {@link leave}: resolves once Stop came (or there was nothing to wait for). */
  #leaving: { readonly stopped: Promise<void>; readonly resolve: () => void; done: boolean } | undefined;

  constructor(options: WorkerOptions) {
    if (options.workerId === '') throw new InvalidArgumentError('workerId must not be empty');
    this.workerId = options.workerId;
    this.#options = options;
    this.#logger = options.logger.child({ workerId: options.workerId });
    this.#client = createClient(WorkerControlClient, options.coordinatorAddress, { credentials: channelCredentials(options.security) });
    this.#s3 = options.s3;
    this.#metrics = new WorkerMetrics(options.registry);
    this.#faults = options.nonfiniteFaults ?? NonfiniteFaults.fromEnv();
    if (this.#faults.pending > 0) this.#logger.warn('fault injection armed: non-finite steps', { env: process.env.DINOFLEET_FAULT_NONFINITE_STEPS });
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
      this.#register(call);
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
    // Membership ended with the stream: the coordinator has dropped this rank. A state
    // whose CommitStep went out stays (with its copy): the job may have committed it.
    this.#enqueue(() => this.#endRun(new UnavailableError('the control stream to the coordinator ended'), 'keep-pending'));
    return heardFrom;
  }

  #register(call: ClientDuplexStream<ControlRequest, ControlResponse>): void {
    // Job fields only for a state whose step the coordinator can check: an acknowledged one
    // (with its hash), and the pending one when its CommitStep went out unacknowledged.
    const held = this.#held;
    const reported = held !== null && (held.committedHash.length > 0 || held.pending !== null) ? held : null;
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
          jobId: reported?.jobId ?? '',
          stateStep: reported?.committedStep ?? 0,
          stateHash: reported?.committedHash ?? Buffer.alloc(0),
          pendingStep: reported?.pending?.step ?? 0,
          pendingHash: reported?.pending?.hash ?? Buffer.alloc(0),
        },
      },
    });
    this.#registrations++;
    this.#logger.info('registered', {
      coordinator: options.coordinatorAddress,
      jobId: reported?.jobId ?? '',
      stateStep: reported?.committedStep ?? 0,
      pendingStep: reported?.pending?.step ?? 0,
    });
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
        this.#onCommitAck(m.commitAck.generation, m.commitAck.step, m.commitAck.hold);
        break;
      case 'abort': {
        const run = this.#run;
        if (run !== null && m.abort.generation < run.assignment.generation) {
          this.#logger.info('abort of an older generation ignored', { generation: m.abort.generation });
          break;
        }
        this.#logger.warn('generation aborted', { generation: m.abort.generation, reason: m.abort.reason });
        this.#enqueue(() => this.#endRun(new AbortedError(`generation ${m.abort.generation} aborted: ${m.abort.reason}`), 'rollback'));
        break;
      }
      case 'stop':
        this.#logger.info('stopped', { reason: m.stop.reason, jobId: this.#held?.jobId ?? '' });
        this.#enqueue(async () => {
          await this.#endRun(new AbortedError(`stopped: ${m.stop.reason}`), 'drop');
          const leaving = this.#leaving;
          if (leaving !== undefined && !leaving.done) {
            leaving.done = true;
            leaving.resolve();
          }
        });
        break;
    }
  }

  #enqueue(task: () => Promise<void>): void {
    this.#queue = this.#queue.then(task).catch((err: unknown) => {
      this.#logger.error('control message handling failed', { err: errorMessage(err) });
    });
  }

  #onCommitAck(generation: number, step: number, hold: boolean): void {
    const waiter = this.#waiter;
    const run = this.#run;
    const held = this.#held;
    if (waiter === null || run === null || held === null || generation !== run.assignment.generation || step !== waiter.step || waiter.nonfinite) {
      // A non-finite step never commits (its update was not applied): an ack of it is a
      // coordinator bug, and taking it would make the rank skip the step.
      this.#logger.warn('unexpected CommitAck ignored', { generation, step, waiting: waiter?.step ?? null, nonfinite: waiter?.nonfinite ?? false });
      return;
    }
    this.#waiter = null;
    // The update stands: it is the acknowledged state now, and the copy is no longer needed.
    if (held.pending !== null) {
      held.committedStep = held.pending.step;
      held.committedHash = held.pending.hash;
      held.pending = null;
    }
    if (held.rollback !== null) {
      disposeDinoStateCopy(held.rollback);
      held.rollback = null;
    }
    run.inStep = false;
    waiter.resolve({ hold });
  }

  /** Sends a CommitStep and resolves with the ack's `hold` once its CommitAck arrives. */
  #commit(run: JobRun, commit: CommitStep): Promise<{ hold: boolean }> {
    return new Promise((resolve, reject) => {
      const held = this.#held;
      if (run.abort.signal.aborted || held === null) {
        reject(new AbortedError('the run ended before its commit'));
        return;
      }
      this.#waiter = { step: commit.step, nonfinite: commit.nonfinite, resolve, reject };
      if (!commit.nonfinite) held.pending = { step: commit.step, hash: Buffer.from(commit.stateHash) };
      if (!this.#send({ $case: 'commitStep', commitStep: commit })) {
        this.#waiter = null;
        held.pending = null;
        reject(new UnavailableError(`no control stream to send the commit of step ${commit.step} on`));
      }
    });
  }

  // ---------------------------------------------------------------------------------
  // Assignments and runs

  #dropState(why: string): void {
    const held = this.#held;
    if (held === null) return;
    this.#held = null;
    if (held.rollback !== null) disposeDinoStateCopy(held.rollback);
    disposeDinoState(held.state);
    this.#logger.info('training state dropped', { jobId: held.jobId, step: held.state.step, why });
  }

  /** Puts the held state back to its last acknowledged step. */
  #rollBack(why: string): void {
    const held = this.#held;
    if (held === null) return;
    held.pending = null;
    const copy = held.rollback;
    if (copy === null) return;
    held.rollback = null;
    const from = held.state.step;
    restoreDinoState(held.state, copy);
    this.#logger.info('state rolled back to the acknowledged step', { jobId: held.jobId, from, to: held.state.step, why });
  }

  /**
   * Ends the current run (if any), waits for it to stop, then treats the held state by
   * `policy` (see {@link EndPolicy}).
   */
  async #endRun(reason: Error, policy: EndPolicy): Promise<void> {
    const run = this.#run;
    if (run !== null) {
      this.#run = null;
      run.abort.abort(reason);
      const waiter = this.#waiter;
      this.#waiter = null;
      waiter?.reject(reason);
      await run.close();
      // The loop touches the state only until it sees the abort; after this, it is ours.
      await run.done.catch(() => undefined);
      run.metrics?.remove();
      run.collectiveMetrics.remove();
      if (run.inStep && policy !== 'drop') this.#metrics.abortedSteps.inc();
    }
    const held = this.#held;
    if (held === null) return;
    if (policy === 'drop') this.#dropState(reason.message);
    else if (policy === 'rollback' || held.pending === null) this.#rollBack(reason.message);
  }

  async #onAssignment(a: Assignment): Promise<void> {
    const log = this.#logger.child({ jobId: a.jobId, generation: a.generation, rank: a.rank });
    const held = this.#held;
    // A restarted coordinator that committed the step this rank sent last starts the next
    // generation there: the pending state is the acknowledged one.
    const keepPending = held !== null && held.jobId === a.jobId && held.pending !== null && held.pending.step === a.startStep;
    await this.#endRun(new AbortedError(`superseded by generation ${a.generation}`), keepPending ? 'keep-pending' : 'rollback');
    if (keepPending && held.pending !== null) {
      log.info('the pending step was committed; keeping it', { step: held.pending.step });
      held.committedStep = held.pending.step;
      held.committedHash = held.pending.hash;
      held.pending = null;
      if (held.rollback !== null) disposeDinoStateCopy(held.rollback);
      held.rollback = null;
    }
    try {
      await this.#startRun(a, log);
    } catch (err) {
      const message = errorMessage(err);
      log.error('assignment failed', { err: message });
      // The rank cannot go on with this job (it drops whatever it held of it): the
      // coordinator forms the next generation without it.
      this.#dropState(`assignment failed: ${message}`);
      this.#send({
        $case: 'stepFailed',
        stepFailed: {
          generation: a.generation,
          step: a.startStep + 1,
          reason: `rank ${a.rank} (${this.workerId}) could not start generation ${a.generation}: ${message}`,
          excludeMe: true,
        },
      });
    }
  }

  /**
   * The job's state at `a.startStep` (docs/cluster.md, worker item 2), in this order: the
   * checkpoint to restore; the state this worker holds; a transfer from `state_source`; a
   * fresh state at step 0. Then checked against `start_state_hash`.
   * @throws StateUnavailableError when there is none or it does not match.
   */
  async #acquireState(a: Assignment, spec: JobSpec, recipe: DinoRecipe, log: Logger): Promise<HeldState> {
    const fresh = (): DinoState => createDinoState(recipe, spec.spec.training.seed, { totalSteps: a.totalSteps });
    const adopt = (state: DinoState, hash: Buffer): HeldState => {
      this.#held = { jobId: a.jobId, state, committedStep: state.step, committedHash: hash, rollback: null, pending: null };
      return this.#held;
    };
    const held = this.#held;
    let acquired: HeldState;
    if (held !== null && held.jobId !== a.jobId) this.#dropState(`assigned to another job, ${a.jobId}`);
    if (a.restoreCheckpointUri !== '') {
      this.#dropState(`restoring ${a.restoreCheckpointUri}`);
      const state = fresh();
      try {
        const restored = await loadCheckpointInto(this.#s3Client(), a.restoreCheckpointUri, a.jobId, state);
        if (restored.step !== a.startStep) throw new DataLossError(`checkpoint ${a.restoreCheckpointUri} holds step ${restored.step}, the generation starts at ${a.startStep}`);
      } catch (err) {
        disposeDinoState(state);
        throw new StateUnavailableError(`could not restore checkpoint ${a.restoreCheckpointUri}: ${errorMessage(err)}`, { cause: err });
      }
      log.info('state restored from a checkpoint', { uri: a.restoreCheckpointUri, step: a.startStep });
      acquired = adopt(state, await stateHash(state));
    } else if (this.#held !== null && this.#held.state.step === a.startStep && this.#held.committedStep === a.startStep) {
      acquired = this.#held;
      if (acquired.committedHash.length === 0) acquired.committedHash = await stateHash(acquired.state);
    } else if (a.stateSource !== '') {
      if (this.#held !== null) this.#dropState(`it is at step ${this.#held.state.step}, the generation starts at ${a.startStep}`);
      acquired = adopt(...(await this.#fetchState(a, fresh, log)));
    } else if (a.startStep === 0) {
      if (this.#held !== null) this.#dropState(`it is at step ${this.#held.state.step}, the generation starts at 0`);
      const state = fresh();
      acquired = adopt(state, await stateHash(state));
    } else {
      throw new StateUnavailableError(
        `it holds no state of job ${a.jobId} at step ${a.startStep}${this.#held === null ? '' : ` (it holds step ${this.#held.state.step})`} and the assignment names neither a state source nor a checkpoint`,
      );
    }
    if (a.startStateHash.length > 0 && !acquired.committedHash.equals(Buffer.from(a.startStateHash))) {
      throw new StateUnavailableError(
        `state hash mismatch at step ${a.startStep}: this rank has ${hex(acquired.committedHash)}, the job ${hex(a.startStateHash)}`,
      );
    }
    return acquired;
  }

  /** Fetches the state at `a.startStep` from `a.stateSource` into a fresh state; returns it and its verified hash. */
  async #fetchState(a: Assignment, fresh: () => DinoState, log: Logger): Promise<[DinoState, Buffer]> {
    const started = performance.now();
    let fetched;
    try {
      fetched = await fetchState({
        address: a.stateSource,
        jobId: a.jobId,
        step: a.startStep,
        workerId: this.workerId,
        security: this.#options.security,
        deadlineMs: this.#options.stateTransferTimeoutMs ?? 60_000,
        signal: this.#stopping.signal,
      });
    } catch (err) {
      throw new StateUnavailableError(`state transfer from ${a.stateSource} failed: ${errorMessage(err)}`, { cause: err });
    }
    const state = fresh();
    try {
      decodeDinoStateInto(state, fetched.bytes);
      const hash = await stateHash(state);
      if (state.step !== a.startStep || !hash.equals(Buffer.from(fetched.header.stateHash))) {
        throw new DataLossError(
          `the state from ${a.stateSource} decodes to step ${state.step} hash ${hex(hash)}, its header says step ${a.startStep} hash ${hex(fetched.header.stateHash)}`,
        );
      }
      const seconds = (performance.now() - started) / 1000;
      this.#metrics.stateTransfers.inc({ role: StateTransferRole.Received });
      this.#metrics.stateTransferSeconds.observe(seconds);
      log.info('state received', { from: a.stateSource, step: a.startStep, sizeBytes: fetched.bytes.byteLength, seconds });
      return [state, hash];
    } catch (err) {
      disposeDinoState(state);
      throw new StateUnavailableError(`state transfer from ${a.stateSource} failed: ${errorMessage(err)}`, { cause: err });
    }
  }

  /**
   * StateTransferSource: the held state of `jobId` at acknowledged step `step`, encoded.
   * Waits for the control messages already queued (an Abort being handled restores the
   * state first).
   */
  async encodeHeldState(jobId: string, step: number, requester: string): Promise<ServableState> {
    await this.#queue;
    const held = this.#held;
    // Servable: the state is at `step` and whole, i.e. acknowledged there, or its update's
    // CommitStep went out (a pending state that a restarted coordinator committed).
    const servable =
      held !== null &&
      held.jobId === jobId &&
      held.state.step === step &&
      (held.rollback === null ? held.committedStep === step : held.pending?.step === step);
    if (!servable) {
      throw new FailedPreconditionError(
        held === null || held.jobId !== jobId
          ? `worker ${this.workerId} holds no state of job ${jobId}`
          : `worker ${this.workerId} holds job ${jobId} at step ${held.state.step} (acknowledged ${held.committedStep}), not ${step}`,
      );
    }
    const bytes = await encodeDinoState(held.state, jobId);
    const hash = await stateHash(held.state);
    this.#metrics.stateTransfers.inc({ role: StateTransferRole.Sent });
    this.#logger.info('state sent', { jobId, step, to: requester, sizeBytes: bytes.byteLength });
    return { bytes, stateHash: hash };
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
    if (recipe.targets === 'centering' && a.teacherSyncAddress === '') throw new InvalidArgumentError('a centering recipe needs teacher_sync_address');

    const held = await this.#acquireState(a, spec, recipe, log);

    const abort = new AbortController();
    const collective = spec.spec.collective;
    const overrides = this.#options.ring;
    const collectiveMetrics = this.#metrics.collective({ job: a.jobId, rank: String(a.rank) });
    let ring: RingAllReduce;
    try {
      // Every rank reads the same spec, so every rank of the generation runs the same settings.
      ring = new RingAllReduce({
        transport: collective.transport,
        compression: collective.compression,
        chunkBytes: collective.chunkBytes,
        smallMessageBytes: collective.smallMessageBytes,
        ...overrides,
        endpoint: this.#options.endpoint,
        job: a.jobId,
        generation: a.generation,
        rank: a.rank,
        peers: a.ranks.map((peer) => peer.collectiveAddress),
        onStats: (stats) => {
          collectiveMetrics.recordCall(stats);
          overrides?.onStats?.(stats);
        },
        onLinkBandwidth: (link) => {
          collectiveMetrics.recordLink(link);
          log.info('ring link measured', { peerRank: link.peerRank, peerAddress: link.peerAddress, bandwidthGBps: link.bandwidthGBps, bytes: link.bytes });
          overrides?.onLinkBandwidth?.(link);
        },
      });
    } catch (err) {
      collectiveMetrics.remove();
      throw err;
    }
    const acquireLease = (): Promise<ShardLease> => this.#acquireLease(a, abort.signal);
    const request: BatchSourceRequest = { assignment: a, spec, perRankBatch: size, batchOffset: offset, acquireLease };
    const metrics: TrainingMetrics | undefined =
      this.#options.registry === undefined ? undefined : createTrainingMetrics(this.#options.registry, { job: a.jobId, rank: String(a.rank) });
    let batches: BatchSource;
    let teacherSync: TeacherSyncConnection | null = null;
    try {
      batches = this.#options.batchSource?.(request) ?? this.#s3BatchSource(request, held.state, recipe, log, metrics, abort.signal);
      if (a.teacherSyncAddress !== '') {
        teacherSync = new TeacherSyncConnection({
          address: a.teacherSyncAddress,
          security: this.#options.security,
          ...(this.#options.getCenterTimeoutMs !== undefined && { getCenterTimeoutMs: this.#options.getCenterTimeoutMs }),
          ...(this.#options.teacherSyncWaitMs !== undefined && { teacherSyncWaitMs: this.#options.teacherSyncWaitMs }),
        });
      }
    } catch (err) {
      metrics?.remove();
      collectiveMetrics.remove();
      await ring.close();
      throw err;
    }
    const checkpointSpec = spec.spec.checkpoint;
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
      inStep: false,
      close,
      metrics,
      collectiveMetrics,
      done: Promise.resolve(),
    };
    const { transport, compression } = ring.config;
    log.info('generation started', { worldSize, startStep: a.startStep, totalSteps: a.totalSteps, perRankBatch: size, offset, transport, compression });
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
      fusionBucketBytes: collective.fusionBucketBytes,
      onGradientBucket: (stats) => collectiveMetrics.recordGradientBucket(stats),
      batches,
      teacherSync,
      checkpoint:
        a.rank === 0 && checkpointSpec !== null
          ? { s3: this.#s3Client(), uri: checkpointSpec.uri, jobId: a.jobId, everySteps: checkpointSpec.everySteps }
          : null,
      commit: (commit) => this.#commit(run, commit),
      keepRollback: (copy) => {
        if (this.#held !== held) {
          disposeDinoStateCopy(copy);
          return;
        }
        if (held.rollback !== null) disposeDinoStateCopy(held.rollback);
        held.rollback = copy;
      },
      onStepStarted: () => {
        run.inStep = true;
      },
      onComputed: (step) => {
        run.computedStep = step;
      },
      nonfiniteFaults: this.#faults,
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
  }

  /**
   * A step failed (ring, teacher-sync, S3): roll the state back to the acknowledged step,
   * tell the coordinator, and wait for its Abort / Assignment on the same stream.
   */
  async #failRun(run: JobRun, err: unknown, log: Logger): Promise<void> {
    if (this.#run !== run) return;
    const step = this.#held?.rollback?.step ?? this.#held?.state.step ?? run.computedStep;
    const message = errorMessage(err);
    log.error('step failed', { step, err: message });
    await this.#endRun(err instanceof Error ? err : new Error(message), 'rollback');
    this.#send({
      $case: 'stepFailed',
      stepFailed: {
        generation: run.assignment.generation,
        step: step + 1,
        reason: `rank ${run.assignment.rank} (${this.workerId}) failed at step ${step}: ${message}`,
        excludeMe: false,
      },
    });
  }

  async #acquireLease(a: Assignment, signal: AbortSignal): Promise<ShardLease> {
    const response = await withRetry(
      () =>
        callUnary(
          this.#client,
          'acquireLease',
          { jobId: a.jobId, generation: a.generation, rank: a.rank, workerId: this.workerId },
          { deadlineMs: this.#options.acquireLeaseTimeoutMs ?? 30_000 },
        ),
      { maxAttempts: 5, initialBackoffMs: 200, signal },
    );
    if (response.lease === undefined) throw new FailedPreconditionError('AcquireLease returned no lease');
    return response.lease;
  }

  #s3Client(): S3Client {
    this.#s3 ??= createS3Client(resolveWorkerS3Config());
    return this.#s3;
  }

  #s3BatchSource(
    request: BatchSourceRequest,
    held: { readonly seed: number; readonly step: number },
    recipe: DinoRecipe,
    log: Logger,
    metrics: TrainingMetrics | undefined,
    signal: AbortSignal,
  ): BatchSource {
    const { assignment, spec } = request;
    const lease = assignment.shardLease;
    if (lease === undefined) throw new InvalidArgumentError('the assignment has no shard lease');
    const manifest = parseS3Uri(assignment.manifestUri);
    const s3 = this.#s3Client();
    const reader = new LeaseReader({
      s3,
      bucket: manifest.bucket,
      key: manifest.key,
      etag: assignment.manifestEtag,
      format: spec.spec.data.format,
      seed: spec.spec.training.seed,
      shuffleWindow: spec.spec.data.shuffleWindow,
      firstLease: lease,
      acquireLease: request.acquireLease,
      signal,
    });
    this.#cropPool ??= new CropPool(this.#options.loaderThreads === undefined ? {} : { threads: this.#options.loaderThreads });
    const channels = recipe.vit.inChannels === 1 ? 1 : 3;
    const loader = new S3BatchLoader({
      reader,
      s3,
      bucket: manifest.bucket,
      batchSize: request.perRankBatch,
      concurrency: this.#options.fetchConcurrency ?? 16,
      channels,
      // Batch k is trained at step held.step + k with the state's seed: the step loop checks.
      crops: {
        config: recipe.crops,
        seed: held.seed,
        firstStep: held.step,
        batchOffset: request.batchOffset,
        pool: this.#cropPool,
        // The threads read the images with a client of their own, so loading goes on while
        // the step holds this thread; a client handed in (tests) is used from here instead.
        ...(this.#options.s3 === undefined && { s3: resolveWorkerS3Config() }),
      },
      onSkip: (skipped, detail) => {
        log.warn('sample skipped', { sampleId: skipped.sampleId, key: skipped.key, reason: skipped.reason, detail });
        metrics?.skipSamples(skipReasonOf(skipped.reason));
      },
      ...(metrics !== undefined && { metrics }),
      onReadRetry: (key, attempt, detail) => log.warn('image read failed; retrying', { key, attempt, detail }),
      ...(this.#options.readBackoff !== undefined && { readBackoff: this.#options.readBackoff }),
    });
    return new PrefetchingBatchSource(loader, Math.max(0, assignment.totalSteps - assignment.startStep), {
      maxBytes: this.#options.prefetchBytes ?? DEFAULT_PREFETCH_BYTES,
      ...(metrics !== undefined && { onQueuedBytes: (bytes: number) => metrics.setPrefetchBytes(bytes) }),
    });
  }

  // ---------------------------------------------------------------------------------
  // Shutdown

  /**
   * Leaves gracefully (SIGTERM, scale-down; docs/cluster.md, worker item 7): sends
   * `Leaving{reason, graceful: true}`, lets the step in progress run until its ack (the
   * coordinator answers with `CommitAck{hold}` and `Stop`) and resolves once Stop came,
   * after `timeoutMs` at the latest, or at once when the worker is in no job. Resolves true
   * when it was stopped (or had nothing to leave). Idempotent.
   */
  async leave(reason = 'sigterm', timeoutMs = GRACEFUL_LEAVE_TIMEOUT_MS): Promise<boolean> {
    if (this.#leaving === undefined) {
      let resolve!: () => void;
      const stopped = new Promise<void>((r) => (resolve = r));
      this.#leaving = { stopped, resolve, done: false };
      const sent = this.#send({ $case: 'leaving', leaving: { reason, graceful: true } });
      if (!sent || (this.#run === null && this.#held === null)) {
        // Nothing to hand over: no stream to wait on, or no job on this worker.
        this.#leaving.done = true;
        resolve();
      }
      this.#logger.info('leaving gracefully', { reason, waitingForStop: !this.#leaving.done });
    }
    const leaving = this.#leaving;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), timeoutMs);
    });
    try {
      return await Promise.race([leaving.stopped.then(() => true), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Leaves: sends `Leaving{reason}` (not graceful: the worker is gone now) when connected,
   * unless a graceful {@link leave} was answered by Stop; ends the run, closes the stream
   * and drops the state. Idempotent; the endpoint stays the caller's.
   */
  close(reason = 'closed'): Promise<void> {
    this.#closed ??= this.#shutdown(reason);
    return this.#closed;
  }

  async #shutdown(reason: string): Promise<void> {
    if (this.#leaving?.done !== true) this.#send({ $case: 'leaving', leaving: { reason, graceful: false } });
    this.#stopping.abort();
    this.#restartStream(1_000);
    await this.#queue;
    await this.#endRun(new AbortedError(`worker closing: ${reason}`), 'drop');
    await this.#loop?.catch(() => undefined);
    await this.#queue;
    this.#client.close();
    await this.#cropPool?.close();
  }

  /**
   * Ends the current stream. Half-closes first so what was written (a Leaving) reaches the
   * coordinator; cancels if it does not end its side within `graceMs`.
   */
  #restartStream(graceMs: number): void {
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

  /** `await using worker = ...` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
