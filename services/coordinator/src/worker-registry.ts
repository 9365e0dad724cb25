/**
 * The workers that hold a Control stream to this coordinator: who they are, what state
 * they hold, whether a job has claimed them, and when they were last heard from. Job
 * runners claim idle workers here and are told when one of theirs commits a step or is
 * lost (stream end, `Leaving`, missed heartbeats).
 */
import type { CommitStep, ComputeBackend, ControlResponse, StepFailed, WorkerCapabilities } from '@dinofleet/proto';

/**
 * The state a worker says it holds (Register.job_id / state_step / state_hash, and the
 * unacknowledged state after `pendingStep` when it sent that step's CommitStep).
 */
export interface HeldState {
  readonly jobId: string;
  readonly stateStep: number;
  /** Hex; '' when none. */
  readonly stateHash: string;
  /** Step of the pending (unacknowledged) state; 0 when none. @default 0 */
  readonly pendingStep?: number;
  /** Hex hash of the pending state; '' when none. @default '' */
  readonly pendingHash?: string;
}

/** The state of a worker that holds nothing. */
export const NO_STATE: HeldState = { jobId: '', stateStep: 0, stateHash: '' };

/** One registered worker. */
export interface WorkerSession {
  readonly workerId: string;
  readonly collectiveAddress: string;
  readonly backend: ComputeBackend;
  readonly capabilities: WorkerCapabilities | undefined;
  /** What it held when it registered (cleared once a job takes it on). */
  held: HeldState;
  /** The job that claimed it, or undefined when idle. */
  claimedBy: string | undefined;
  /** ms since the epoch of the last message. */
  lastSeenMs: number;
  /** Set once it sent `Leaving{graceful:true}` (its reason): never handed to a job again. */
  leaving: string | undefined;
  /** Sends a message on its Control stream (dropped when the stream is gone). */
  send(message: ControlResponse): void;
  /** Ends its Control stream from our side. */
  end(): void;
}

/** What a job runner hears about the workers it claimed (and about idle ones). */
export interface WorkerListener {
  onCommit(session: WorkerSession, commit: CommitStep): void;
  onLost(session: WorkerSession, reason: string): void;
  /** The worker's step failed (it keeps its state and waits). */
  onStepFailed?(session: WorkerSession, failed: StepFailed): void;
  /** The worker leaves at the next step boundary (`Leaving{graceful:true}`). */
  onLeaving?(session: WorkerSession, reason: string): void;
}

/** Options of {@link WorkerRegistry}. */
export interface WorkerRegistryOptions {
  /** A worker silent this long is lost, in ms. */
  readonly heartbeatTimeoutMs: number;
  /** Called when the number of registered workers changes. */
  readonly onCountChange?: (registered: number) => void;
}

/** Registered workers by id. */
export class WorkerRegistry {
  readonly #sessions = new Map<string, WorkerSession>();
  readonly #listeners = new Map<string, WorkerListener>();
  readonly #waiters = new Set<() => void>();
  readonly #options: WorkerRegistryOptions;
  readonly #timer: NodeJS.Timeout;

  constructor(options: WorkerRegistryOptions) {
    this.#options = options;
    this.#timer = setInterval(() => this.#checkHeartbeats(), Math.max(100, Math.min(1000, options.heartbeatTimeoutMs / 4)));
    this.#timer.unref();
  }

  /** Number of registered workers. */
  get size(): number {
    return this.#sessions.size;
  }

