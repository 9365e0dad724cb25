/**
 * The durable job records in Redis (docs/cluster.md "Redis layout"): one hash per job
 * under `{prefix}:job:{id}`, the `{prefix}:jobs` index by creation time, the event list,
 * the sample ledger and idempotency keys. Every state change goes through one Lua script
 * so a terminal state is never overwritten (a cancel racing a success keeps whichever
 * landed first).
 */
import { EventEmitter } from 'node:events';
import type { ChainableCommander, Redis } from 'ioredis';
import { JobEvent_Severity, JobState } from '@dinofleet/proto';
import type { Job, JobEvent, JobProgress, WatchJobResponse } from '@dinofleet/proto';
import { readSampleLedger, sampleLedgerKey } from './sample-ledger.ts';

/** The state names stored in the job hash (the enum names without the prefix). */
export const JOB_STATE_NAMES = ['QUEUED', 'STARTING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'] as const;
/** A stored state name. */
export type JobStateName = (typeof JOB_STATE_NAMES)[number];

/** States a job never leaves. */
export const TERMINAL_STATES: ReadonlySet<JobStateName> = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);

/** Most events kept per job. */
export const MAX_JOB_EVENTS = 1000;

const STATE_BY_NAME: Readonly<Record<JobStateName, JobState>> = {
  QUEUED: JobState.JOB_STATE_QUEUED,
  STARTING: JobState.JOB_STATE_STARTING,
  RUNNING: JobState.JOB_STATE_RUNNING,
  SUCCEEDED: JobState.JOB_STATE_SUCCEEDED,
  FAILED: JobState.JOB_STATE_FAILED,
  CANCELLED: JobState.JOB_STATE_CANCELLED,
};

/** The wire enum of a stored state name. */
export function jobStateOf(name: JobStateName): JobState {
  return STATE_BY_NAME[name];
}

/** The stored name of a wire enum value, or undefined for UNSPECIFIED/unknown values. */
export function jobStateName(state: JobState): JobStateName | undefined {
  return JOB_STATE_NAMES.find((name) => STATE_BY_NAME[name] === state);
}

function isStateName(value: string | undefined): value is JobStateName {
  return value !== undefined && (JOB_STATE_NAMES as readonly string[]).includes(value);
}

/** One shard of the plan: manifest bytes `[begin, end)`. */
export interface PlannedShard {
  readonly begin: number;
  readonly end: number;
}

/** A job as stored in its hash. */
export interface JobRecord {
  readonly jobId: string;
  readonly name: string;
  readonly state: JobStateName;
  /** The spec text exactly as submitted. */
  readonly spec: string;
  readonly workersDesired: number;
  readonly workersActive: number;
  readonly generation: number;
  readonly committedStep: number;
  readonly totalSteps: number;
  /** ms since the epoch; 0 when not reached. */
  readonly createdAt: number;
  readonly startedAt: number;
  readonly finishedAt: number;
  readonly error: string;
  readonly progress: JobProgress | undefined;
  /** Hex state hash of the last committed step ('' before the first). */
  readonly lastHash: string;
  readonly manifestEtag: string;
  /** The shard plan, or undefined before it was made. */
  readonly shards: readonly PlannedShard[] | undefined;
  /** Highest epoch whose leases were added to the lease queue (-1: none). */
  readonly leaseEpoch: number;
  /** Samples of the committed steps (reset with the steps a checkpoint restore drops). @default 0 */
  readonly samplesCommitted?: number;
  /** Name of the API token that submitted the job ('anonymous' with --insecure; '' for jobs older than tokens). @default '' */
  readonly submittedBy?: string;
}

/** Fields a caller may write besides the state. */
export type JobFields = Partial<Record<keyof JobRecord | 'checkpointUri', string | number>>;

/** Redis key names under one prefix. */
export class JobKeys {
  constructor(readonly prefix: string) {}
  job(jobId: string): string {
    return `${this.prefix}:job:${jobId}`;
  }
  events(jobId: string): string {
    return `${this.prefix}:job:${jobId}:events`;
  }
  samples(jobId: string): string {
    return sampleLedgerKey(this.prefix, jobId);
  }
  jobs(): string {
    return `${this.prefix}:jobs`;
  }
  idempotency(key: string): string {
    return `${this.prefix}:idem:${key}`;
  }
  /** Set of the ids of a caller's jobs that were not terminal when last looked at. */
  callerJobs(caller: string): string {
    return `${this.prefix}:caller:${caller}:jobs`;
  }
}


