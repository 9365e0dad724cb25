/**
 * Runs one training job (the body of the `jobs` queue's processor): plans shards, opens
 * the lease queue, gets workers, forms generations, commits steps until `total_steps`,
 * and ends the job SUCCEEDED, FAILED or CANCELLED (docs/cluster.md "Job lifecycle",
 * "Control stream and the step loop", "Elasticity and failures").
 *
 * Membership is held as a {@link Generation}. A lost rank, a failed step, a non-finite
 * step, a graceful leave or a change of the wanted worker count ends it and forms the
 * next one (survivors in their old order, then joiners by id). Commits and every
 * reconfiguration run one at a time on one promise chain, so a commit of a generation
 * never races its replacement; a commit of an ended generation is ignored.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { JobSpecError, parseJobSpec, parseS3Uri, resolveJobSpec } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { statManifest } from '@dinofleet/data';
import { FailedPreconditionError } from '@dinofleet/proto';
import type { AcquireLeaseRequest, AcquireLeaseResponse, CommitStep, ControlResponse, JobProgress, ShardLease, StepFailed } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import type { Redis } from 'ioredis';
import { completeCheckpoint, findLatestCheckpoint } from './checkpoint-commit.ts';
import type { CheckpointData, FoundCheckpoint } from './checkpoint-commit.ts';
import type { CoordinatorMetrics, RECONFIGURATION_KINDS, RECOVERY_CAUSES } from './coordinator-metrics.ts';
import type { LeaseAuthority } from './control-stream.ts';
import { Severity, TERMINAL_STATES } from './job-store.ts';
import type { JobRecord, JobStore } from './job-store.ts';
import { isManifestMissing, manifestMissingMessage } from './manifest-check.ts';
import { withRedisRetry } from './redis-retry.ts';
import { encodeLedgerEntry, truncateSampleLedger } from './sample-ledger.ts';
import { obliterateLeaseQueue, ShardLeases } from './shard-leases.ts';
import { perRankBatch, planShards, shardCount, totalStepsOf } from './shard-plan.ts';
import { ClaimTimeoutError, NO_STATE } from './worker-registry.ts';
import type { WorkerListener, WorkerRegistry, WorkerSession } from './worker-registry.ts';

/** How a run ended. */
export type RunOutcome =
  | { readonly kind: 'succeeded'; readonly committedStep: number; readonly checkpointUri: string }
  | { readonly kind: 'failed'; readonly message: string }
  | { readonly kind: 'cancelled'; readonly reason: string }
  /** The coordinator is shutting down; the job is left for the next one. */
  | { readonly kind: 'suspended' };

/** What every runner shares. */
export interface JobRunnerContext {
  readonly store: JobStore;
  readonly registry: WorkerRegistry;
  readonly metrics: CoordinatorMetrics;
  readonly logger: Logger;
  readonly s3: S3Client;
  /** BullMQ connection for lease queues (maxRetriesPerRequest null). */
  readonly connection: Redis;
  readonly prefix: string;
  readonly teacherSyncAddress: string;
  /** How long a job waits for its workers to register, ms. */
  readonly workerWaitMs: number;
  /** Tells the scaler how many workers this job wants (0 when it is done). */
  readonly requestWorkers: (jobId: string, workers: number) => Promise<void>;
  /**
   * Tells the scaler to stop these workers (scaled down out of the job), which leaves
   * `workers` for the job. @default none: only the count is requested
   */
  readonly releaseWorkers?: (jobId: string, workerIds: readonly string[], workers: number) => Promise<void>;
  /**
   * How long a resumed job waits for workers holding its committed state (after a
   * coordinator restart) before it restores its checkpoint, ms. @default 10000
   */
  readonly resumeWaitMs?: number;
  /** Delay between a StepFailed and the Abort it causes, ms. @default 500 */
  readonly stepFailedDelayMs?: number;
}

/** The ranks of one generation. */
export interface Generation {
  readonly number: number;
  readonly ranks: readonly WorkerSession[];
  readonly startStep: number;
  /** CommitStep of each rank for the step being committed. */
  readonly pending: Map<number, CommitStep>;
  /** Checkpoint every rank restores at the start ('' for none). */
  readonly restoreUri: string;
  /** Set once it is being replaced: its commits and lease requests are refused. */
  ended: boolean;
}

/** Why a generation ended, as counted in `dinofleet_job_recoveries_total{cause}`. */
export type RecoveryCause = (typeof RECOVERY_CAUSES)[number];

/** A membership change at a step boundary, as counted in `dinofleet_job_reconfigurations_total{kind}`. */
export type ReconfigurationKind = (typeof RECONFIGURATION_KINDS)[number];

/** Formats the first 4 hex digits of a hash for messages: `3fa2…`. */
export function hashPrefix(hex: string): string {
  return hex === '' ? '(empty)' : `${hex.slice(0, 4)}…`;
}

/** The spec text's format for `parseJobSpec`. */
export function specFormat(text: string): 'json' | 'yaml' {
  return text.trimStart().startsWith('{') ? 'json' : 'yaml';
}

const MAX_RATE_WINDOW = 10;
const DEFAULT_RESUME_WAIT_MS = 10_000;
const DEFAULT_STEP_FAILED_DELAY_MS = 500;