  /** Every registered worker. */
  all(): WorkerSession[] {
    return [...this.#sessions.values()];
  }

  /** A worker by id. */
  get(workerId: string): WorkerSession | undefined {
    return this.#sessions.get(workerId);
  }

  /**
   * Adds a worker that registered. A worker id that is already registered replaces the
   * old session, which counts as lost (a reconnect after a break we had not seen yet).
   */
  register(session: WorkerSession): void {
    const previous = this.#sessions.get(session.workerId);
    if (previous !== undefined) this.remove(previous, 're-registered on a new control stream');
    this.#sessions.set(session.workerId, session);
    this.#options.onCountChange?.(this.#sessions.size);
    this.#wake();
  }

  /** Removes a worker (its stream ended, it left, or it went silent) and tells its job. */
  remove(session: WorkerSession, reason: string): void {
    if (this.#sessions.get(session.workerId) !== session) return;
    this.#sessions.delete(session.workerId);
    this.#options.onCountChange?.(this.#sessions.size);
    const claimedBy = session.claimedBy;
    session.claimedBy = undefined;
    if (claimedBy !== undefined) this.#listeners.get(claimedBy)?.onLost(session, reason);
    session.end();
    this.#wake();
  }

  /** A message arrived from `session`: it is alive. */
  touch(session: WorkerSession): void {
    session.lastSeenMs = Date.now();
  }

  /** Routes a StepFailed to the job that claimed the worker (ignored when idle). */
  stepFailed(session: WorkerSession, failed: StepFailed): void {
    if (session.claimedBy === undefined) return;
    this.#listeners.get(session.claimedBy)?.onStepFailed?.(session, failed);
  }

  /**
   * A worker announced a graceful leave: it is never handed out again; its job (if any)
   * is told. Returns false when no job holds it (the caller stops it at once).
   */
  leaving(session: WorkerSession, reason: string): boolean {
    session.leaving = reason;
    if (session.claimedBy === undefined) return false;
    this.#listeners.get(session.claimedBy)?.onLeaving?.(session, reason);
    return true;
  }

  /** Routes a CommitStep to the job that claimed the worker (ignored when idle). */
  commit(session: WorkerSession, commit: CommitStep): void {
    if (session.claimedBy === undefined) return;
    this.#listeners.get(session.claimedBy)?.onCommit(session, commit);
  }

  /** Subscribes a job runner to its workers' commits and losses. */
  listen(jobId: string, listener: WorkerListener): () => void {
    this.#listeners.set(jobId, listener);
    return () => {
      if (this.#listeners.get(jobId) === listener) this.#listeners.delete(jobId);
    };
  }

  /** Idle workers (registered, not claimed) that `accept` takes. */
  idle(accept: (session: WorkerSession) => boolean = () => true): WorkerSession[] {
    return this.all().filter((s) => s.claimedBy === undefined && s.leaving === undefined && accept(s));
  }

  /**
   * Waits until `count` idle workers that `accept` takes exist, claims them for `jobId` and
   * returns them sorted by worker id. Rejects with `signal`'s reason when it aborts, and
   * with a timeout message after `timeoutMs`.
   */
  async claim(
    jobId: string,
    count: number,
    options: { timeoutMs: number; signal: AbortSignal; accept?: (session: WorkerSession) => boolean; onProgress?: (idle: number) => void },
  ): Promise<WorkerSession[]> {
    const deadline = Date.now() + options.timeoutMs;
    for (;;) {
      options.signal.throwIfAborted();
      const idle = this.idle(options.accept).sort((a, b) => (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0));
      options.onProgress?.(idle.length);
      if (idle.length >= count) {
        const chosen = idle.slice(0, count);
        for (const session of chosen) session.claimedBy = jobId;
        return chosen;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new ClaimTimeoutError(count, idle.length, options.timeoutMs);
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.#waiters.delete(done);
          options.signal.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.#waiters.add(done);
        options.signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** Claims idle workers for `jobId` at once (they must be idle: see {@link idle}). */
  take(sessions: Iterable<WorkerSession>, jobId: string): void {
    for (const session of sessions) {
      if (session.claimedBy !== undefined && session.claimedBy !== jobId) throw new Error(`worker ${session.workerId} is claimed by job ${session.claimedBy}`);
      session.claimedBy = jobId;
    }
  }

  /**
   * Resolves at the next change of the registered or idle workers (one registered, left,
   * was given back), after `timeoutMs`, or when `signal` aborts, whichever comes first.
   */
  changed(timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, timeoutMs));
      this.#waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Gives workers back to the idle pool (the job no longer uses them). */
  unclaim(sessions: Iterable<WorkerSession>, jobId: string): void {
    for (const session of sessions) if (session.claimedBy === jobId) session.claimedBy = undefined;
    this.#wake();
  }

  /** Re-checks waiting claims (a worker's held state was cleared). */
  wake(): void {
    this.#wake();
  }

  /** Forgets the state workers hold for `jobId` (the job ended): they are fresh idle workers. */
  forgetHeld(jobId: string): void {
    for (const session of this.all()) {
      if (session.held.jobId === jobId) session.held = NO_STATE;
    }
    this.#wake();
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  #checkHeartbeats(): void {
    const cutoff = Date.now() - this.#options.heartbeatTimeoutMs;
    for (const session of this.all()) {
      if (session.lastSeenMs < cutoff) {
        this.remove(session, `no heartbeat for ${Math.round(this.#options.heartbeatTimeoutMs / 1000)} s`);
      }
    }
  }

  /** Ends every stream and stops the heartbeat check. */
  close(): void {
    clearInterval(this.#timer);
    for (const session of this.all()) {
      this.#sessions.delete(session.workerId);
      session.end();
    }
    this.#wake();
  }
}

/** Not enough workers registered in time. */
export class ClaimTimeoutError extends Error {
  override readonly name = 'ClaimTimeoutError';
  constructor(
    readonly wanted: number,
    readonly idle: number,
    readonly timeoutMs: number,
  ) {
    super(`only ${idle} of ${wanted} workers registered within ${Math.round(timeoutMs / 1000)} s`);
  }
}