/**
 * States in which a job counts against its caller's `--max-queued-jobs-per-caller`: it
 * has not started training yet (QUEUED: waiting for a slot; STARTING: holding a slot,
 * waiting for workers). RUNNING jobs are bounded by `--max-running-jobs` instead.
 */
export const WAITING_STATES: ReadonlySet<JobStateName> = new Set(['QUEUED', 'STARTING']);

// KEYS: idem (or ''), job hash, jobs zset, the caller's job set (or ''). ARGV: jobId,
// createdAt, most waiting jobs of the caller (with KEYS[4]), job hash key prefix, field,
// value, ... Returns {'existing', id} when the idempotency key is taken (before the limit,
// so a resubmission never counts twice), {'limit', n} when the caller already has n >= the
// most waiting jobs, else {'created', id} after writing. The caller's set is pruned of
// terminal and vanished jobs on the way; the job hashes it reads are named from ARGV[4]
// (not KEYS), which a single Redis allows and the coordinator needs no cluster for.
const CREATE_SCRIPT = `
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {'existing', existing} end
end
if KEYS[4] ~= '' then
  local waiting = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local state = redis.call('HGET', ARGV[4] .. id, 'state')
    if ${[...WAITING_STATES].map((state) => `state == '${state}'`).join(' or ')} then
      waiting = waiting + 1
    elseif state ~= 'RUNNING' then
      redis.call('SREM', KEYS[4], id)
    end
  end
  if waiting >= tonumber(ARGV[3]) then return {'limit', tostring(waiting)} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('job exists') end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1]) end
if KEYS[4] ~= '' then redis.call('SADD', KEYS[4], ARGV[1]) end
return {'created', ARGV[1]}
`;

// KEYS: job hash. ARGV: new state, field, value, ... Returns the previous state; writes
// nothing when the job is missing ('') or already terminal.
const SET_STATE_SCRIPT = `
local previous = redis.call('HGET', KEYS[1], 'state')
if not previous then return '' end
if previous == 'SUCCEEDED' or previous == 'FAILED' or previous == 'CANCELLED' then return previous end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return previous
`;

/** Result of {@link JobStore.create}. */
export type CreateResult =
  /** Written. */
  | { readonly kind: 'created'; readonly jobId: string }
  /** The idempotency key names this earlier job; nothing written. */
  | { readonly kind: 'existing'; readonly jobId: string }
  /** The caller already has `waiting` jobs in {@link WAITING_STATES}, the most allowed; nothing written. */
  | { readonly kind: 'limit'; readonly waiting: number };

/** The per-caller limit {@link JobStore.create} enforces. */
export interface WaitingJobsLimit {
  /** Who submits (the job's `submittedBy`). */
  readonly caller: string;
  /** Most jobs of `caller` in {@link WAITING_STATES}, ≥ 1. */
  readonly maxWaiting: number;
}

/** Result of {@link JobStore.setState}. */
export interface StateChangeResult {
  /** True when the state was written. */
  readonly changed: boolean;
  /** The state before the call ('' when the job does not exist). */
  readonly previous: JobStateName | '';
}

function toNumber(value: string | undefined): number {
  const n = Number(value ?? 0);
  return Number.isFinite(n) ? n : 0;
}

function parseJson<T>(value: string | undefined): T | undefined {
  if (value === undefined || value === '') return undefined;
  return JSON.parse(value) as T;
}

/** The stored record as the wire `Job`. */
export function toWireJob(record: JobRecord, options: { withSpec: boolean }): Job {
  return {
    jobId: record.jobId,
    name: record.name,
    state: jobStateOf(record.state),
    spec: options.withSpec ? record.spec : '',
    workersDesired: record.workersDesired,
    workersActive: record.workersActive,
    generation: record.generation,
    committedStep: record.committedStep,
    totalSteps: record.totalSteps,
    createdAtUnixMs: record.createdAt,
    startedAtUnixMs: record.startedAt,
    finishedAtUnixMs: record.finishedAt,
    error: record.error,
    progress: record.progress,
  };
}

