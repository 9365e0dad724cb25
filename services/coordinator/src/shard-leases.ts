/**
 * Shard leases of one job in the BullMQ queue `leases-{jobId}` (docs/cluster.md "Redis
 * layout"): one BullMQ job per (epoch, shard), id `e{epoch}-s{shard}`, data
 * `{epoch, shard, begin, end, cursor}`. Taking a lease moves it to active (fetched by
 * hand with `getNextJob`, nothing processes it); a commit writes the cursor into the
 * job data inside the step's Redis transaction; an exhausted lease is completed; a lease
 * whose rank leaves goes back to waiting with its committed cursor. When no lease of the
 * newest epoch is waiting, the next epoch's leases are added in their seeded order.
 */
import { randomUUID } from 'node:crypto';
import { Queue, Worker } from 'bullmq';
import type { Job } from 'bullmq';
import type { ChainableCommander, Redis } from 'ioredis';
import type { DataCursor, ShardLease } from '@dinofleet/proto';
import type { PlannedShard } from './job-store.ts';
import { epochShardOrder } from './shard-plan.ts';

/** The data of one lease job. */
export interface LeaseData {
  readonly epoch: number;
  readonly shard: number;
  readonly begin: number;
  readonly end: number;
  readonly cursor: number;
  /** Where the next sample starts inside the record at `cursor` (a tar offset for WebDataset). @default 0 */
  readonly within?: number;
  /** Samples of the shuffle window at (cursor, within) already consumed. @default 0 */
  readonly consumed?: number;
}

/** How long a taken lease stays locked between renewals, in ms. */
export const LEASE_LOCK_MS = 60_000;

/** The lease id of (epoch, shard). */
export function leaseId(epoch: number, shard: number): string {
  return `e${epoch}-s${shard}`;
}

/** The lease queue name of a job. */
export function leaseQueueName(jobId: string): string {
  return `leases-${jobId}`;
}

function toWire(id: string, data: LeaseData): ShardLease {
  return {
    leaseId: id,
    epoch: data.epoch,
    shard: data.shard,
    begin: data.begin,
    end: data.end,
    cursor: data.cursor,
    cursorWithin: data.within ?? 0,
    cursorConsumed: data.consumed ?? 0,
  };
}

interface HeldLease {
  readonly job: Job<LeaseData>;
  readonly token: string;
  rank: number;
  data: LeaseData;
}

/** Options of {@link ShardLeases}. */
export interface ShardLeasesOptions {
  /** Connection for the queue (BullMQ duplicates it where it needs to). */
  readonly connection: Redis;
  /** BullMQ prefix (the coordinator's Redis prefix). */
  readonly prefix: string;
  readonly jobId: string;
  readonly shards: readonly PlannedShard[];
  /** `spec.training.seed`. */
  readonly seed: number;
  /** Newest epoch already added (-1: none), from the job record. */
  readonly leaseEpoch: number;
  /** Persists the newest added epoch (the job hash's `leaseEpoch`). */
  readonly saveLeaseEpoch: (epoch: number) => Promise<void>;
}

/** Deletes the lease queue of `jobId` (if any), whatever state its leases are in. */
export async function obliterateLeaseQueue(connection: Redis, prefix: string, jobId: string): Promise<void> {
  const queue = new Queue(leaseQueueName(jobId), { connection, prefix });
  try {
    await queue.obliterate({ force: true });
  } finally {
    await queue.close();
  }
}

/** The lease queue of one job. */
export class ShardLeases {
  readonly #options: ShardLeasesOptions;
  readonly #queue: Queue<LeaseData>;
  readonly #worker: Worker<LeaseData>;
  readonly #held = new Map<string, HeldLease>();
  #leaseEpoch: number;
  #renewTimer: NodeJS.Timeout | undefined;
  #closed: Promise<void> | undefined;
  // Acquisitions run one at a time so two ranks asking at once cannot both add an epoch.
  #serial: Promise<unknown> = Promise.resolve();

