/**
 * Runs one training job (the body of the `jobs` queue's processor): plans shards, opens
 * the lease queue, gets workers, forms a generation, commits steps until `total_steps`,
 * and ends the job SUCCEEDED, FAILED or CANCELLED (docs/cluster.md "Job lifecycle",
 * "Control stream and the step loop").
 *
 * Membership is held as a {@link Generation}; in issue 3 losing a rank fails the job.
 * Issue 4 replaces that by forming the next generation from the survivors
 * ({@link JobRunner.formGeneration} already takes any rank list and start step).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { JobSpecError, parseJobSpec, parseS3Uri, resolveJobSpec } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { statManifest } from '@dinofleet/data';
import { FailedPreconditionError } from '@dinofleet/proto';
import type { AcquireLeaseRequest, AcquireLeaseResponse, CommitStep, ControlResponse, JobProgress, ShardLease } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import type { Redis } from 'ioredis';
import type { CoordinatorMetrics } from './coordinator-metrics.ts';
import type { LeaseAuthority } from './control-stream.ts';
import { Severity, TERMINAL_STATES } from './job-store.ts';
import type { JobRecord, JobStore } from './job-store.ts';
import { isManifestMissing, manifestMissingMessage } from './manifest-check.ts';
import { obliterateLeaseQueue, ShardLeases } from './shard-leases.ts';
import { perRankBatch, planShards, shardCount, totalStepsOf } from './shard-plan.ts';
import { ClaimTimeoutError } from './worker-registry.ts';
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
}

/** The ranks of one generation. */
export interface Generation {
  readonly number: number;
  readonly ranks: readonly WorkerSession[];
  readonly startStep: number;
  /** CommitStep of each rank for the step being committed. */
  readonly pending: Map<number, CommitStep>;
}

/** Formats the first 4 hex digits of a hash for messages: `3fa2…`. */
export function hashPrefix(hex: string): string {
  return hex === '' ? '(empty)' : `${hex.slice(0, 4)}…`;
}

/** The spec text's format for `parseJobSpec`. */
export function specFormat(text: string): 'json' | 'yaml' {
  return text.trimStart().startsWith('{') ? 'json' : 'yaml';
}

