/**
 * The centers of every job (docs/cluster.md, "teacher-sync" and "Elasticity and failures"
 * → "teacher-sync (changes)"): every rank of generation g pushes its step-s teacher sums
 * together with the center the step used (`base_center`); once `world_size` distinct ranks
 * of g pushed step s, the center of (g, s+1) is `updateCenter(base, Σ_r sums_r, Σ_r count_r, m)`.
 *
 * Sums are added in rank order in float32, and `updateCenter` is the one from
 * `@dinofleet/dino`, so the result has the same bits as the in-process update a single
 * rank would compute from the same all-reduced sums. Because each push carries its base,
 * no center depends on an earlier one kept here: a restarted teacher-sync computes the same
 * center as soon as the ranks push (again).
 */
import { updateCenter } from '@dinofleet/dino';
import {
  AbortedError,
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  UnavailableError,
} from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';

/** Steps whose centers are kept per job by default (docs/cluster.md). */
export const DEFAULT_KEPT_CENTERS = 64;

/** (generation, step) pairs of one job that may have sums pending at once; more means a runaway client. */
export const MAX_PENDING_STEPS_PER_JOB = 256;

/**
 * Generations whose centers are kept for one step. A step is run again by a new generation
 * only after a failure, so more than a few is a runaway; the oldest go first.
 */
export const MAX_GENERATIONS_PER_STEP = 4;

/** One rank's contribution for a step, decoded. */
export interface TeacherSums {
  /** Job id. */
  readonly jobId: string;
  /** Generation the step ran in. */
  readonly generation: number;
  /** Step the sums were computed at. */
  readonly step: number;
  /** The sender's rank, < worldSize. */
  readonly rank: number;
  /** Per-dimension CLS sums. */
  readonly sums: Float32Array;
  /** Rows summed into `sums`, > 0. */
  readonly count: number;
  /** Per-dimension patch sums; empty when the recipe has no patch center. */
  readonly patchSums: Float32Array;
  /** Rows summed into `patchSums` (may be 0 on one rank). */
  readonly patchCount: number;
  /** Ranks of the generation, > 0. */
  readonly worldSize: number;
  /** Center momentum m in [0, 1]. */
  readonly centerMomentum: number;
  /**
   * The center the step used (the rank's `state.center`), as many values as `sums`; equal
   * on every rank of the generation. Empty is accepted at step 0 only, where it means zeros
   * (`center_0`); later steps need it.
   */
  readonly baseCenter: Float32Array;
  /** The patch center the step used, as many values as `patchSums`; empty under the same rule. */
  readonly basePatchCenter: Float32Array;
}

/** The center one step uses. */
export interface CenterRecord {
  /** The step that uses it. */
  readonly step: number;
  /** Generation whose sums produced it (0 for the initial zeros). */
  readonly generation: number;
  /** The CLS center. */
  readonly center: Float32Array;
  /** The patch center; empty when the job has none. */
  readonly patchCenter: Float32Array;
}

/** What a push did. */
export interface PushResult {
  /** Ranks of this (generation, step) that have pushed. */
  readonly ranksReceived: number;
  /** Whether the center of (generation, step + 1) exists. */
  readonly centerReady: boolean;
  /** The center this push completed, if it completed one. */
  readonly computed: CenterRecord | null;
}

/** Settings for {@link CenterStore}. */
export interface CenterStoreOptions {
  /** Steps whose centers are kept per job (each for up to {@link MAX_GENERATIONS_PER_STEP} generations), ≥ 1. @default 64 */
  readonly keptCenters?: number;
  /** Where odd pushes are logged. */
  readonly logger: Logger;
}

interface StepSums {
  readonly generation: number;
  readonly step: number;
  readonly worldSize: number;
  readonly centerMomentum: number;
  /** The base every rank of the step pushed (the first accepted push fixes it). */
  readonly baseCenter: Float32Array;
  readonly basePatchCenter: Float32Array;
  readonly ranks: Map<number, TeacherSums>;
}

interface CenterWaiter {
  readonly step: number;
  /** 0: any generation. */
  readonly generation: number;
  readonly resolve: (record: CenterRecord) => void;
  readonly reject: (err: Error) => void;
}

