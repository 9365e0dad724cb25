// The chaos run: one job over at least one epoch of a Fashion-MNIST manifest on a local
// fleet (Redis, s3rver, teacher-sync, coordinator with its local scaler, 3-4 worker
// processes), while a seeded schedule SIGKILLs workers, scales the job up and down, and
// kills the coordinator and teacher-sync (each restarted at its address). Measured from
// the outside, through the job API and the sample ledger only.
import { verifySampleLedger } from '@dinofleet/coordinator';
import { createS3Client, listManifestOffsets, resolveS3Config } from '@dinofleet/data';
import { Rng } from '@dinofleet/dino';
import { startLocalFleet, uploadFashionMnist } from '@dinofleet/local';
import type { LocalFleet } from '@dinofleet/local';
import { callUnary, createClient, JobServiceClient, JobState } from '@dinofleet/proto';
import type { Job, JobProgress } from '@dinofleet/proto';
import { parseS3Uri } from '@dinofleet/config';
import { Redis } from 'ioredis';
import { median } from '../lib/report.ts';

/** One disruption of the schedule. */
export type ChaosKind = 'kill-worker' | 'scale-up' | 'scale-down' | 'kill-coordinator' | 'kill-teacher-sync';

/** A disruption and when it fires, seconds after the job's first commit. */
export interface ChaosEvent {
  readonly atS: number;
  readonly kind: ChaosKind;
}

/** Options of {@link runChaos}. */
export interface ChaosOptions {
  /** Seed of the schedule (and of the job). @default 1 */
  readonly seed?: number;
  /** Fashion-MNIST training images in the manifest (one epoch). @default 3072 */
  readonly images?: number;
  /** Images per step over the fleet. @default 24 */
  readonly globalBatchSize?: number;
  /** Workers at the start (min 2, max one more). @default 3 */
  readonly workers?: number;
  /** Worker SIGKILLs. @default 10 */
  readonly kills?: number;
  /** Scale-ups (each followed later by a scale-down). @default 2 */
  readonly scaleCycles?: number;
  /** Seconds between disruptions: uniform in [min, max]. @default [7, 11] */
  readonly gapS?: readonly [number, number];
  /** Process logs. */
  readonly logDir?: string;
  readonly log?: (message: string) => void;
}

/** What {@link runChaos} measured. */
export interface ChaosResult {
  readonly jobId: string;
  readonly jobState: string;
  readonly error: string;
  readonly steps: number;
  readonly epochs: number;
  readonly kills: number;
  readonly scaleEvents: number;
  readonly serviceKills: number;
  /** Worker kill → first commit of a newer generation, seconds. */
  readonly recoveriesS: readonly number[];
  /** Coordinator / teacher-sync kill → next commit, seconds. */
  readonly serviceRecoveriesS: Readonly<Record<string, number>>;
  /** ScaleJob(up) → first commit with the new world size, seconds. */
  readonly joinsS: readonly number[];
  readonly samplesLost: number;
  readonly samplesDuplicated: number;
  readonly samplesCommitted: number;
  readonly longestStallS: number;
  readonly generations: number;
  readonly seconds: number;
}

/** The seeded schedule: kills anywhere, scale-ups each followed by a scale-down, one kill of each service. */
export function chaosSchedule(seed: number, kills: number, scaleCycles: number, gapS: readonly [number, number]): ChaosEvent[] {
  const rng = new Rng(seed ^ 0x5eed);
  const others: ChaosKind[] = [...Array.from({ length: kills }, (): ChaosKind => 'kill-worker'), 'kill-coordinator', 'kill-teacher-sync'];
  rng.shuffle(others);
  // Scale events go in as up, down, up, down … at random positions, so the fleet stays within its limits.
  const kinds: ChaosKind[] = [...others];
  const scale: ChaosKind[] = [];
  for (let i = 0; i < scaleCycles; i++) scale.push('scale-up', 'scale-down');
  const positions = Array.from({ length: scale.length }, () => rng.int(kinds.length + 1)).sort((a, b) => a - b);
  positions.forEach((position, i) => kinds.splice(position + i, 0, scale[i] as ChaosKind));
  let at = 0;
  return kinds.map((kind) => {
    at += gapS[0] + rng.uniform() * (gapS[1] - gapS[0]);
    return { atS: Number(at.toFixed(2)), kind };
  });
}

interface Commit {
  readonly step: number;
  readonly generation: number;
  readonly worldSize: number;
  readonly atMs: number;
}