/**
 * Job records in Redis plus an in-process feed of updates for WatchJob. Only this
 * coordinator changes jobs, so watchers of this process see every change.
 */
export class JobStore {
  readonly keys: JobKeys;
  readonly #redis: Redis;
  readonly #updates = new EventEmitter();

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.keys = new JobKeys(prefix);
    this.#updates.setMaxListeners(0);
  }

  /** The Redis client (for transactions that span job and lease keys). */
  get redis(): Redis {
    return this.#redis;
  }

  /**
   * Writes a new job atomically. With an idempotency key already used, writes nothing and
   * returns the existing job id; with `limit`, writes nothing when the caller already has
   * `limit.maxWaiting` jobs waiting, and otherwise records the job as the caller's.
   */
  async create(record: JobRecord, idempotencyKey: string, limit?: WaitingJobsLimit): Promise<CreateResult> {
    const fields: (string | number)[] = [];
    for (const [field, value] of Object.entries(serialize(record))) fields.push(field, value);
    const [kind, value] = (await this.#redis.eval(
      CREATE_SCRIPT,
      4,
      idempotencyKey === '' ? '' : this.keys.idempotency(idempotencyKey),
      this.keys.job(record.jobId),
      this.keys.jobs(),
      limit === undefined ? '' : this.keys.callerJobs(limit.caller),
      record.jobId,
      record.createdAt,
      limit?.maxWaiting ?? 0,
      this.keys.job(''),
      ...fields,
    )) as [string, string];
    switch (kind) {
      case 'existing':
        return { kind: 'existing', jobId: value };
      case 'limit':
        return { kind: 'limit', waiting: Number(value) };
      default:
        return { kind: 'created', jobId: record.jobId };
    }
  }

  /** The job, or undefined when unknown. */
  async get(jobId: string): Promise<JobRecord | undefined> {
    const hash = await this.#redis.hgetall(this.keys.job(jobId));
    return parseRecord(jobId, hash);
  }

  /** Several jobs in one round trip, skipping unknown ids. */
  async getMany(jobIds: readonly string[]): Promise<JobRecord[]> {
    if (jobIds.length === 0) return [];
    const pipeline = this.#redis.pipeline();
    for (const id of jobIds) pipeline.hgetall(this.keys.job(id));
    const results = (await pipeline.exec()) ?? [];
    const records: JobRecord[] = [];
    results.forEach(([err, hash], i) => {
      if (err !== null) throw err;
      const record = parseRecord(jobIds[i] ?? '', hash as Record<string, string>);
      if (record !== undefined) records.push(record);
    });
    return records;
  }

  /** Every job id, newest first. */
  async listIds(): Promise<string[]> {
    return this.#redis.zrevrange(this.keys.jobs(), 0, -1);
  }

  /** Writes fields of a job without touching its state. */
  async update(jobId: string, fields: JobFields): Promise<void> {
    const entries = Object.entries(fields).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return;
    await this.#redis.hset(this.keys.job(jobId), Object.fromEntries(entries));
  }

  /**
   * Moves a job to `to` unless it is already terminal, writing `fields` with it, and
   * tells watchers. `reason` travels in the JobStateChange.
   */
  async setState(jobId: string, to: JobStateName, reason: string, fields: JobFields = {}): Promise<StateChangeResult> {
    const args: (string | number)[] = [to];
    for (const [field, value] of Object.entries(fields)) if (value !== undefined) args.push(field, value);
    const previous = (await this.#redis.eval(SET_STATE_SCRIPT, 1, this.keys.job(jobId), ...args)) as string;
    if (!isStateName(previous)) return { changed: false, previous: '' };
    if (TERMINAL_STATES.has(previous)) return { changed: false, previous };
    if (previous !== to) {
      this.publish(jobId, {
        update: {
          $case: 'state',
          state: { from: jobStateOf(previous), to: jobStateOf(to), reason, atUnixMs: Date.now() },
        },
      });
    }
    return { changed: true, previous };
  }

  /** Appends an event (capped list) and tells watchers. */
  async appendEvent(jobId: string, event: Omit<JobEvent, 'atUnixMs'> & { atUnixMs?: number }): Promise<void> {
    const full: JobEvent = { ...event, atUnixMs: event.atUnixMs ?? Date.now() };
    const key = this.keys.events(jobId);
    await this.#redis.multi().rpush(key, JSON.stringify(full)).ltrim(key, -MAX_JOB_EVENTS, -1).exec();
    this.publish(jobId, { update: { $case: 'event', event: full } });
  }

  /** Adds an event append to a transaction (call {@link publish} after it ran). */
  queueEvent(multi: ChainableCommander, jobId: string, event: JobEvent): void {
    const key = this.keys.events(jobId);
    multi.rpush(key, JSON.stringify(event)).ltrim(key, -MAX_JOB_EVENTS, -1);
  }

  /** The job's events, oldest first. */
  async events(jobId: string): Promise<JobEvent[]> {
    const raw = await this.#redis.lrange(this.keys.events(jobId), 0, -1);
    return raw.map((line) => JSON.parse(line) as JobEvent);
  }

  /** The sample ledger: committed step → sample ids in rank order. */
  async samples(jobId: string): Promise<Map<number, number[]>> {
    const ledger = await readSampleLedger(this.#redis, this.keys.samples(jobId));
    return new Map([...ledger].map(([step, entry]) => [step, entry.ids]));
  }

  /** Tells this process's watchers of `jobId` about an update. */
  publish(jobId: string, update: WatchJobResponse): void {
    this.#updates.emit(jobId, update);
  }

  /** Subscribes to the updates of one job; returns the unsubscribe function. */
  subscribe(jobId: string, listener: (update: WatchJobResponse) => void): () => void {
    this.#updates.on(jobId, listener);
    return () => {
      this.#updates.off(jobId, listener);
    };
  }
}

/** Event severities by name, for brevity at call sites. */
export const Severity = JobEvent_Severity;

function serialize(record: JobRecord): Record<string, string | number> {
  return {
    name: record.name,
    state: record.state,
    spec: record.spec,
    workersDesired: record.workersDesired,
    workersActive: record.workersActive,
    generation: record.generation,
    committedStep: record.committedStep,
    totalSteps: record.totalSteps,
    createdAt: record.createdAt,
    startedAt: record.startedAt,
    finishedAt: record.finishedAt,
    error: record.error,
    progress: record.progress === undefined ? '' : JSON.stringify(record.progress),
    lastHash: record.lastHash,
    manifestEtag: record.manifestEtag,
    shards: record.shards === undefined ? '' : JSON.stringify(record.shards.map((s) => [s.begin, s.end])),
    leaseEpoch: record.leaseEpoch,
    samplesCommitted: record.samplesCommitted ?? 0,
    submittedBy: record.submittedBy ?? '',
  };
}

function parseRecord(jobId: string, hash: Record<string, string>): JobRecord | undefined {
  if (!isStateName(hash.state)) return undefined;
  const shards = parseJson<[number, number][]>(hash.shards);
  return {
    jobId,
    name: hash.name ?? '',
    state: hash.state,
    spec: hash.spec ?? '',
    workersDesired: toNumber(hash.workersDesired),
    workersActive: toNumber(hash.workersActive),
    generation: toNumber(hash.generation),
    committedStep: toNumber(hash.committedStep),
    totalSteps: toNumber(hash.totalSteps),
    createdAt: toNumber(hash.createdAt),
    startedAt: toNumber(hash.startedAt),
    finishedAt: toNumber(hash.finishedAt),
    error: hash.error ?? '',
    progress: parseJson<JobProgress>(hash.progress),
    lastHash: hash.lastHash ?? '',
    manifestEtag: hash.manifestEtag ?? '',
    shards: shards?.map(([begin, end]) => ({ begin, end })),
    leaseEpoch: hash.leaseEpoch === undefined || hash.leaseEpoch === '' ? -1 : toNumber(hash.leaseEpoch),
    samplesCommitted: toNumber(hash.samplesCommitted),
    submittedBy: hash.submittedBy ?? '',
  };
}