interface CenterWatcher {
  /** A new center was computed. */
  readonly deliver: (record: CenterRecord) => void;
  /** Look at the store again (it may have closed). */
  readonly wake: () => void;
}

class JobCenters {
  /** Values per center, fixed by the first accepted push. */
  dims: number | undefined;
  /** Values per patch center (0: none), fixed by the first accepted push. */
  patchDims: number | undefined;
  /**
   * Step that uses the center → generation → center. Iteration order is the order in
   * which steps last got a center, so the first entry is the one to drop: after a rollback
   * the job computes low steps again, and those must outlive the abandoned high ones.
   */
  readonly centers = new Map<number, Map<number, CenterRecord>>();
  /** Pushed step → the newest generation that pushed it (least recently raised first). */
  readonly newestGeneration = new Map<number, number>();
  /** `${generation}/${step}` → sums so far. */
  readonly pending = new Map<string, StepSums>();
  readonly waiters = new Set<CenterWaiter>();
  readonly watchers = new Set<CenterWatcher>();

  idle(): boolean {
    return this.dims === undefined && this.waiters.size === 0 && this.watchers.size === 0;
  }
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return firstDifference(a, b) === undefined;
}

/** Index of the first value whose bits differ, the length if only lengths differ, `undefined` when equal. */
function firstDifference(a: Float32Array, b: Float32Array): number | undefined {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return i;
  return a.length === b.length ? undefined : n;
}

/** Σ over ranks 0..W−1 in that order, each addition rounded to float32. */
function sumInRankOrder(parts: readonly Float32Array[], dims: number): Float32Array {
  const total = new Float32Array(dims);
  for (const part of parts) for (let i = 0; i < dims; i++) total[i] = (total[i] as number) + (part[i] as number);
  return total;
}

/**
 * The base a push names for a vector of `dims` values: its own, or zeros when it sent none
 * at step 0 (a client from before base centers; center_0 is zeros by definition).
 */
function resolveBase(base: Float32Array, dims: number, step: number, field: string, valuesField: string, where: string): Float32Array {
  if (base.length === dims) return base;
  if (base.length === 0) {
    if (step === 0) return new Float32Array(dims);
    throw new InvalidArgumentError(
      `${where}: ${field} is empty; every push after step 0 must carry the center its step used (the rank's state), so that teacher-sync needs no history — update the worker`,
    );
  }
  throw new InvalidArgumentError(`${where}: ${field} has ${base.length} values, ${valuesField} has ${dims}; they must match`);
}

/** Drops the first (least recently set) keys of `map` until it holds at most `max`. */
function trimOldest(map: Map<number, unknown>, max: number): void {
  for (const key of map.keys()) {
    if (map.size <= max) return;
    map.delete(key);
  }
}

/**
 * Centers and pending sums of every job, in memory. Not thread-safe in any sense that
 * matters here: all calls run on the event loop.
 */
export class CenterStore {
  readonly #jobs = new Map<string, JobCenters>();
  readonly #keptCenters: number;
  readonly #logger: Logger;
  #closed = false;

  constructor(options: CenterStoreOptions) {
    const kept = options.keptCenters ?? DEFAULT_KEPT_CENTERS;
    if (!Number.isSafeInteger(kept) || kept < 1) throw new InvalidArgumentError(`keptCenters must be an integer ≥ 1, got ${kept}`);
    this.#keptCenters = kept;
    this.#logger = options.logger;
  }