  constructor(options: ShardLeasesOptions) {
    this.#options = options;
    const name = leaseQueueName(options.jobId);
    this.#queue = new Queue<LeaseData>(name, { connection: options.connection, prefix: options.prefix });
    this.#worker = new Worker<LeaseData>(name, null, {
      connection: options.connection,
      prefix: options.prefix,
      autorun: false,
      lockDuration: LEASE_LOCK_MS,
    });
    this.#leaseEpoch = options.leaseEpoch;
    this.#renewTimer = setInterval(() => void this.#renewLocks(), LEASE_LOCK_MS / 3);
    this.#renewTimer.unref();
  }

  /**
   * Hands back every lease a previous coordinator left active (after a restart nobody
   * holds them) so they are taken again from their committed cursors.
   */
  async recoverOrphans(): Promise<void> {
    const active = await this.#queue.getActive();
    for (const job of active) {
      if (this.#held.has(job.id ?? '')) continue;
      await job.moveToWait('0');
    }
  }

  /** Takes the next lease for `rank` (adding the next epoch when the current one is out). */
  acquire(rank: number): Promise<ShardLease> {
    const next = this.#serial.then(() => this.#acquire(rank));
    this.#serial = next.catch(() => undefined);
    return next;
  }

  async #acquire(rank: number): Promise<ShardLease> {
    for (let attempts = 0; attempts < this.#options.shards.length * 4 + 8; attempts++) {
      const token = randomUUID();
      const job = (await this.#worker.getNextJob(token, { block: false })) as Job<LeaseData> | undefined;
      if (job === undefined) {
        await this.#addEpoch(this.#leaseEpoch + 1);
        continue;
      }
      const id = job.id ?? '';
      if (job.data.cursor >= job.data.end) {
        // Used up (empty shard, or completed by a commit whose completion was cut short).
        await job.moveToCompleted({ cursor: job.data.cursor }, token, false);
        continue;
      }
      this.#held.set(id, { job, token, rank, data: job.data });
      return toWire(id, job.data);
    }
    throw new Error(`no shard lease could be taken for job ${this.#options.jobId}`);
  }

  async #addEpoch(epoch: number): Promise<void> {
    const order = epochShardOrder(this.#options.seed, epoch, this.#options.shards.length);
    await this.#queue.addBulk(
      order.map((shard) => {
        const planned = this.#options.shards[shard];
        if (planned === undefined) throw new Error(`shard ${shard} is not in the plan`);
        const data: LeaseData = { epoch, shard, begin: planned.begin, end: planned.end, cursor: planned.begin };
        return { name: 'lease', data, opts: { jobId: leaseId(epoch, shard), removeOnComplete: false, removeOnFail: false } };
      }),
    );
    this.#leaseEpoch = epoch;
    await this.#options.saveLeaseEpoch(epoch);
  }

  /** Newest epoch whose leases were added (-1: none). */
  get leaseEpoch(): number {
    return this.#leaseEpoch;
  }

  /**
   * Every lease not completed, at its committed cursor, and the newest added epoch: what a
   * checkpoint's `data.json` records. Runs between acquisitions, so no epoch is half-added.
   */
  checkpointLeases(): Promise<{ leaseEpoch: number; leases: (LeaseData & { leaseId: string })[] }> {
    const next = this.#serial.then(async () => {
      const jobs = await this.#queue.getJobs(['waiting', 'active', 'prioritized', 'delayed']);
      const leases = jobs
        .filter((job): job is Job<LeaseData> => job !== undefined && job.id !== undefined)
        .map((job) => ({ leaseId: job.id ?? '', ...job.data }))
        .sort((a, b) => a.epoch - b.epoch || a.shard - b.shard);
      return { leaseEpoch: this.#leaseEpoch, leases };
    });
    this.#serial = next.catch(() => undefined);
    return next;
  }

  /**
   * Fills an empty lease queue from a checkpoint: each listed lease waits at its cursor;
   * epochs up to `leaseEpoch` that are not listed count as done.
   */
  async restore(leaseEpoch: number, leases: readonly LeaseData[]): Promise<void> {
    if (leases.length > 0) {
      await this.#queue.addBulk(
        leases.map((lease) => {
          const data: LeaseData = {
            epoch: lease.epoch,
            shard: lease.shard,
            begin: lease.begin,
            end: lease.end,
            cursor: lease.cursor,
            within: lease.within ?? 0,
            consumed: lease.consumed ?? 0,
          };
          return { name: 'lease', data, opts: { jobId: leaseId(lease.epoch, lease.shard), removeOnComplete: false, removeOnFail: false } };
        }),
      );
    }
    this.#leaseEpoch = leaseEpoch;
    await this.#options.saveLeaseEpoch(leaseEpoch);
  }

  /** The rank holding `leaseId`, or undefined when no rank does. */
  holder(id: string): number | undefined {
    return this.#held.get(id)?.rank;
  }

  /**
   * Adds the cursor updates of a committed step to `multi` (the step's transaction) and
   * returns the lease ids the step exhausted, to {@link complete} after it ran.
   */
  queueCursors(multi: ChainableCommander, cursors: readonly DataCursor[]): string[] {
    const exhausted: string[] = [];
    for (const cursor of cursors) {
      const held = this.#held.get(cursor.leaseId);
      if (held === undefined) continue;
      const position = Math.min(Math.max(cursor.position, held.data.begin), held.data.end);
      const done = cursor.exhausted || position >= held.data.end;
      const data: LeaseData = {
        ...held.data,
        cursor: done ? held.data.end : position,
        within: done ? 0 : cursor.positionWithin,
        consumed: done ? 0 : cursor.windowConsumed,
      };
      held.data = data;
      multi.hset(this.#queue.toKey(cursor.leaseId), 'data', JSON.stringify(data));
      if (cursor.exhausted) exhausted.push(cursor.leaseId);
    }
    return exhausted;
  }

  /** Completes used-up leases (after the commit that used them up). */
  async complete(ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      const held = this.#held.get(id);
      if (held === undefined) continue;
      this.#held.delete(id);
      // A lock lost to a missed renewal must not fail the commit: the lease is ours.
      await held.job
        .moveToCompleted({ cursor: held.data.end }, held.token, false)
        .catch(() => held.job.moveToCompleted({ cursor: held.data.end }, '0', false));
    }
  }

  /**
   * Moves every lease of `rank` (or of every rank) back to waiting at its committed cursor.
   * Queued behind acquisitions in flight: an AcquireLease of an ending generation that was
   * still taking its lease is handed back too, not left held by a rank number that the next
   * generation gives to someone who never heard of it (its records would be skipped).
   */
  release(rank?: number): Promise<void> {
    const next = this.#serial.then(() => this.#release(rank));
    this.#serial = next.catch(() => undefined);
    return next;
  }

  async #release(rank: number | undefined): Promise<void> {
    for (const [id, held] of [...this.#held]) {
      if (rank !== undefined && held.rank !== rank) continue;
      this.#held.delete(id);
      await held.job.moveToWait(held.token).catch(() => held.job.moveToWait('0'));
    }
  }

  /** Wire form of every held lease, for tests and logs. */
  held(): { leaseId: string; rank: number; data: LeaseData }[] {
    return [...this.#held].map(([id, held]) => ({ leaseId: id, rank: held.rank, data: held.data }));
  }

  /** Every lease job with its state, for tests. */
  async snapshot(): Promise<{ id: string; state: string; data: LeaseData }[]> {
    const jobs = await this.#queue.getJobs(['waiting', 'active', 'completed']);
    return Promise.all(jobs.map(async (job) => ({ id: job.id ?? '', state: await job.getState(), data: job.data })));
  }

  async #renewLocks(): Promise<void> {
    for (const held of this.#held.values()) {
      await held.job.extendLock(held.token, LEASE_LOCK_MS).catch(() => undefined);
    }
  }

  /** Deletes the lease queue (the job ended). Closes this object too. */
  async obliterate(): Promise<void> {
    this.#held.clear();
    await this.close();
    await obliterateLeaseQueue(this.#options.connection, this.#options.prefix, this.#options.jobId);
  }

  /** Stops lock renewal and closes the BullMQ clients; leases stay as they are in Redis. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      clearInterval(this.#renewTimer);
      this.#renewTimer = undefined;
      const results = await Promise.allSettled([this.#worker.close(true), this.#queue.close()]);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    })();
    return this.#closed;
  }
}