function byWorkerId(a: WorkerSession, b: WorkerSession): number {
  return a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One job's run on this coordinator. */
export class JobRunner implements WorkerListener, LeaseAuthority {
  readonly jobId: string;
  readonly #ctx: JobRunnerContext;
  readonly #log: Logger;
  readonly #abort = new AbortController();
  #outcome: RunOutcome | undefined;
  #resolveDone!: (outcome: RunOutcome) => void;
  readonly #done = new Promise<RunOutcome>((resolve) => {
    this.#resolveDone = resolve;
  });
  #record!: JobRecord;
  #spec!: JobSpec;
  #specJson = '';
  #leases: ShardLeases | undefined;
  #generation: Generation | undefined;
  #committedStep = 0;
  #lastHash = '';
  #samplesCommitted = 0;
  #checkpointUri = '';
  #commitTimes: number[] = [];
  /** Commits and reconfigurations, one at a time. */
  #chain: Promise<unknown> = Promise.resolve();
  #claimed: WorkerSession[] = [];
  /** Workers known to hold the job's state at the committed step. */
  #holders = new Set<WorkerSession>();
  /** Workers that asked to be left out of the next generation (StepFailed{exclude_me}). */
  #excluded = new Set<WorkerSession>();
  #workersDesired = 0;
  /** A scale request waits for the next boundary. */
  #scaleRequested = false;
  #failedGenerations = 0;
  #nonFiniteInRow = 0;
  /** The last rollback: the non-finite step that caused it and the step it went back to. */
  #rollback: { readonly fromStep: number; readonly toStep: number } | undefined;
  /** Checkpoint the ranks restore from until the next commit ('' for none). */
  #restoreUri = '';
  /** The failure being recovered from, timed to the next commit. */
  #recovery: { readonly cause: RecoveryCause; readonly sinceMs: number } | undefined;
  #stepFailedTimer: NodeJS.Timeout | undefined;
  #checkpointWrites: Promise<void> = Promise.resolve();
  /** The job was already terminal (or had no record) when the run began: nothing to end. */
  #nothingToEnd = false;

  constructor(ctx: JobRunnerContext, jobId: string) {
    this.#ctx = ctx;
    this.jobId = jobId;
    this.#log = ctx.logger.child({ jobId });
  }

  /** The current generation, if one formed. */
  get generation(): Generation | undefined {
    return this.#generation;
  }

  /** Runs the job to its end (or until {@link suspend}). Never rejects. */
  async run(): Promise<RunOutcome> {
    const unlisten = this.#ctx.registry.listen(this.jobId, this);
    try {
      await this.#start();
    } catch (err) {
      this.#failWith(err);
    }
    const outcome = await this.#done;
    clearTimeout(this.#stepFailedTimer);
    try {
      await this.#chain;
      if (!this.#nothingToEnd) await this.#end(outcome);
    } catch (err) {
      this.#log.error('cleaning up after the job failed', { err });
    } finally {
      unlisten();
    }
    return outcome;
  }

  /** The job was cancelled (its state is already CANCELLED in Redis). */
  cancel(reason: string): void {
    this.#finish({ kind: 'cancelled', reason });
  }

  /** The coordinator is shutting down: stop without touching workers or the job's state. */
  suspend(): void {
    this.#finish({ kind: 'suspended' });
  }

  /** Waits for the run to end. */
  finished(): Promise<RunOutcome> {
    return this.#done;
  }

  /**
   * ScaleJob: the job now wants `workers` workers (already validated and recorded). More
   * workers are asked of the scaler now; the membership changes at the next commit.
   */
  scale(workers: number): void {
    this.#workersDesired = workers;
    this.#scaleRequested = true;
    const live = this.#generation?.ranks.length ?? 0;
    if (workers > live) {
      this.#ctx.requestWorkers(this.jobId, workers).catch((err: unknown) => this.#log.warn('asking the scaler for more workers failed', { err }));
    }
  }

  #finish(outcome: RunOutcome): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = outcome;
    this.#abort.abort(new Error(outcome.kind));
    this.#resolveDone(outcome);
  }

  #failWith(err: unknown): void {
    if (this.#abort.signal.aborted) return;
    if (err instanceof ClaimTimeoutError) {
      this.#finish({
        kind: 'failed',
        message: `${err.message} (job wants ${err.wanted}); start more workers (dinofleet up --workers, --scaler local) or raise --worker-wait-seconds`,
      });
    } else if (err instanceof RunFailure) {
      this.#finish({ kind: 'failed', message: err.message });
    } else {
      this.#log.error('job run failed unexpectedly', { err });
      this.#finish({ kind: 'failed', message: `internal error: ${errorText(err)}` });
    }
  }

  /** Runs `operation` after every commit and reconfiguration before it. */
  #enqueue(operation: () => Promise<void>): void {
    const next = this.#chain.then(() => (this.#outcome === undefined ? operation() : undefined));
    this.#chain = next.catch((err: unknown) => this.#failWith(err));
  }

  async #start(): Promise<void> {
    const record = await this.#ctx.store.get(this.jobId);
    if (record === undefined) {
      this.#nothingToEnd = true;
      throw new RunFailure(`job ${this.jobId} has no record in Redis`);
    }
    this.#record = record;
    if (TERMINAL_STATES.has(record.state)) {
      this.#nothingToEnd = true;
      // Cancelled while it waited, or finished by an earlier coordinator.
      this.#finish(
        record.state === 'SUCCEEDED'
          ? { kind: 'succeeded', committedStep: record.committedStep, checkpointUri: '' }
          : record.state === 'CANCELLED'
            ? { kind: 'cancelled', reason: record.error }
            : { kind: 'failed', message: record.error },
      );
      return;
    }
    try {
      this.#spec = parseJobSpec(record.spec, specFormat(record.spec));
    } catch (err) {
      if (err instanceof JobSpecError) throw new RunFailure(`stored spec no longer validates: ${err.message}`);
      throw err;
    }
    this.#specJson = JSON.stringify(resolveJobSpec(this.#spec));
    this.#committedStep = record.committedStep;
    this.#lastHash = record.lastHash;
    this.#samplesCommitted = record.samplesCommitted ?? 0;
    const resuming = record.generation > 0 && record.committedStep > 0 && record.shards !== undefined;
    const workers = record.workersDesired > 0 ? record.workersDesired : this.#spec.spec.fleet.workers;
    this.#workersDesired = workers;

    if (!resuming) await this.#plan(workers);
    this.#leases = this.#openLeases(this.#record.leaseEpoch);
    // Leases a previous coordinator handed out are nobody's now.
    await this.#leases.recoverOrphans();
    this.#ctx.metrics.startJob(this.jobId);
    this.#ctx.metrics.totalSteps.set({ job: this.jobId }, this.#record.totalSteps);
    this.#ctx.metrics.step.set({ job: this.jobId }, this.#committedStep);

    try {
      await this.#ctx.requestWorkers(this.jobId, workers);
    } catch (err) {
      throw new RunFailure(`could not start ${workers} workers: ${errorText(err)}; see the worker logs (--worker-log-dir)`);
    }
    if (resuming) {
      await this.#resume();
      return;
    }
    const sessions = await this.#claimFresh(workers);
    this.#claimed = sessions;
    if (this.#abort.signal.aborted) return;
    // One chain for everything that touches the generation, the first formation included.
    const formed = this.#chain.then(() => this.formGeneration(sessions, this.#committedStep));
    this.#chain = formed.catch(() => undefined);
    await formed;
  }

  #openLeases(leaseEpoch: number): ShardLeases {
    return new ShardLeases({
      connection: this.#ctx.connection,
      prefix: this.#ctx.prefix,
      jobId: this.jobId,
      shards: this.#record.shards ?? [],
      seed: this.#spec.spec.training.seed,
      leaseEpoch,
      saveLeaseEpoch: (epoch) => this.#ctx.store.update(this.jobId, { leaseEpoch: epoch }),
    });
  }

  /** Plans shards and total steps from the manifest and moves the job to STARTING. */
  async #plan(workers: number): Promise<void> {
    const { bucket, key } = parseS3Uri(this.#spec.spec.data.manifest);
    let manifest;
    try {
      manifest = await statManifest(this.#ctx.s3, bucket, key);
    } catch (err) {
      if (isManifestMissing(err)) throw new RunFailure(manifestMissingMessage(bucket, key));
      throw new RunFailure(`cannot read the manifest s3://${bucket}/${key}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const shards = planShards(manifest.sizeBytes, shardCount(this.#spec, manifest.sizeBytes, workers));
    const totalSteps = await totalStepsOf(this.#spec, { s3: this.#ctx.s3, bucket, key, ...manifest });
    // A fresh start (nothing committed): leases of an earlier attempt, possibly planned for
    // another worker count, are dropped.
    await obliterateLeaseQueue(this.#ctx.connection, this.#ctx.prefix, this.jobId);
    // A ScaleJob that arrived while the manifest was read has updated #workersDesired (and
    // the record): write that, not the count the plan started from.
    const workersDesired = this.#workersDesired;
    const fields = {
      leaseEpoch: -1,
      shards: JSON.stringify(shards.map((s) => [s.begin, s.end])),
      totalSteps,
      manifestEtag: manifest.etag ?? '',
      workersDesired,
    };
    await this.#ctx.store.setState(this.jobId, 'STARTING', 'shards planned, waiting for workers', fields);
    this.#record = { ...this.#record, shards, totalSteps, manifestEtag: manifest.etag ?? '', workersDesired, state: 'STARTING', leaseEpoch: -1 };
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'shards_planned',
      message: `${shards.length} shards over ${manifest.sizeBytes} manifest bytes; ${totalSteps} steps; waiting for ${workers} workers`,
      generation: 0,
      step: 0,
    });
  }

  #claimFresh(workers: number): Promise<WorkerSession[]> {
    return this.#ctx.registry.claim(this.jobId, workers, { timeoutMs: this.#ctx.workerWaitMs, signal: this.#abort.signal, accept: (s) => this.#eligible(s) });
  }

  /** An idle worker this job may take: not holding another live job's state, not excluded. */
  #eligible(session: WorkerSession): boolean {
    return (session.held.jobId === '' || session.held.jobId === this.jobId) && !this.#excluded.has(session);
  }

  /** Whether `session` holds this job's state at the committed step (acknowledged or pending). */
  #holdsCommitted(session: WorkerSession): boolean {
    const { held } = session;
    if (held.jobId !== this.jobId) return false;
    if (held.stateStep === this.#committedStep && held.stateHash === this.#lastHash) return true;
    return (held.pendingStep ?? 0) > 0 && held.pendingStep === this.#committedStep && held.pendingHash === this.#lastHash;
  }

  /**
   * A job that was running when the coordinator stopped: waits for workers that
   * re-register holding its committed state (as many as ran before, or 10 s after the
   * first one), then forms the next generation with them and idle joiners. With none,
   * it resumes from its latest checkpoint.
   */
  async #resume(): Promise<void> {
    const { registry } = this.#ctx;
    const startedMs = Date.now();
    this.#recovery = { cause: 'coordinator_restart', sinceMs: startedMs };
    this.#ctx.metrics.recoveries.inc({ job: this.jobId, cause: 'coordinator_restart' });
    const wanted = Math.max(1, Math.min(this.#record.workersActive > 0 ? this.#record.workersActive : this.#workersDesired, this.#spec.spec.fleet.maxWorkers));
    const waitMs = this.#ctx.resumeWaitMs ?? DEFAULT_RESUME_WAIT_MS;
    let firstMatchMs: number | undefined;
    let matches: WorkerSession[] = [];
    for (;;) {
      if (this.#abort.signal.aborted) return;
      matches = registry.idle((s) => this.#holdsCommitted(s)).sort(byWorkerId);
      if (matches.length > 0) firstMatchMs ??= Date.now();
      if (matches.length >= wanted) break;
      const deadline = (firstMatchMs ?? startedMs) + waitMs;
      if (Date.now() >= deadline) break;
      await registry.changed(deadline - Date.now(), this.#abort.signal);
    }
    matches = matches.slice(0, wanted);
    registry.take(matches, this.jobId);
    this.#claimed = matches;
    this.#holders = new Set(matches);
    const resumed = this.#chain.then(async () => {
      if (matches.length === 0) {
        await this.#restore(
          'coordinator_restart',
          `no worker re-registered holding step ${this.#committedStep} (hash ${hashPrefix(this.#lastHash)}) within ${Math.round(waitMs / 1000)} s after a coordinator restart`,
        );
      }
      await this.#formNext(matches, 'coordinator_restart');
    });
    this.#chain = resumed.catch(() => undefined);
    await resumed;
  }

  /**
   * Forms the next generation from `ranks` (in rank order) starting at `startStep`: every
   * lease goes back to waiting at its committed cursor, each rank gets a first lease and
   * its Assignment. A rank that does not hold the state gets `state_source` = rank 0's
   * address; with `restoreUri` every rank restores that checkpoint instead.
   */
  async formGeneration(ranks: readonly WorkerSession[], startStep: number, options: { restoreUri?: string; note?: string } = {}): Promise<void> {
    const leases = this.#leases;
    if (leases === undefined) throw new Error('formGeneration before the lease queue exists');
    const restoreUri = options.restoreUri ?? '';
    await leases.release();
    const number = this.#record.generation + 1;
    const worldSize = ranks.length;
    const globalBatch = this.#spec.spec.training.globalBatchSize;
    const firstLeases: ShardLease[] = [];
    for (let rank = 0; rank < worldSize; rank++) firstLeases.push(await leases.acquire(rank));
    const peers = ranks.map((s, rank) => ({ rank, workerId: s.workerId, collectiveAddress: s.collectiveAddress }));
    // At step 0 every rank creates the same fresh state; later a rank without the
    // committed state fetches it from rank 0, which always holds it.
    const fresh = startStep === 0 && restoreUri === '';
    const source = ranks[0]?.collectiveAddress ?? '';
    const stateSources = ranks.map((s) => (fresh || restoreUri !== '' || this.#holders.has(s) ? '' : source));
    const startStateHash = Buffer.from(this.#lastHash, 'hex');
    this.#generation = { number, ranks, startStep, pending: new Map(), restoreUri, ended: false };
    this.#commitTimes = [Date.now()];
    const now = Date.now();
    await this.#ctx.store.update(this.jobId, {
      generation: number,
      workersActive: worldSize,
      ...(this.#record.startedAt === 0 && { startedAt: now }),
    });
    this.#record = { ...this.#record, generation: number, workersActive: worldSize, startedAt: this.#record.startedAt || now };
    const joiners = ranks.filter((_, rank) => stateSources[rank] !== '').map((s) => s.workerId);
    const how =
      restoreUri !== ''
        ? `; every rank restores ${restoreUri}`
        : joiners.length > 0
          ? `; ${joiners.join(', ')} ${joiners.length === 1 ? 'gets' : 'get'} the state from ${ranks[0]?.workerId ?? ''}`
          : '';
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'generation_started',
      message: `generation ${number}: ${worldSize} ranks (${ranks.map((s) => s.workerId).join(', ')}) from step ${startStep}${how}${options.note === undefined ? '' : ` (${options.note})`}`,
      generation: number,
      step: startStep,
    });
    this.#ctx.metrics.generation.set({ job: this.jobId }, number);
    this.#ctx.metrics.worldSize.set({ job: this.jobId }, worldSize);
    for (const session of ranks) session.held = { jobId: this.jobId, stateStep: startStep, stateHash: '' };
    const manifestUri = this.#spec.spec.data.manifest;
    ranks.forEach((session, rank) => {
      session.send({
        message: {
          $case: 'assignment',
          assignment: {
            jobId: this.jobId,
            generation: number,
            ranks: peers,
            rank,
            globalBatch,
            perRankBatch: perRankBatch(globalBatch, worldSize, rank),
            gradientAccumulation: 1,
            startStep,
            shardLease: firstLeases[rank],
            jobSpecJson: this.#specJson,
            teacherSyncAddress: this.#ctx.teacherSyncAddress,
            totalSteps: this.#record.totalSteps,
            manifestUri,
            manifestEtag: this.#record.manifestEtag,
            stateSource: stateSources[rank] ?? '',
            startStateHash,
            restoreCheckpointUri: restoreUri,
          },
        },
      });
    });
    this.#log.info('generation formed', { generation: number, ranks: peers.map((p) => p.workerId), startStep, joiners, restoreUri });
    // Excluded workers sat this generation out; they may join a later one.
    this.#ctx.registry.unclaim(this.#excluded, this.jobId);
    this.#excluded.clear();
    // A rank that went away while the generation formed was not seen as lost by onLost.
    ranks.forEach((session, rank) => {
      if (this.#ctx.registry.get(session.workerId) !== session) {
        this.#requestAbort(number, 'rank_lost', `rank ${rank} (worker ${session.workerId}) lost at step ${startStep + 1} (last committed ${startStep}) in generation ${number}: it went away while the generation formed`);
      }
    });
  }

  /** AcquireLease from a rank of the current generation. */
  async acquireLease(request: AcquireLeaseRequest): Promise<AcquireLeaseResponse> {
    const generation = this.#generation;
    const leases = this.#leases;
    if (generation === undefined || leases === undefined || this.#outcome !== undefined) {
      throw new FailedPreconditionError(`job ${this.jobId} has no running generation; wait for the next Assignment`);
    }
    if (request.generation !== generation.number || generation.ended) {
      throw new FailedPreconditionError(
        `generation ${request.generation} of job ${this.jobId} is not current (current is ${generation.number}${generation.ended ? ', ending' : ''}); wait for the next Assignment`,
      );
    }
    const holder = generation.ranks[request.rank];
    if (holder === undefined || holder.workerId !== request.workerId) {
      throw new FailedPreconditionError(
        `worker ${request.workerId} does not hold rank ${request.rank} in generation ${generation.number} of job ${this.jobId}`,
      );
    }
    return { lease: await leases.acquire(request.rank) };
  }

  onCommit(session: WorkerSession, commit: CommitStep): void {
    this.#enqueue(() => this.#handleCommit(session, commit));
  }

  onLost(session: WorkerSession, reason: string): void {
    this.#claimed = this.#claimed.filter((s) => s !== session);
    this.#holders.delete(session);
    const generation = this.#generation;
    const rank = generation?.ranks.indexOf(session) ?? -1;
    if (generation === undefined || rank < 0) {
      // Claimed but not (yet) a rank: the generation being formed notices it is gone.
      this.#log.warn('a claimed worker went away outside a generation', { workerId: session.workerId, reason });
      this.#ctx.registry.unclaim([session], this.jobId);
      return;
    }
    const step = this.#committedStep + 1;
    this.#requestAbort(
      generation.number,
      'rank_lost',
      `rank ${rank} (worker ${session.workerId}) lost at step ${step} (last committed ${this.#committedStep}) in generation ${generation.number}: ${reason}`,
    );
  }

  onStepFailed(session: WorkerSession, failed: StepFailed): void {
    const generation = this.#generation;
    const rank = generation?.ranks.indexOf(session) ?? -1;
    if (generation === undefined || rank < 0 || failed.generation !== generation.number || generation.ended) {
      this.#log.debug('StepFailed of another generation ignored', { workerId: session.workerId, generation: failed.generation });
      return;
    }
    const reason = `rank ${rank} (worker ${session.workerId}) failed step ${failed.step} in generation ${generation.number}: ${failed.reason}`;
    if (failed.excludeMe) {
      // It dropped its state: it sits the next generation out, like a lost rank.
      this.#excluded.add(session);
      this.#holders.delete(session);
      session.held = NO_STATE;
      this.#requestAbort(generation.number, 'rank_lost', reason);
      return;
    }
    // A lost peer usually shows up within the delay; one Abort covers both.
    if (this.#stepFailedTimer !== undefined) return;
    const detectedMs = Date.now();
    this.#stepFailedTimer = setTimeout(() => {
      this.#stepFailedTimer = undefined;
      this.#requestAbort(generation.number, 'step_failed', reason, detectedMs);
    }, this.#ctx.stepFailedDelayMs ?? DEFAULT_STEP_FAILED_DELAY_MS);
  }

  onLeaving(session: WorkerSession, reason: string): void {
    // `session.leaving` is set: the next commit holds the ranks and stops it (#boundaryChange),
    // and a generation formed before that leaves it out (#formNext).
    this.#log.info('rank leaves at the next step boundary', { workerId: session.workerId, reason });
  }

  /** Ends generation `number` at once (if it is still current) and forms the next. */
  #requestAbort(number: number, cause: RecoveryCause, reason: string, detectedMs = Date.now()): void {
    this.#enqueue(async () => {
      const generation = this.#generation;
      if (generation === undefined || generation.number !== number || generation.ended) return;
      generation.ended = true;
      clearTimeout(this.#stepFailedTimer);
      this.#stepFailedTimer = undefined;
      this.#log.warn('generation aborted', { generation: number, cause, reason });
      for (const session of generation.ranks) {
        if (this.#ctx.registry.get(session.workerId) === session) session.send({ message: { $case: 'abort', abort: { generation: number, reason } } });
      }
      this.#startRecovery(cause, detectedMs);
      await this.#generationFailed(generation, cause, reason);
      await this.#formNext(generation.ranks, cause);
    });
  }

  #startRecovery(cause: RecoveryCause, sinceMs: number): void {
    this.#ctx.metrics.recoveries.inc({ job: this.jobId, cause });
    this.#recovery ??= { cause, sinceMs };
  }

  /** Counts a generation that ended without a commit; fails the job past the limit. */
  async #generationFailed(generation: Generation, cause: RecoveryCause, reason: string): Promise<void> {
    this.#failedGenerations += 1;
    const limit = this.#spec.spec.fault.maxFailedGenerations;
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_WARNING,
      kind: 'generation_ended',
      message: `generation ${generation.number} ended without a commit (${cause}): ${reason}`,
      generation: generation.number,
      step: this.#committedStep,
    });
    if (this.#failedGenerations > limit) {
      throw new RunFailure(`${reason} (${this.#failedGenerations} generations in a row ended without a commit; spec.fault.maxFailedGenerations is ${limit})`);
    }
  }

  /** Stops ranks that leave the job here (graceful leave, scale-down); they are idle again. */
  #stopRanks(sessions: readonly WorkerSession[], reasonOf: (s: WorkerSession) => string): void {
    for (const session of sessions) {
      session.send({ message: { $case: 'stop', stop: { reason: reasonOf(session) } } });
      session.held = NO_STATE;
      this.#holders.delete(session);
    }
    this.#ctx.registry.unclaim(sessions, this.jobId);
    this.#claimed = this.#claimed.filter((s) => !sessions.includes(s));
  }

  /** The most ranks a generation may have now. */
  #capacity(): number {
    return Math.max(1, Math.min(this.#spec.spec.fleet.maxWorkers, this.#workersDesired));
  }

  /**
   * Forms the next generation from the live ranks of `previous` (holders of the committed
   * state first, in their old order) and idle joiners (by id), at most {@link #capacity}.
   * Below `minWorkers` it waits up to `--worker-wait-seconds` for workers. With no holder
   * of the committed state left it restores the latest checkpoint first.
   */
  async #formNext(previous: readonly WorkerSession[], cause: RecoveryCause | ReconfigurationKind): Promise<void> {
    const { registry } = this.#ctx;
    const { minWorkers } = this.#spec.spec.fleet;
    const deadline = Date.now() + this.#ctx.workerWaitMs;
    let waitingSaid = false;
    for (;;) {
      if (this.#abort.signal.aborted) return;
      const alive = previous.filter((s) => registry.get(s.workerId) === s && !this.#excluded.has(s));
      const leavers = alive.filter((s) => s.leaving !== undefined);
      if (leavers.length > 0) this.#stopRanks(leavers, (s) => `left: ${s.leaving ?? ''}`);
      let survivors = alive.filter((s) => s.leaving === undefined);
      const needsState = this.#restoreUri === '' && this.#committedStep > 0;
      if (needsState && !survivors.some((s) => this.#holders.has(s))) {
        const recovery: RecoveryCause = cause === 'join' || cause === 'leave' || cause === 'scale' ? 'rank_lost' : cause;
        await this.#restore(recovery, 'no rank holding the committed state is left');
        continue;
      }
      // Holders first so rank 0 of the next generation holds the state.
      survivors = [...survivors.filter((s) => this.#holders.has(s)), ...survivors.filter((s) => !this.#holders.has(s))];
      const capacity = this.#capacity();
      if (survivors.length > capacity) {
        const dropped = survivors.slice(capacity);
        survivors = survivors.slice(0, capacity);
        await this.#release(dropped);
      }
      const joiners = registry
        .idle((s) => this.#eligible(s))
        .sort(byWorkerId)
        .slice(0, capacity - survivors.length);
      registry.take(joiners, this.jobId);
      this.#claimed = [...new Set([...this.#claimed, ...joiners])];
      const ranks = [...survivors, ...joiners];
      if (ranks.length >= minWorkers) {
        await this.formGeneration(ranks, this.#committedStep, { restoreUri: this.#restoreUri, note: cause.replace('_', ' ') });
        return;
      }
      // Not enough: keep what we have claimed and wait for more.
      previous = ranks;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new RunFailure(
          `only ${ranks.length} of spec.fleet.minWorkers ${minWorkers} workers available within ${Math.round(this.#ctx.workerWaitMs / 1000)} s ` +
            `after ${cause.replace('_', ' ')} at step ${this.#committedStep}; start more workers or raise --worker-wait-seconds`,
        );
      }
      if (!waitingSaid) {
        waitingSaid = true;
        await this.#ctx.store.appendEvent(this.jobId, {
          severity: Severity.SEVERITY_WARNING,
          kind: 'waiting_for_workers',
          message: `${ranks.length} of spec.fleet.minWorkers ${minWorkers} workers available; waiting up to ${Math.round(left / 1000)} s for more`,
          generation: this.#record.generation,
          step: this.#committedStep,
        });
        this.#ctx.requestWorkers(this.jobId, this.#workersDesired).catch((err: unknown) => this.#log.warn('asking the scaler for workers failed', { err }));
      }
      await registry.changed(left, this.#abort.signal);
    }
  }

  /** Scale-down: stops `sessions` (the highest ranks) and has the scaler end them. */
  async #release(sessions: readonly WorkerSession[]): Promise<void> {
    if (sessions.length === 0) return;
    this.#stopRanks(sessions, () => 'scale-down');
    const ids = sessions.map((s) => s.workerId);
    this.#log.info('scaled down', { workerIds: ids, workers: this.#workersDesired });
    try {
      if (this.#ctx.releaseWorkers !== undefined) await this.#ctx.releaseWorkers(this.jobId, ids, this.#workersDesired);
      else await this.#ctx.requestWorkers(this.jobId, this.#workersDesired);
    } catch (err) {
      this.#log.warn('the scaler could not stop released workers', { err, workerIds: ids });
    }
  }

  /** What a boundary would change now, or undefined when nothing. */
  #boundaryChange(generation: Generation): ReconfigurationKind | undefined {
    const live = generation.ranks.length;
    if (generation.ranks.some((s) => s.leaving !== undefined)) return 'leave';
    const capacity = this.#capacity();
    if (live > capacity) return 'scale';
    if (live < capacity && this.#ctx.registry.idle((s) => this.#eligible(s)).length > 0) return this.#scaleRequested ? 'scale' : 'join';
    return undefined;
  }

  /** After a commit that held the ranks: leavers stopped, the next generation formed. */
  async #reconfigureAtBoundary(generation: Generation, kind: ReconfigurationKind): Promise<void> {
    generation.ended = true;
    this.#scaleRequested = false;
    this.#ctx.metrics.reconfigurations.inc({ job: this.jobId, kind });
    this.#log.info('reconfiguring at a step boundary', { generation: generation.number, kind, step: this.#committedStep });
    await this.#formNext(generation.ranks, kind);
  }

  async #handleCommit(session: WorkerSession, commit: CommitStep): Promise<void> {
    const generation = this.#generation;
    if (generation === undefined || commit.generation !== generation.number || generation.ended) {
      this.#log.debug('CommitStep for another generation ignored', { workerId: session.workerId, generation: commit.generation });
      return;
    }
    const rank = generation.ranks.indexOf(session);
    if (rank < 0) return;
    const expected = this.#committedStep + 1;
    if (commit.step <= this.#committedStep) return; // a repeat after a reconnect
    if (commit.step !== expected) {
      this.#finish({
        kind: 'failed',
        message: `rank ${rank} (worker ${session.workerId}) reported step ${commit.step} but step ${expected} is the next to commit`,
      });
      return;
    }
    generation.pending.set(rank, commit);
    if (generation.pending.size < generation.ranks.length) return;

    const commits = generation.ranks.map((_, r) => generation.pending.get(r)) as CommitStep[];
    generation.pending.clear();
    const nonFinite = commits.map((c, r) => (c.nonfinite ? r : -1)).filter((r) => r >= 0);
    if (nonFinite.length === commits.length) {
      await this.#onNonFinite(generation, expected);
      return;
    }
    if (nonFinite.length > 0) {
      this.#finish({
        kind: 'failed',
        message: `ranks disagree on step ${expected}: rank ${nonFinite.join(', ')} reported a non-finite loss, the others did not`,
      });
      return;
    }
    const hashes = commits.map((c) => Buffer.from(c.stateHash).toString('hex'));
    if (hashes.some((h) => h !== hashes[0])) {
      const listed = hashes.map((h, r) => `rank ${r} ${hashPrefix(h)}`).join(', ');
      this.#finish({ kind: 'failed', message: `state hash mismatch at step ${expected}: ${listed}` });
      return;
    }
    await this.#commit(generation, expected, hashes[0] ?? '', commits);
  }

  /**
   * Every rank found step `step` non-finite and did not apply it: the step is retried by a
   * new generation of the same ranks; after `maxNonFiniteSteps` in a row the job rolls
   * back to its latest checkpoint, and fails if that happens again before it got past.
   */
  async #onNonFinite(generation: Generation, step: number): Promise<void> {
    generation.ended = true;
    this.#nonFiniteInRow += 1;
    const limit = this.#spec.spec.fault.maxNonFiniteSteps;
    this.#ctx.metrics.nonFiniteSteps.inc({ job: this.jobId });
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_WARNING,
      kind: 'nonfinite_step',
      message: `step ${step} was non-finite on every rank (${this.#nonFiniteInRow} of spec.fault.maxNonFiniteSteps ${limit} in a row); not committed`,
      generation: generation.number,
      step: this.#committedStep,
    });
    if (this.#nonFiniteInRow < limit) {
      this.#startRecovery('nonfinite', Date.now());
      await this.#generationFailed(generation, 'nonfinite', `non-finite loss at step ${step}`);
      await this.#formNext(generation.ranks, 'nonfinite');
      return;
    }
    const advice = 'lower the learning rate (spec.recipe.overrides), check the data, then resubmit';
    if (this.#rollback !== undefined) {
      throw new RunFailure(`non-finite loss at step ${step} persisted after rollback to step ${this.#rollback.toStep}: ${advice}`);
    }
    if (this.#spec.spec.checkpoint === null) {
      throw new RunFailure(`non-finite loss at step ${step} for ${this.#nonFiniteInRow} steps in a row and the job has no checkpoint to roll back to: ${advice}`);
    }
    await this.#checkpointWrites;
    const found = await this.#findCheckpoint();
    if (found === undefined) {
      throw new RunFailure(`non-finite loss at step ${step} for ${this.#nonFiniteInRow} steps in a row and no complete checkpoint exists yet to roll back to: ${advice}`);
    }
    this.#startRecovery('rollback', Date.now());
    this.#ctx.metrics.rollbacks.inc({ job: this.jobId });
    this.#rollback = { fromStep: step, toStep: found.step };
    this.#nonFiniteInRow = 0;
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_WARNING,
      kind: 'rollback',
      message: `non-finite loss at step ${step} ${limit} times in a row: rolling back to the checkpoint of step ${found.step} (${found.uri})`,
      generation: generation.number,
      step: this.#committedStep,
    });
    await this.#generationFailed(generation, 'rollback', `non-finite loss at step ${step}`);
    await this.#restoreFrom(found, 'rollback');
    await this.#formNext(generation.ranks, 'rollback');
  }

  #findCheckpoint(): Promise<FoundCheckpoint | undefined> {
    const checkpoint = this.#spec.spec.checkpoint;
    if (checkpoint === null) return Promise.resolve(undefined);
    return findLatestCheckpoint(this.#ctx.s3, checkpoint.uri, this.jobId, this.#committedStep, (uri, why) =>
      this.#log.warn('checkpoint skipped for a restore', { uri, why }),
    );
  }

  /**
   * No rank holds the committed state: the job goes back to its latest complete checkpoint
   * (or to step 0 without one), whatever world size is available.
   */
  async #restore(cause: RecoveryCause, reason: string): Promise<void> {
    await this.#checkpointWrites;
    const found = await this.#findCheckpoint();
    this.#startRecovery(cause, Date.now());
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_WARNING,
      kind: 'checkpoint_restore',
      message: `${reason}: ${found === undefined ? 'no complete checkpoint, restarting from step 0' : `resuming from the checkpoint of step ${found.step} (${found.uri})`}`,
      generation: this.#record.generation,
      step: this.#committedStep,
    });
    await this.#restoreFrom(found, cause);
  }

  /** Resets leases, committed step, hash and ledger to `found` (step 0 when undefined). */
  async #restoreFrom(found: FoundCheckpoint | undefined, cause: RecoveryCause): Promise<void> {
    const { store, metrics } = this.#ctx;
    const data: CheckpointData = found?.data ?? { step: 0, stateHash: '', leaseEpoch: -1, leases: [], samplesCommitted: 0 };
    const lost = Math.max(0, this.#committedStep - data.step);
    await this.#leases?.obliterate();
    const leases = this.#openLeases(data.leaseEpoch);
    this.#leases = leases;
    await leases.restore(data.leaseEpoch, data.leases);
    await truncateSampleLedger(store.redis, store.keys.samples(this.jobId), data.step);
    this.#committedStep = data.step;
    this.#lastHash = data.stateHash;
    this.#samplesCommitted = data.samplesCommitted;
    this.#restoreUri = found?.uri ?? '';
    this.#holders.clear();
    this.#nonFiniteInRow = 0;
    await store.update(this.jobId, { committedStep: data.step, lastHash: data.stateHash, samplesCommitted: data.samplesCommitted, leaseEpoch: data.leaseEpoch });
    this.#record = { ...this.#record, committedStep: data.step, lastHash: data.stateHash, leaseEpoch: data.leaseEpoch };
    metrics.stepsLost.inc({ job: this.jobId }, lost);
    metrics.step.set({ job: this.jobId }, data.step);
    this.#log.warn('restored', { cause, step: data.step, uri: this.#restoreUri, stepsLost: lost });
  }

  async #commit(generation: Generation, step: number, hash: string, commits: readonly CommitStep[]): Promise<void> {
    const { store, metrics } = this.#ctx;
    const leases = this.#leases;
    if (leases === undefined) return;
    const now = Date.now();
    this.#commitTimes.push(now);
    if (this.#commitTimes.length > MAX_RATE_WINDOW + 1) this.#commitTimes.shift();
    const progress = this.#progress(generation, step, commits, now);
    const rank0 = commits[0];
    const checkpointUri = rank0?.checkpointUri ?? '';
    if (checkpointUri !== '') this.#checkpointUri = checkpointUri;
    const samples = commits.reduce((n, c) => n + c.sampleIds.length, 0);
    const samplesCommitted = this.#samplesCommitted + samples;

    // Idempotent (absolute values only): it is retried whole when Redis was away.
    const exhausted = await withRedisRetry(
      async () => {
        const multi = store.redis.multi();
        const ids = leases.queueCursors(multi, commits.flatMap((c) => c.dataCursors));
        multi.hset(store.keys.job(this.jobId), {
          committedStep: step,
          lastHash: hash,
          progress: JSON.stringify(progress),
          samplesCommitted,
          ...(checkpointUri !== '' && { checkpointUri }),
        });
        if (this.#spec.spec.data.recordSamples) {
          const ids_ = commits.flatMap((c) => c.sampleIds);
          const epochs = commits.flatMap((c) => {
            const fallback = c.dataCursors[0]?.epoch ?? 0;
            return c.sampleIds.map((_, i) => c.sampleEpochs[i] ?? fallback);
          });
          multi.hset(store.keys.samples(this.jobId), String(step), encodeLedgerEntry({ ids: ids_, epochs }));
        }
        const results = await multi.exec();
        if (results === null) throw new Error('EXECABORT: the commit transaction was discarded');
        const failed = results.find(([err]) => err !== null);
        if (failed !== undefined) throw failed[0] as Error;
        return ids;
      },
      { signal: this.#abort.signal, onRetry: (err, attempt) => this.#log.warn('commit transaction failed; retrying', { step, attempt, err: errorText(err) }) },
    );
    this.#committedStep = step;
    this.#lastHash = hash;
    this.#samplesCommitted = samplesCommitted;
    this.#holders = new Set(generation.ranks);
    this.#failedGenerations = 0;
    this.#nonFiniteInRow = 0;
    this.#restoreUri = '';
    if (this.#rollback !== undefined && step >= this.#rollback.fromStep) this.#rollback = undefined;

    await withRedisRetry(() => leases.complete(exhausted), { signal: this.#abort.signal });
    if (checkpointUri !== '' && rank0 !== undefined && rank0.checkpointFiles.length > 0) {
      await this.#scheduleCheckpoint(generation, step, hash, checkpointUri, rank0, leases);
    }
    const change = step < this.#record.totalSteps ? this.#boundaryChange(generation) : undefined;
    const ack: ControlResponse = { message: { $case: 'commitAck', commitAck: { generation: generation.number, step, hold: change !== undefined } } };
    for (const session of generation.ranks) {
      session.held = { jobId: this.jobId, stateStep: step, stateHash: hash };
      session.send(ack);
    }

    if (this.#recovery !== undefined) {
      metrics.recoverySeconds.observe({ job: this.jobId }, (now - this.#recovery.sinceMs) / 1000);
      this.#recovery = undefined;
    }
    metrics.committedSteps.inc({ job: this.jobId });
    metrics.samplesCommitted.inc({ job: this.jobId }, samples);
    metrics.step.set({ job: this.jobId }, step);
    metrics.imagesPerSecond.set({ job: this.jobId }, progress.imagesPerSecond);
    for (const [part, value] of Object.entries(progress.losses)) metrics.loss.set({ job: this.jobId, part }, value);
    for (const skipped of commits.flatMap((c) => c.skipped)) metrics.samplesSkipped.inc({ job: this.jobId, reason: skipped.reason });
    store.publish(this.jobId, { update: { $case: 'progress', progress } });
    if (this.#record.state !== 'RUNNING') {
      this.#record = { ...this.#record, state: 'RUNNING' };
      await store.setState(this.jobId, 'RUNNING', `step ${step} committed`);
    }
    if (step >= this.#record.totalSteps) {
      this.#finish({ kind: 'succeeded', committedStep: step, checkpointUri: this.#checkpointUri });
      return;
    }
    if (change !== undefined) await this.#reconfigureAtBoundary(generation, change);
  }

  /**
   * Rank 0 wrote a checkpoint of `step`: `data.json` (the leases as committed now),
   * `manifest.json` and `latest.json` are written in the background, one checkpoint after
   * the other, while training goes on; a restore waits for them.
   */
  async #scheduleCheckpoint(generation: Generation, step: number, hash: string, uri: string, rank0: CommitStep, leases: ShardLeases): Promise<void> {
    const snapshot = await leases.checkpointLeases();
    const data: CheckpointData = { step, stateHash: hash, leaseEpoch: snapshot.leaseEpoch, leases: snapshot.leases, samplesCommitted: this.#samplesCommitted };
    const files = rank0.checkpointFiles.map((f) => ({ key: f.name, bytes: f.bytes, sha256: f.sha256 }));
    this.#checkpointWrites = this.#checkpointWrites.then(async () => {
      try {
        await completeCheckpoint(this.#ctx.s3, uri, files, data);
        await this.#ctx.store.appendEvent(this.jobId, {
          severity: Severity.SEVERITY_INFO,
          kind: 'checkpoint_written',
          message: `checkpoint ${uri}`,
          generation: generation.number,
          step,
        });
      } catch (err) {
        this.#log.warn('completing a checkpoint failed; it stays incomplete', { uri, err });
        await this.#ctx.store
          .appendEvent(this.jobId, {
            severity: Severity.SEVERITY_WARNING,
            kind: 'checkpoint_incomplete',
            message: `checkpoint ${uri} left incomplete: ${errorText(err)}`,
            generation: generation.number,
            step,
          })
          .catch(() => undefined);
      }
    });
  }

  #progress(generation: Generation, step: number, commits: readonly CommitStep[], now: number): JobProgress {
    const sums = new Map<string, { total: number; count: number }>();
    for (const commit of commits) {
      for (const [name, value] of Object.entries(commit.lossParts)) {
        const entry = sums.get(name) ?? { total: 0, count: 0 };
        entry.total += value;
        entry.count += 1;
        sums.set(name, entry);
      }
    }
    const losses = Object.fromEntries([...sums].map(([name, { total, count }]) => [name, total / count]));
    const times = this.#commitTimes;
    const first = times[0] ?? now;
    const intervalMs = times.length > 1 ? (now - first) / (times.length - 1) : 0;
    const globalBatch = this.#spec.spec.training.globalBatchSize;
    const cursors = commits.flatMap((c) => c.dataCursors);
    const epoch = cursors.length === 0 ? 0 : Math.max(...cursors.map((c) => c.epoch));
    return {
      step,
      totalSteps: this.#record.totalSteps,
      epoch,
      generation: generation.number,
      worldSize: generation.ranks.length,
      imagesPerSecond: intervalMs > 0 ? globalBatch / (intervalMs / 1000) : 0,
      losses,
      lr: commits[0]?.lr ?? 0,
      etaSeconds: intervalMs > 0 ? ((this.#record.totalSteps - step) * intervalMs) / 1000 : -1,
      committedAtUnixMs: now,
    };
  }

  /** Stops the ranks, records the terminal state and tidies the lease queue. */
  async #end(outcome: RunOutcome): Promise<void> {
    const { store, registry } = this.#ctx;
    const ranks = [...new Set([...(this.#generation?.ranks ?? []), ...this.#claimed])];
    const now = Date.now();
    const stop = (reason: string): void => {
      for (const session of ranks) {
        session.send({ message: { $case: 'stop', stop: { reason } } });
        // Stop drops the worker's state: it is an idle worker again.
        session.held = NO_STATE;
      }
    };
    const leases = this.#leases;
    // The last checkpoint is complete before the job says it succeeded.
    await this.#checkpointWrites;
    switch (outcome.kind) {
      case 'succeeded':
        stop('job succeeded');
        // Tidied before the state changes, so whoever sees SUCCEEDED sees no lease queue.
        await leases?.obliterate().catch((err: unknown) => this.#log.warn('deleting the lease queue failed', { err: errorText(err) }));
        await store.setState(this.jobId, 'SUCCEEDED', 'job succeeded', { finishedAt: now, workersActive: 0 });
        await store.appendEvent(this.jobId, {
          severity: Severity.SEVERITY_INFO,
          kind: 'job_succeeded',
          message: `all ${outcome.committedStep} steps committed`,
          generation: this.#record.generation,
          step: outcome.committedStep,
        });
        break;
      case 'failed':
        stop(`job failed: ${outcome.message}`);
        this.#log.warn('job failed', { error: outcome.message });
        await store.appendEvent(this.jobId, {
          severity: Severity.SEVERITY_ERROR,
          kind: 'job_failed',
          message: outcome.message,
          generation: this.#record.generation,
          step: this.#committedStep,
        });
        await store.setState(this.jobId, 'FAILED', outcome.message, { error: outcome.message, finishedAt: now, workersActive: 0 });
        // Kept (at committed cursors) for a later checkpoint resume.
        await leases?.release();
        await leases?.close();
        break;
      case 'cancelled':
        stop(`cancelled: ${outcome.reason}`);
        await leases?.obliterate();
        break;
      case 'suspended':
        await leases?.close();
        if (this.#record.generation === 0 || this.#committedStep === 0) {
          // Nothing committed: the next coordinator starts it from scratch.
          await store.setState(this.jobId, 'QUEUED', 'coordinator restarting', { generation: 0, workersActive: 0 });
        }
        break;
      default: {
        const unknown: never = outcome;
        return unknown;
      }
    }
    registry.unclaim(ranks, this.jobId);
    if (outcome.kind !== 'suspended') {
      registry.forgetHeld(this.jobId);
      await this.#ctx.requestWorkers(this.jobId, 0);
      for (const metric of [this.#ctx.metrics.generation, this.#ctx.metrics.worldSize, this.#ctx.metrics.imagesPerSecond]) {
        metric.removeMatching({ job: this.jobId });
      }
    }
  }
}

/** A reason the job cannot run, safe to show users. */
export class RunFailure extends Error {
  override readonly name = 'RunFailure';
}