  #job(jobId: string): JobCenters {
    let job = this.#jobs.get(jobId);
    if (job === undefined) {
      job = new JobCenters();
      this.#jobs.set(jobId, job);
    }
    return job;
  }

  #forgetIfIdle(jobId: string): void {
    if (this.#jobs.get(jobId)?.idle() === true) this.#jobs.delete(jobId);
  }

  /**
   * Adds one rank's sums. Idempotent for a repeated (generation, step, rank), also after
   * the center exists.
   *
   * @throws InvalidArgumentError for a push that disagrees with the job's earlier pushes
   *   (value counts), with itself (base lengths, a missing base after step 0) or with the
   *   other ranks of its step (world size, momentum).
   * @throws FailedPreconditionError when its base center differs from the other ranks' of
   *   the step (the ranks are not in lock-step).
   * @throws AbortedError when a newer generation has pushed the same step.
   */
  push(sums: TeacherSums): PushResult {
    if (this.#closed) throw new UnavailableError('teacher-sync is shutting down');
    try {
      return this.#push(sums.jobId, this.#job(sums.jobId), sums);
    } finally {
      this.#forgetIfIdle(sums.jobId);
    }
  }

  #push(jobId: string, job: JobCenters, sums: TeacherSums): PushResult {
    const { generation, step, rank } = sums;
    const where = `job ${jobId} generation ${generation} step ${step} rank ${rank}`;
    if (!(rank < sums.worldSize)) throw new InvalidArgumentError(`${where}: rank ${rank} must be < world_size ${sums.worldSize}`);
    if (job.dims !== undefined && job.dims !== sums.sums.length) {
      throw new InvalidArgumentError(`${where}: sums has ${sums.sums.length} values, earlier pushes for the job had ${job.dims}`);
    }
    if (job.patchDims !== undefined && job.patchDims !== sums.patchSums.length) {
      throw new InvalidArgumentError(
        `${where}: patch_sums has ${sums.patchSums.length} values, earlier pushes for the job had ${job.patchDims}`,
      );
    }
    const baseCenter = resolveBase(sums.baseCenter, sums.sums.length, step, 'base_center', 'sums', where);
    const basePatchCenter = resolveBase(sums.basePatchCenter, sums.patchSums.length, step, 'base_patch_center', 'patch_sums', where);

    const newest = job.newestGeneration.get(step);
    if (newest !== undefined && generation < newest) {
      throw new AbortedError(
        `${where}: generation ${newest} has pushed step ${step} since, so generation ${generation} is over; its sums are refused (wait for the coordinator's next Assignment)`,
      );
    }

    if (job.centers.get(step + 1)?.has(generation) === true) {
      return { ranksReceived: sums.worldSize, centerReady: true, computed: null };
    }

    const key = `${generation}/${step}`;
    let pending = job.pending.get(key);
    if (pending === undefined) {
      if (job.pending.size >= MAX_PENDING_STEPS_PER_JOB) {
        throw new ResourceExhaustedError(`${where}: ${job.pending.size} steps of the job have incomplete sums already`);
      }
      pending = {
        generation,
        step,
        worldSize: sums.worldSize,
        centerMomentum: sums.centerMomentum,
        baseCenter,
        basePatchCenter,
        ranks: new Map(),
      };
    } else {
      if (pending.worldSize !== sums.worldSize) {
        throw new InvalidArgumentError(`${where}: world_size ${sums.worldSize} differs from ${pending.worldSize} of the step's earlier pushes`);
      }
      if (pending.centerMomentum !== sums.centerMomentum) {
        throw new InvalidArgumentError(
          `${where}: center_momentum ${sums.centerMomentum} differs from ${pending.centerMomentum} of the step's earlier pushes`,
        );
      }
      const earlier = pending.ranks.get(rank);
      if (earlier !== undefined) {
        if (
          earlier.count !== sums.count ||
          earlier.patchCount !== sums.patchCount ||
          !sameBits(earlier.sums, sums.sums) ||
          !sameBits(earlier.patchSums, sums.patchSums) ||
          !sameBits(pending.baseCenter, baseCenter) ||
          !sameBits(pending.basePatchCenter, basePatchCenter)
        ) {
          this.#logger.warn('a repeated push differs from the first one; keeping the first', { job: jobId, generation, step, rank });
        }
        return { ranksReceived: pending.ranks.size, centerReady: false, computed: null };
      }
      this.#checkBase(where, pending, 'base_center', pending.baseCenter, baseCenter);
      this.#checkBase(where, pending, 'base_patch_center', pending.basePatchCenter, basePatchCenter);
    }

    // Everything is checked: the push is accepted and fixes the job's shapes.
    job.dims = sums.sums.length;
    job.patchDims = sums.patchSums.length;
    if (newest === undefined || generation > newest) this.#supersede(jobId, job, step, generation);
    job.pending.set(key, pending);
    pending.ranks.set(rank, sums);
    if (pending.ranks.size < pending.worldSize) return { ranksReceived: pending.ranks.size, centerReady: false, computed: null };

    job.pending.delete(key);
    const record = computeCenter(pending);
    this.#keep(job, record);
    // A newer generation in lock-step means every older one is over: its incomplete
    // sums can never complete a center anyone will use.
    for (const [k, other] of job.pending) if (other.generation < generation) job.pending.delete(k);
    for (const waiter of [...job.waiters]) {
      if (waiter.step !== record.step || (waiter.generation !== 0 && waiter.generation !== generation)) continue;
      job.waiters.delete(waiter);
      waiter.resolve(record);
    }
    for (const watcher of job.watchers) watcher.deliver(record);
    return { ranksReceived: pending.ranks.size, centerReady: true, computed: record };
  }

  #checkBase(where: string, pending: StepSums, field: string, theirs: Float32Array, ours: Float32Array): void {
    const at = firstDifference(theirs, ours);
    if (at === undefined) return;
    const ranks = [...pending.ranks.keys()].sort((a, b) => a - b);
    throw new FailedPreconditionError(
      `${where}: ${field} differs from the one ${ranks.length === 1 ? 'rank' : 'ranks'} ${ranks.join(', ')} pushed for the step ` +
        `(first difference at value ${at}: ${ours[at]} here, ${theirs[at]} there); the ranks did not use the same center, so they are not in lock-step`,
    );
  }

  /**
   * Generation `generation` is the first to push `step` past the newest so far: older
   * generations' sums of the step are dropped, and their waits for the next center end.
   */
  #supersede(jobId: string, job: JobCenters, step: number, generation: number): void {
    job.newestGeneration.delete(step);
    job.newestGeneration.set(step, generation);
    trimOldest(job.newestGeneration, this.#keptCenters + MAX_PENDING_STEPS_PER_JOB);
    for (const [key, pending] of job.pending) if (pending.step === step && pending.generation < generation) job.pending.delete(key);
    for (const waiter of [...job.waiters]) {
      if (waiter.step !== step + 1 || waiter.generation === 0 || waiter.generation >= generation) continue;
      if (job.centers.get(step + 1)?.has(waiter.generation) === true) continue;
      job.waiters.delete(waiter);
      waiter.reject(staleCenterError(jobId, waiter.step, waiter.generation, generation));
    }
  }

  #keep(job: JobCenters, record: CenterRecord): void {
    const generations = job.centers.get(record.step) ?? new Map<number, CenterRecord>();
    job.centers.delete(record.step);
    job.centers.set(record.step, generations);
    generations.set(record.generation, record);
    if (generations.size > MAX_GENERATIONS_PER_STEP) {
      const oldest = Math.min(...generations.keys());
      generations.delete(oldest);
    }
    trimOldest(job.centers, this.#keptCenters);
  }

  /**
   * The center for `step` if it exists now: generation `generation`'s, or with 0 the newest
   * generation's. Step 0 is zeros once the job's shape is known.
   */
  lookup(jobId: string, step: number, generation = 0): CenterRecord | undefined {
    const job = this.#jobs.get(jobId);
    if (job === undefined) return undefined;
    const generations = job.centers.get(step);
    if (generations !== undefined) {
      const record = generation === 0 ? generations.get(Math.max(...generations.keys())) : generations.get(generation);
      if (record !== undefined) return record;
    }
    if (step === 0 && job.dims !== undefined) {
      return { step: 0, generation: 0, center: new Float32Array(job.dims), patchCenter: new Float32Array(job.patchDims ?? 0) };
    }
    return undefined;
  }

  /**
   * The center for `step` of `generation` (0: whichever generation completes it first, or
   * the newest one that has), waiting until it exists or `signal` aborts (the call's
   * deadline or cancellation; the promise then rejects with the signal's reason). Nothing
   * before the wait is needed: after a restart the ranks' pushes make the center.
   *
   * @throws AbortedError when a newer generation pushed `step − 1`, so `generation`'s
   *   center will never come.
   */
  waitForCenter(jobId: string, step: number, generation: number, signal: AbortSignal): Promise<CenterRecord> {
    if (this.#closed) return Promise.reject(new UnavailableError('teacher-sync is shutting down'));
    const found = this.lookup(jobId, step, generation);
    if (found !== undefined) return Promise.resolve(found);
    const job = this.#job(jobId);
    const newest = step > 0 ? job.newestGeneration.get(step - 1) : undefined;
    if (generation !== 0 && newest !== undefined && newest > generation) {
      this.#forgetIfIdle(jobId);
      return Promise.reject(staleCenterError(jobId, step, generation, newest));
    }
    if (signal.aborted) {
      this.#forgetIfIdle(jobId);
      return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
    }
    return new Promise<CenterRecord>((resolve, reject) => {
      const onAbort = (): void => {
        job.waiters.delete(waiter);
        this.#forgetIfIdle(jobId);
        reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
      };
      const waiter: CenterWaiter = {
        step,
        generation,
        resolve: (record) => {
          signal.removeEventListener('abort', onAbort);
          resolve(record);
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      job.waiters.add(waiter);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Every center of `jobId` for `fromStep` on: the kept ones at once (by step, then
   * generation), then each new one as it is computed, until `signal` aborts or the store
   * closes. A step run again by a newer generation is sent again with that generation.
   */
  async *watchCenters(jobId: string, fromStep: number, signal: AbortSignal): AsyncGenerator<CenterRecord> {
    if (this.#closed) throw new UnavailableError('teacher-sync is shutting down');
    const job = this.#job(jobId);
    const queue: CenterRecord[] = [];
    let wake: (() => void) | undefined;
    const watcher: CenterWatcher = {
      deliver: (record) => {
        queue.push(record);
        wake?.();
      },
      wake: () => wake?.(),
    };
    const onAbort = (): void => wake?.();
    // Registered in the same tick as the kept centers are read, so no center is missed or
    // sent twice.
    job.watchers.add(watcher);
    signal.addEventListener('abort', onAbort);
    try {
      const kept = [...job.centers.values()]
        .flatMap((generations) => [...generations.values()])
        .sort((a, b) => a.step - b.step || a.generation - b.generation);
      for (const record of kept) if (record.step >= fromStep) yield record;
      while (!signal.aborted && !this.#closed) {
        const record = queue.shift();
        if (record === undefined) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        if (record.step >= fromStep) yield record;
      }
    } finally {
      job.watchers.delete(watcher);
      signal.removeEventListener('abort', onAbort);
      this.#forgetIfIdle(jobId);
    }
  }

  /**
   * Shutting down: every waiting GetCenter fails with UNAVAILABLE (its client pushes again
   * and retries against the next teacher-sync) and every WatchCenters stream ends. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = new UnavailableError('teacher-sync is shutting down; retry');
    for (const job of this.#jobs.values()) {
      for (const waiter of [...job.waiters]) waiter.reject(err);
      job.waiters.clear();
      for (const watcher of job.watchers) watcher.wake();
    }
  }
}

function staleCenterError(jobId: string, step: number, generation: number, newest: number): AbortedError {
  return new AbortedError(
    `the center for step ${step} of job ${jobId} from generation ${generation} will not come: generation ${newest} has pushed step ${step - 1} since, so generation ${generation} is over`,
  );
}

/** The center of (generation, step + 1) from the complete sums of (generation, step). */
function computeCenter(sums: StepSums): CenterRecord {
  const dims = sums.baseCenter.length;
  const patchDims = sums.basePatchCenter.length;
  const ranks: TeacherSums[] = [];
  for (let rank = 0; rank < sums.worldSize; rank++) ranks.push(sums.ranks.get(rank) as TeacherSums);
  const center = updateCenter(
    sums.baseCenter,
    sumInRankOrder(
      ranks.map((r) => r.sums),
      dims,
    ),
    ranks.reduce((total, r) => total + r.count, 0),
    sums.centerMomentum,
  );
  let patchCenter: Float32Array = new Float32Array(0);
  if (patchDims > 0) {
    const patchCount = ranks.reduce((total, r) => total + r.patchCount, 0);
    // No masked patch anywhere in the global batch: the mean is undefined, so the patch
    // center stays where it was (as with momentum 1).
    patchCenter =
      patchCount > 0
        ? updateCenter(
            sums.basePatchCenter,
            sumInRankOrder(
              ranks.map((r) => r.patchSums),
              patchDims,
            ),
            patchCount,
            sums.centerMomentum,
          )
        : Float32Array.from(sums.basePatchCenter);
  }
  return { step: sums.step + 1, generation: sums.generation, center, patchCenter };
}
