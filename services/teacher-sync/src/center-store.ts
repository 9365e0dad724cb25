/**
 * The running centers of every job (docs/cluster.md, "teacher-sync"): ranks push their
 * step-s teacher sums; once every rank of the generation has pushed, the center for step
 * s+1 is `updateCenter(center_s, Σ_r sums_r, Σ_r count_r, m)` with `center_0` = zeros.
 *
 * Sums are added in rank order in float32, and `updateCenter` is the one from
 * `@dinofleet/dino`, so the result has the same bits as the in-process update a single
 * rank would compute from the same all-reduced sums.
 */
import { updateCenter } from '@dinofleet/dino';
import { InvalidArgumentError, NotFoundError, ResourceExhaustedError, UnavailableError } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';

/** Centers kept per job by default (docs/cluster.md). */
export const DEFAULT_KEPT_CENTERS = 64;

/** Steps of one job that may have sums pending at once; more means a runaway client. */
export const MAX_PENDING_STEPS_PER_JOB = 256;

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
  /** Whether the center for step + 1 exists. */
  readonly centerReady: boolean;
  /** The center this push completed, if it completed one (or more, by catching up a chain). */
  readonly computed: readonly CenterRecord[];
}

/** Settings for {@link CenterStore}. */
export interface CenterStoreOptions {
  /** Centers kept per job, ≥ 1. @default 64 */
  readonly keptCenters?: number;
  /** Where ignored and odd pushes are logged. */
  readonly logger: Logger;
}

interface StepSums {
  readonly generation: number;
  readonly step: number;
  readonly worldSize: number;
  readonly centerMomentum: number;
  readonly ranks: Map<number, TeacherSums>;
}

interface CenterWaiter {
  readonly step: number;
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
  /** Step → center, in increasing step order (centers are computed in chain order). */
  readonly centers = new Map<number, CenterRecord>();
  /** `${generation}/${step}` → sums so far. */
  readonly pending = new Map<string, StepSums>();
  /** Step → complete sums still waiting for `center_step` (teacher-sync restarted mid-job). */
  readonly complete = new Map<number, StepSums>();
  readonly waiters = new Set<CenterWaiter>();
  readonly watchers = new Set<CenterWatcher>();

  latestStep(): number | undefined {
    let latest: number | undefined;
    for (const step of this.centers.keys()) latest = latest === undefined ? step : Math.max(latest, step);
    return latest;
  }

  oldestStep(): number | undefined {
    let oldest: number | undefined;
    for (const step of this.centers.keys()) oldest = oldest === undefined ? step : Math.min(oldest, step);
    return oldest;
  }