/** Follows the job's commits through WatchJob, reopening the stream when the coordinator goes away. */
class CommitLog {
  readonly commits: Commit[] = [];
  #stopped = false;
  #job: Job | undefined;
  readonly #client: JobServiceClient;
  readonly #jobId: string;
  readonly done: Promise<void>;

  constructor(client: JobServiceClient, jobId: string) {
    this.#client = client;
    this.#jobId = jobId;
    this.done = this.#follow();
  }

  get last(): Commit | undefined {
    return this.commits[this.commits.length - 1];
  }

  get job(): Job | undefined {
    return this.#job;
  }

  stop(): void {
    this.#stopped = true;
  }

  #record(progress: JobProgress): void {
    const last = this.last;
    if (last !== undefined && progress.step <= last.step && progress.generation <= last.generation) return;
    this.commits.push({ step: progress.step, generation: progress.generation, worldSize: progress.worldSize, atMs: progress.committedAtUnixMs });
  }

  async #follow(): Promise<void> {
    while (!this.#stopped) {
      try {
        const { job } = await callUnary(this.#client, 'getJob', { jobId: this.#jobId }, { deadlineMs: 3000 });
        this.#job = job;
        if (job?.progress !== undefined && job.progress.step > 0) this.#record(job.progress);
        if (job !== undefined && [JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED].includes(job.state)) return;
        await new Promise<void>((resolve) => {
          const call = this.#client.watchJob({ jobId: this.#jobId, sinceStep: (this.last?.step ?? 0) + 1 });
          call.on('data', (message: { update?: { $case: string; progress?: JobProgress; state?: { to: JobState } } }) => {
            if (message.update?.$case === 'progress' && message.update.progress !== undefined) this.#record(message.update.progress);
            if (this.#stopped) call.cancel();
          });
          call.on('error', () => resolve());
          call.on('end', () => resolve());
        });
      } catch {
        // the coordinator is restarting
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const TERMINAL = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

async function manifestOffsets(manifestUri: string): Promise<number[]> {
  const s3 = createS3Client(resolveS3Config());
  try {
    const { bucket, key } = parseS3Uri(manifestUri);
    return await listManifestOffsets(s3, bucket, key);
  } finally {
    s3.destroy();
  }
}

/** Runs the chaos job and measures it. */
export async function runChaos(options: ChaosOptions = {}): Promise<ChaosResult> {
  const log = options.log ?? (() => undefined);
  const seed = options.seed ?? 1;
  const workers = options.workers ?? 3;
  const batch = options.globalBatchSize ?? 24;
  const schedule = chaosSchedule(seed, options.kills ?? 10, options.scaleCycles ?? 2, options.gapS ?? [7, 11]);
  log(`schedule: ${schedule.map((e) => `${e.atS}s ${e.kind}`).join(', ')}`);

  await using fleet: LocalFleet = await startLocalFleet({
    workers,
    backend: 'wasm',
    ...(options.logDir !== undefined && { logDir: options.logDir }),
  });
  Object.assign(process.env, fleet.s3Env);
  const bucket = 'dinofleet-chaos';
  const uploaded = await uploadFashionMnist(createS3Client(resolveS3Config()), { bucket, split: 'train', limit: options.images ?? 3072 });
  const offsets = await manifestOffsets(uploaded.manifestUri);
  log(`manifest ${uploaded.manifestUri}: ${offsets.length} records`);

  const client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
  const spec = {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: 'chaos' },
    spec: {
      recipe: { preset: 'dino', overrides: { crops: { nLocal: 2 } } },
      // Small shards (16 records): epochs overlap at their boundary by up to one lease per
      // rank, so 15% more steps than an epoch make epoch 0 whole before the job ends.
      data: { manifest: uploaded.manifestUri, recordSamples: true, shards: Math.ceil(offsets.length / 16) },
      training: { steps: Math.ceil((1.15 * offsets.length) / batch), globalBatchSize: batch, seed },
      fleet: { workers, minWorkers: 2, maxWorkers: workers + 1 },
      checkpoint: { uri: `s3://${bucket}/checkpoints/`, everySteps: 25 },
    },
  };
  const started = Date.now();
  const { jobId } = await callUnary(client, 'submitJob', { spec: JSON.stringify(spec), idempotencyKey: '' }, { deadlineMs: 30_000 });
  log(`job ${jobId} submitted`);
  const commits = new CommitLog(client, jobId);

  // The clock of the schedule starts at the first commit (workers booted, generation 1 formed).
  while (commits.last === undefined) {
    const job = commits.job;
    if (job !== undefined && TERMINAL.has(job.state)) throw new Error(`job ended before its first commit: ${job.error}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const t0 = Date.now();
  const rng = new Rng(seed ^ 0xc4a05);
  let desired = workers;
  const kills: { atMs: number; generation: number }[] = [];
  const serviceKills: { kind: string; atMs: number; step: number }[] = [];
  const joins: { atMs: number; worldSize: number }[] = [];
  let scaleEvents = 0;
  for (const event of schedule) {
    const wait = t0 + event.atS * 1000 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (commits.job !== undefined && TERMINAL.has(commits.job.state)) {
      log(`job ended before the ${event.kind} at ${event.atS}s`);
      break;
    }
    const generation = commits.last?.generation ?? 0;
    switch (event.kind) {
      case 'kill-worker': {
        const running = await fleet.workers();
        const victim = running[rng.int(running.length)];
        if (victim === undefined) break;
        process.kill(victim.pid, 'SIGKILL');
        kills.push({ atMs: Date.now(), generation });
        log(`${((Date.now() - t0) / 1000).toFixed(1)}s SIGKILL ${victim.workerId} (pid ${victim.pid}), generation ${generation}`);
        break;
      }
      case 'scale-up':
      case 'scale-down': {
        desired += event.kind === 'scale-up' ? 1 : -1;
        const atMs = Date.now();
        await callUnary(client, 'scaleJob', { jobId, workers: desired }, { deadlineMs: 10_000 });
        scaleEvents++;
        if (event.kind === 'scale-up') joins.push({ atMs, worldSize: desired });
        log(`${((atMs - t0) / 1000).toFixed(1)}s ScaleJob(${desired})`);
        break;
      }
      case 'kill-coordinator':
      case 'kill-teacher-sync': {
        const service = event.kind === 'kill-coordinator' ? 'coordinator' : 'teacher-sync';
        const atMs = Date.now();
        serviceKills.push({ kind: service, atMs, step: commits.last?.step ?? 0 });
        log(`${((atMs - t0) / 1000).toFixed(1)}s SIGKILL ${service}`);
        await fleet.restart(service, { signal: 'SIGKILL' });
        log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${service} restarted`);
        break;
      }
    }
  }

  const deadline = Date.now() + 20 * 60_000;
  while (commits.job === undefined || !TERMINAL.has(commits.job.state)) {
    if (Date.now() > deadline) throw new Error('the chaos job did not finish within 20 minutes after the schedule');
    await new Promise((r) => setTimeout(r, 250));
  }
  commits.stop();
  const job = commits.job;
  const seconds = (Date.now() - started) / 1000;

  const list = commits.commits;
  const firstAfter = (atMs: number, accept: (c: Commit) => boolean): Commit | undefined => list.find((c) => c.atMs >= atMs && accept(c));
  const recoveriesS = kills.flatMap((k) => {
    const next = firstAfter(k.atMs, (c) => c.generation > k.generation);
    return next === undefined ? [] : [(next.atMs - k.atMs) / 1000];
  });
  const serviceRecoveriesS: Record<string, number> = {};
  for (const k of serviceKills) {
    const next = firstAfter(k.atMs, (c) => c.step > k.step);
    if (next !== undefined) serviceRecoveriesS[k.kind] = (next.atMs - k.atMs) / 1000;
  }
  const joinsS = joins.flatMap((j) => {
    const next = firstAfter(j.atMs, (c) => c.worldSize >= j.worldSize);
    return next === undefined ? [] : [(next.atMs - j.atMs) / 1000];
  });
  let longestStallS = 0;
  for (let i = 1; i < list.length; i++) longestStallS = Math.max(longestStallS, ((list[i]?.atMs ?? 0) - (list[i - 1]?.atMs ?? 0)) / 1000);

  const redis = new Redis(fleet.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 3 });
  await redis.connect();
  let ledger;
  try {
    ledger = await verifySampleLedger(redis, 'dinofleet', jobId, offsets);
  } finally {
    redis.disconnect();
  }
  client.close();
  return {
    jobId,
    jobState: JobState[job.state].replace('JOB_STATE_', '').toLowerCase(),
    error: job.error,
    steps: job.committedStep,
    epochs: ledger.epochsComplete,
    kills: kills.length,
    scaleEvents,
    serviceKills: serviceKills.length,
    recoveriesS,
    serviceRecoveriesS,
    joinsS,
    samplesLost: ledger.lost,
    samplesDuplicated: ledger.duplicated,
    samplesCommitted: ledger.samplesCommitted,
    longestStallS,
    generations: job.generation,
    seconds,
  };
}

export { median };