const MAX_RATE_WINDOW = 10;

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
  #checkpointUri = '';
  #commitTimes: number[] = [];
  #commitChain: Promise<unknown> = Promise.resolve();
  #claimed: WorkerSession[] = [];
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
      if (!this.#abort.signal.aborted) {
        if (err instanceof ClaimTimeoutError) {
          this.#finish({
            kind: 'failed',
            message: `${err.message} (job wants ${err.wanted}); start more workers (dinofleet up --workers, --scaler local) or raise --worker-wait-seconds`,
          });
        } else if (err instanceof RunFailure) {
          this.#finish({ kind: 'failed', message: err.message });
        } else {
          this.#log.error('job run failed unexpectedly', { err });
          this.#finish({ kind: 'failed', message: `internal error: ${err instanceof Error ? err.message : String(err)}` });
        }
      }
    }
    const outcome = await this.#done;
    try {
      await this.#commitChain;
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

  #finish(outcome: RunOutcome): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = outcome;
    this.#abort.abort(new Error(outcome.kind));
    this.#resolveDone(outcome);
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
    const resuming = record.generation > 0 && record.committedStep > 0 && record.shards !== undefined;
    const workers = record.workersDesired > 0 ? record.workersDesired : this.#spec.spec.fleet.workers;

    if (!resuming) await this.#plan(workers);
    const shards = this.#record.shards ?? [];
    this.#leases = new ShardLeases({
      connection: this.#ctx.connection,
      prefix: this.#ctx.prefix,
      jobId: this.jobId,
      shards,
      seed: this.#spec.spec.training.seed,
      leaseEpoch: this.#record.leaseEpoch,
      saveLeaseEpoch: (epoch) => this.#ctx.store.update(this.jobId, { leaseEpoch: epoch }),
    });
    // Leases a previous coordinator handed out are nobody's now.
    await this.#leases.recoverOrphans();
    this.#ctx.metrics.totalSteps.set({ job: this.jobId }, this.#record.totalSteps);
    this.#ctx.metrics.step.set({ job: this.jobId }, this.#committedStep);

    try {
      await this.#ctx.requestWorkers(this.jobId, workers);
    } catch (err) {
      throw new RunFailure(`could not start ${workers} workers: ${err instanceof Error ? err.message : String(err)}; see the worker logs (--worker-log-dir)`);
    }
    const sessions = resuming ? await this.#claimResuming(workers) : await this.#claimFresh(workers);
    this.#claimed = sessions;
    if (this.#abort.signal.aborted) return;
    await this.formGeneration(sessions, this.#committedStep);
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
    const fields = {
      leaseEpoch: -1,
      shards: JSON.stringify(shards.map((s) => [s.begin, s.end])),
      totalSteps,
      manifestEtag: manifest.etag ?? '',
      workersDesired: workers,
    };
    await this.#ctx.store.setState(this.jobId, 'STARTING', 'shards planned, waiting for workers', fields);
    this.#record = { ...this.#record, shards, totalSteps, manifestEtag: manifest.etag ?? '', workersDesired: workers, state: 'STARTING', leaseEpoch: -1 };
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'shards_planned',
      message: `${shards.length} shards over ${manifest.sizeBytes} manifest bytes; ${totalSteps} steps; waiting for ${workers} workers`,
      generation: 0,
      step: 0,
    });
  }

  #claimFresh(workers: number): Promise<WorkerSession[]> {
    // A worker holding another live job's state is kept for that job's resume.
    const fresh = (s: WorkerSession): boolean => s.held.jobId === '' || s.held.jobId === this.jobId;
    return this.#ctx.registry.claim(this.jobId, workers, { timeoutMs: this.#ctx.workerWaitMs, signal: this.#abort.signal, accept: fresh });
  }

  /**
   * A job that was running when the coordinator stopped continues only with workers that
   * re-registered holding its state at the committed step (checkpoint resume comes later).
   */
  async #claimResuming(workers: number): Promise<WorkerSession[]> {
    const { committedStep, lastHash } = this.#record;
    const matches = (s: WorkerSession): boolean =>
      s.held.jobId === this.jobId && s.held.stateStep === committedStep && s.held.stateHash === lastHash;
    try {
      return await this.#ctx.registry.claim(this.jobId, workers, {
        timeoutMs: this.#ctx.workerWaitMs,
        signal: this.#abort.signal,
        accept: matches,
        onProgress: () => {
          const stale = this.#ctx.registry.idle((s) => s.held.jobId === this.jobId && !matches(s))[0];
          if (stale !== undefined) {
            throw new RunFailure(
              `cannot resume after a coordinator restart: worker ${stale.workerId} holds step ${stale.held.stateStep} ` +
                `(hash ${hashPrefix(stale.held.stateHash)}) but step ${committedStep} (hash ${hashPrefix(lastHash)}) is the last committed; ` +
                'checkpoint resume is not implemented yet: resubmit the job',
            );
          }
        },
      });
    } catch (err) {
      if (err instanceof ClaimTimeoutError) {
        throw new RunFailure(
          `cannot resume after a coordinator restart: only ${err.idle} of ${workers} workers re-registered holding step ${committedStep} ` +
            `(hash ${hashPrefix(lastHash)}) within ${Math.round(err.timeoutMs / 1000)} s; checkpoint resume is not implemented yet: resubmit the job`,
        );
      }
      throw err;
    }
  }

  /**
   * Forms the next generation from `ranks` (in rank order) starting at `startStep`: every
   * lease goes back to waiting at its committed cursor, each rank gets a first lease and
   * its Assignment.
   */
  async formGeneration(ranks: readonly WorkerSession[], startStep: number): Promise<void> {
    const leases = this.#leases;
    if (leases === undefined) throw new Error('formGeneration before the lease queue exists');
    await leases.release();
    const number = this.#record.generation + 1;
    const worldSize = ranks.length;
    const globalBatch = this.#spec.spec.training.globalBatchSize;
    const firstLeases: ShardLease[] = [];
    for (let rank = 0; rank < worldSize; rank++) firstLeases.push(await leases.acquire(rank));
    const peers = ranks.map((s, rank) => ({ rank, workerId: s.workerId, collectiveAddress: s.collectiveAddress }));
    this.#generation = { number, ranks, startStep, pending: new Map() };
    this.#commitTimes = [Date.now()];
    const now = Date.now();
    await this.#ctx.store.update(this.jobId, {
      generation: number,
      workersActive: worldSize,
      ...(this.#record.startedAt === 0 && { startedAt: now }),
    });
    this.#record = { ...this.#record, generation: number, workersActive: worldSize, startedAt: this.#record.startedAt || now };
    await this.#ctx.store.appendEvent(this.jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'generation_started',
      message: `generation ${number}: ${worldSize} ranks (${ranks.map((s) => s.workerId).join(', ')}) from step ${startStep}`,
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
          },
        },
      });
    });
    this.#log.info('generation formed', { generation: number, ranks: peers.map((p) => p.workerId), startStep });
    // A rank that went away while the generation formed was not seen as lost by onLost.
    ranks.forEach((session, rank) => {
      if (this.#ctx.registry.get(session.workerId) !== session) {
        this.#finish({
          kind: 'failed',
          message: `rank ${rank} (worker ${session.workerId}) lost at step ${startStep + 1} (last committed ${startStep}) in generation ${number}: it went away while the generation formed`,
        });
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
    if (request.generation !== generation.number) {
      throw new FailedPreconditionError(
        `generation ${request.generation} of job ${this.jobId} is not current (current is ${generation.number}); wait for the next Assignment`,
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
    const next = this.#commitChain.then(() => this.#handleCommit(session, commit));
    this.#commitChain = next.catch((err: unknown) => {
      this.#log.error('committing a step failed', { err });
      this.#finish({ kind: 'failed', message: `committing step ${commit.step} failed: ${err instanceof Error ? err.message : String(err)}` });
    });
  }

  onLost(session: WorkerSession, reason: string): void {
    const generation = this.#generation;
    const rank = generation?.ranks.indexOf(session) ?? -1;
    this.#claimed = this.#claimed.filter((s) => s !== session);
    if (generation === undefined || rank < 0) {
      this.#log.warn('a claimed worker went away before its generation formed', { workerId: session.workerId, reason });
      // Nothing was assigned yet: give its place back to the wait for workers.
      this.#ctx.registry.unclaim([session], this.jobId);
      return;
    }
    const step = this.#committedStep + 1;
    this.#finish({
      kind: 'failed',
      message: `rank ${rank} (worker ${session.workerId}) lost at step ${step} (last committed ${this.#committedStep}) in generation ${generation.number}: ${reason}`,
    });
  }

  async #handleCommit(session: WorkerSession, commit: CommitStep): Promise<void> {
    if (this.#outcome !== undefined) return;
    const generation = this.#generation;
    if (generation === undefined || commit.generation !== generation.number) {
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
    const hashes = commits.map((c) => Buffer.from(c.stateHash).toString('hex'));
    if (hashes.some((h) => h !== hashes[0])) {
      const listed = hashes.map((h, r) => `rank ${r} ${hashPrefix(h)}`).join(', ');
      this.#finish({ kind: 'failed', message: `state hash mismatch at step ${expected}: ${listed}` });
      return;
    }
    await this.#commit(generation, expected, hashes[0] ?? '', commits);
  }

  async #commit(generation: Generation, step: number, hash: string, commits: readonly CommitStep[]): Promise<void> {
    const { store, metrics } = this.#ctx;
    const leases = this.#leases;
    if (leases === undefined) return;
    const now = Date.now();
    this.#commitTimes.push(now);
    if (this.#commitTimes.length > MAX_RATE_WINDOW + 1) this.#commitTimes.shift();
    const progress = this.#progress(generation, step, commits, now);
    const checkpointUri = commits[0]?.checkpointUri ?? '';
    if (checkpointUri !== '') this.#checkpointUri = checkpointUri;

    const multi = store.redis.multi();
    const exhausted = leases.queueCursors(multi, commits.flatMap((c) => c.dataCursors));
    multi.hset(store.keys.job(this.jobId), {
      committedStep: step,
      lastHash: hash,
      progress: JSON.stringify(progress),
      ...(checkpointUri !== '' && { checkpointUri }),
    });
    if (this.#spec.spec.data.recordSamples) {
      multi.hset(store.keys.samples(this.jobId), String(step), JSON.stringify(commits.flatMap((c) => c.sampleIds)));
    }
    const checkpointEvent =
      checkpointUri === ''
        ? undefined
        : { atUnixMs: now, severity: Severity.SEVERITY_INFO, kind: 'checkpoint_written', message: `checkpoint ${checkpointUri}`, generation: generation.number, step };
    if (checkpointEvent !== undefined) store.queueEvent(multi, this.jobId, checkpointEvent);
    const results = await multi.exec();
    const failed = results?.find(([err]) => err !== null);
    if (failed !== undefined) throw failed[0] as Error;
    this.#committedStep = step;

    await leases.complete(exhausted);
    const ack: ControlResponse = { message: { $case: 'commitAck', commitAck: { generation: generation.number, step } } };
    for (const session of generation.ranks) {
      session.held = { jobId: this.jobId, stateStep: step, stateHash: hash };
      session.send(ack);
    }

    metrics.committedSteps.inc({ job: this.jobId });
    metrics.step.set({ job: this.jobId }, step);
    metrics.imagesPerSecond.set({ job: this.jobId }, progress.imagesPerSecond);
    for (const [part, value] of Object.entries(progress.losses)) metrics.loss.set({ job: this.jobId, part }, value);
    for (const skipped of commits.flatMap((c) => c.skipped)) metrics.samplesSkipped.inc({ job: this.jobId, reason: skipped.reason });
    store.publish(this.jobId, { update: { $case: 'progress', progress } });
    if (checkpointEvent !== undefined) store.publish(this.jobId, { update: { $case: 'event', event: checkpointEvent } });
    if (this.#record.state !== 'RUNNING') {
      this.#record = { ...this.#record, state: 'RUNNING' };
      await store.setState(this.jobId, 'RUNNING', `step ${step} committed`);
    }
    if (step >= this.#record.totalSteps) {
      this.#finish({ kind: 'succeeded', committedStep: step, checkpointUri: this.#checkpointUri });
    }
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
    const ranks = this.#generation?.ranks ?? [];
    const now = Date.now();
    const stop = (reason: string): void => {
      for (const session of ranks) {
        session.send({ message: { $case: 'stop', stop: { reason } } });
        // Stop drops the worker's state: it is an idle worker again.
        session.held = { jobId: '', stateStep: 0, stateHash: '' };
      }
    };
    const leases = this.#leases;
    switch (outcome.kind) {
      case 'succeeded':
        stop('job succeeded');
        await store.setState(this.jobId, 'SUCCEEDED', 'job succeeded', { finishedAt: now, workersActive: 0 });
        await store.appendEvent(this.jobId, {
          severity: Severity.SEVERITY_INFO,
          kind: 'job_succeeded',
          message: `all ${outcome.committedStep} steps committed`,
          generation: this.#record.generation,
          step: outcome.committedStep,
        });
        await leases?.obliterate();
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
    registry.unclaim([...this.#claimed, ...ranks], this.jobId);
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