  idle(): boolean {
    return this.dims === undefined && this.waiters.size === 0 && this.watchers.size === 0;
  }
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Σ over ranks 0..W−1 in that order, each addition rounded to float32. */
function sumInRankOrder(parts: readonly Float32Array[], dims: number): Float32Array {
  const total = new Float32Array(dims);
  for (const part of parts) for (let i = 0; i < dims; i++) total[i] = (total[i] as number) + (part[i] as number);
  return total;
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
   * Adds one rank's sums. Idempotent for a repeated (generation, step, rank); a push for a
   * step whose next center already exists from another generation is ignored.
   *
   * @throws InvalidArgumentError for a push that disagrees with the job's earlier pushes
   *   (value counts) or with the other ranks of its step (world size, momentum).
   */
  push(sums: TeacherSums): PushResult {
    if (this.#closed) throw new UnavailableError('teacher-sync is shutting down');
    try {
      return this.#push(this.#job(sums.jobId), sums);
    } finally {
      this.#forgetIfIdle(sums.jobId);
    }
  }

  #push(job: JobCenters, sums: TeacherSums): PushResult {
    const where = `job ${sums.jobId} generation ${sums.generation} step ${sums.step} rank ${sums.rank}`;
    if (job.dims !== undefined && job.dims !== sums.sums.length) {
      throw new InvalidArgumentError(`${where}: sums has ${sums.sums.length} values, earlier pushes for the job had ${job.dims}`);
    }
    if (job.patchDims !== undefined && job.patchDims !== sums.patchSums.length) {
      throw new InvalidArgumentError(
        `${where}: patch_sums has ${sums.patchSums.length} values, earlier pushes for the job had ${job.patchDims}`,
      );
    }

    const existing = job.centers.get(sums.step + 1);
    if (existing !== undefined) {
      if (existing.generation !== sums.generation) {
        this.#logger.info('ignored teacher sums: the center exists from another generation', {
          job: sums.jobId,
          generation: sums.generation,
          step: sums.step,
          rank: sums.rank,
          centerGeneration: existing.generation,
        });
        return { ranksReceived: 0, centerReady: true, computed: [] };
      }
      return { ranksReceived: sums.worldSize, centerReady: true, computed: [] };
    }
    const oldest = job.oldestStep();
    if (oldest !== undefined && sums.step + 1 < oldest) {
      this.#logger.info('ignored teacher sums for a step older than every kept center', {
        job: sums.jobId,
        generation: sums.generation,
        step: sums.step,
        oldestCenterStep: oldest,
      });
      return { ranksReceived: 0, centerReady: true, computed: [] };
    }

    const key = `${sums.generation}/${sums.step}`;
    let step = job.pending.get(key);
    if (step === undefined) {
      if (job.pending.size >= MAX_PENDING_STEPS_PER_JOB) {
        throw new ResourceExhaustedError(`${where}: ${job.pending.size} steps of the job have incomplete sums already`);
      }
      step = { generation: sums.generation, step: sums.step, worldSize: sums.worldSize, centerMomentum: sums.centerMomentum, ranks: new Map() };
    } else {
      if (step.worldSize !== sums.worldSize) {
        throw new InvalidArgumentError(`${where}: world_size ${sums.worldSize} differs from ${step.worldSize} of the step's earlier pushes`);
      }
      if (step.centerMomentum !== sums.centerMomentum) {
        throw new InvalidArgumentError(
          `${where}: center_momentum ${sums.centerMomentum} differs from ${step.centerMomentum} of the step's earlier pushes`,
        );
      }
      const earlier = step.ranks.get(sums.rank);
      if (earlier !== undefined) {
        if (
          earlier.count !== sums.count ||
          earlier.patchCount !== sums.patchCount ||
          !sameBits(earlier.sums, sums.sums) ||
          !sameBits(earlier.patchSums, sums.patchSums)
        ) {
          this.#logger.warn('a repeated push differs from the first one; keeping the first', { job: sums.jobId, generation: sums.generation, step: sums.step, rank: sums.rank });
        }
        return { ranksReceived: step.ranks.size, centerReady: false, computed: [] };
      }
    }

    // Everything is checked: the push is accepted and fixes the job's shapes.
    job.dims = sums.sums.length;
    job.patchDims = sums.patchSums.length;
    job.pending.set(key, step);
    step.ranks.set(sums.rank, sums);
    if (step.ranks.size < step.worldSize) return { ranksReceived: step.ranks.size, centerReady: false, computed: [] };

    job.pending.delete(key);
    if (!job.complete.has(step.step)) job.complete.set(step.step, step);
    const computed = this.#advance(sums.jobId, job);
    return { ranksReceived: step.ranks.size, centerReady: job.centers.has(sums.step + 1), computed };
  }

  /** Computes every center whose sums are complete and whose previous center exists. */
  #advance(jobId: string, job: JobCenters): CenterRecord[] {
    const computed: CenterRecord[] = [];
    for (;;) {
      let next: StepSums | undefined;
      for (const candidate of job.complete.values()) {
        if (candidate.step === 0 || job.centers.has(candidate.step)) {
          next = candidate;
          break;
        }
      }
      if (next === undefined) break;
      job.complete.delete(next.step);
      const record = this.#computeCenter(job, next);
      job.centers.set(record.step, record);
      computed.push(record);
      // Sums of this step from other generations can no longer matter.
      for (const [key, pending] of job.pending) if (pending.step <= next.step) job.pending.delete(key);
      for (const step of job.complete.keys()) if (step < next.step) job.complete.delete(step);
      while (job.centers.size > this.#keptCenters) {
        const oldest = job.oldestStep();
        if (oldest === undefined) break;
        job.centers.delete(oldest);
      }
      for (const waiter of [...job.waiters]) {
        if (waiter.step !== record.step) continue;
        job.waiters.delete(waiter);
        waiter.resolve(record);
      }
      for (const watcher of job.watchers) watcher.deliver(record);
    }
    for (const waiting of job.complete.values()) {
      this.#logger.warn('teacher sums are complete but the previous center is unknown; holding them', {
        job: jobId,
        generation: waiting.generation,
        step: waiting.step,
      });
    }
    return computed;
  }

  #computeCenter(job: JobCenters, sums: StepSums): CenterRecord {
    const dims = job.dims ?? 0;
    const patchDims = job.patchDims ?? 0;
    const ranks: TeacherSums[] = [];
    for (let rank = 0; rank < sums.worldSize; rank++) ranks.push(sums.ranks.get(rank) as TeacherSums);
    const previous = job.centers.get(sums.step);
    const center = updateCenter(
      previous?.center ?? new Float32Array(dims),
      sumInRankOrder(
        ranks.map((r) => r.sums),
        dims,
      ),
      ranks.reduce((total, r) => total + r.count, 0),
      sums.centerMomentum,
    );
    let patchCenter: Float32Array = new Float32Array(0);
    if (patchDims > 0) {
      const previousPatch = previous?.patchCenter ?? new Float32Array(patchDims);
      const patchCount = ranks.reduce((total, r) => total + r.patchCount, 0);
      // No masked patch anywhere in the global batch: the mean is undefined, so the patch
      // center stays where it was (as with momentum 1).
      patchCenter =
        patchCount > 0
          ? updateCenter(
              previousPatch,
              sumInRankOrder(
                ranks.map((r) => r.patchSums),
                patchDims,
              ),
              patchCount,
              sums.centerMomentum,
            )
          : Float32Array.from(previousPatch);
    }
    return { step: sums.step + 1, generation: sums.generation, center, patchCenter };
  }

  /** The center for `step` if it exists now (step 0: zeros once the job's shape is known). */
  lookup(jobId: string, step: number): CenterRecord | undefined {
    const job = this.#jobs.get(jobId);
    if (job === undefined) return undefined;
    const record = job.centers.get(step);
    if (record !== undefined) return record;
    if (step === 0 && job.dims !== undefined) {
      return { step: 0, generation: 0, center: new Float32Array(job.dims), patchCenter: new Float32Array(job.patchDims ?? 0) };
    }
    return undefined;
  }

  /**
   * The center for `step`, waiting until it exists or `signal` aborts (the call's deadline
   * or cancellation; the promise then rejects with the signal's reason).
   *
   * @throws NotFoundError when the center was computed but is no longer kept.
   */
  waitForCenter(jobId: string, step: number, signal: AbortSignal): Promise<CenterRecord> {
    if (this.#closed) return Promise.reject(new UnavailableError('teacher-sync is shutting down'));
    const found = this.lookup(jobId, step);
    if (found !== undefined) return Promise.resolve(found);
    const job = this.#job(jobId);
    const oldest = job.oldestStep();
    if (oldest !== undefined && step < oldest) {
      return Promise.reject(
        new NotFoundError(`the center for step ${step} of job ${jobId} is no longer kept (teacher-sync keeps the last ${this.#keptCenters}; the oldest is for step ${oldest})`),
      );
    }
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise<CenterRecord>((resolve, reject) => {
      const onAbort = (): void => {
        job.waiters.delete(waiter);
        this.#forgetIfIdle(jobId);
        reject(signal.reason as Error);
      };
      const waiter: CenterWaiter = {
        step,
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
   * Every center of `jobId` from `fromStep` on, in step order: the kept ones at once, then
   * each new one as it is computed, until `signal` aborts or the store closes.
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
    job.watchers.add(watcher);
    signal.addEventListener('abort', onAbort);
    try {
      let lastSent = fromStep - 1;
      for (const record of [...job.centers.values()].sort((a, b) => a.step - b.step)) {
        if (record.step <= lastSent) continue;
        lastSent = record.step;
        yield record;
      }
      while (!signal.aborted && !this.#closed) {
        const record = queue.shift();
        if (record === undefined) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        if (record.step <= lastSent) continue;
        lastSent = record.step;
        yield record;
      }
    } finally {
      job.watchers.delete(watcher);
      signal.removeEventListener('abort', onAbort);
      this.#forgetIfIdle(jobId);
    }
  }

  /**
   * Shutting down: every waiting GetCenter fails with UNAVAILABLE (its client retries
   * against the next teacher-sync) and every WatchCenters stream ends. Idempotent.
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
