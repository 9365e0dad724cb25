// The proof that the distributed step is the real step: a job on a local fleet (coordinator,
// teacher-sync, N worker processes, Redis, s3rver) and the one-process trainer, given the
// same global batches in the same order with the same seed, must end with the same student
// and teacher weights. The cluster's data order comes from its own sample ledger (the job
// runs in verification mode), so the reference reads exactly the images the ranks read.
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { resolveJobSpec, resolveRecipe, type JobSpec } from '@dinofleet/config';
import { initComputeBackend } from '@dinofleet/compute';
import { createS3Client, fetchImages, readCheckpoint, resolveS3Config, type NamedTensor } from '@dinofleet/data';
import { buildCropBatch, createDinoState, disposeDinoState, Rng, trainStep, type DinoState, type Image } from '@dinofleet/dino';
import { startLocalFleet, uploadFashionMnist } from '@dinofleet/local';
import type { LocalFleet } from '@dinofleet/local';
import { callUnary, createClient, JobServiceClient, JobState, type Job } from '@dinofleet/proto';
import { Redis } from 'ioredis';

/** Options of {@link runEquivalence}. */
export interface EquivalenceOptions {
  /** Worker processes. @default 2 */
  readonly workers?: number;
  /** Optimiser steps. @default 4 */
  readonly steps?: number;
  /** Images per step over the fleet. @default 16 */
  readonly globalBatchSize?: number;
  /** Fashion-MNIST training images uploaded to S3. @default 256 */
  readonly images?: number;
  /** Local crops per image. @default 2 */
  readonly nLocal?: number;
  /** Most workers (`spec.fleet.maxWorkers`), for runs that scale up. @default workers */
  readonly maxWorkers?: number;
  /**
   * Worker processes the fleet starts (the ones beyond `workers` wait idle, so a scale-up
   * joins at the next step boundary instead of after a process boot). @default workers
   */
  readonly fleetWorkers?: number;
  /**
   * Runs beside the job once it is submitted (scale it, kill workers): the reference is
   * trained on the batches the ledger says were committed, whatever the fleet did.
   */
  readonly during?: (run: { readonly fleet: LocalFleet; readonly client: JobServiceClient; readonly jobId: string }) => Promise<void>;
  /** `spec.collective` of the job (e.g. `{ compression: 'bf16' }`). @default the spec's defaults */
  readonly collective?: Readonly<Record<string, unknown>>;
  /** Worker logs go here (one file per process). */
  readonly logDir?: string;
  /** Progress lines. */
  readonly log?: (message: string) => void;
}

/** What {@link runEquivalence} measured. */
export interface EquivalenceResult {
  readonly jobId: string;
  readonly workers: number;
  readonly steps: number;
  /** max |Δ| over every student and teacher parameter and the center. */
  readonly maxAbsDiff: number;
  readonly maxAbsDiffStudent: number;
  readonly maxAbsDiffTeacher: number;
  readonly maxAbsDiffCenter: number;
  /** max |final − initial| over the student's weights: how far the steps moved them. */
  readonly maxAbsUpdate: number;
  /** Parameters compared (student + teacher tensors). */
  readonly tensorsCompared: number;
  /** Wall time of the cluster job, seconds (submit to SUCCEEDED). */
  readonly clusterSeconds: number;
  /** Generations the job went through (1 when nothing changed). */
  readonly generations: number;
  /** World size of the last commit. */
  readonly finalWorldSize: number;
}

const BUCKET = 'dinofleet-equivalence';
const SEED = 7;
const TERMINAL = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

/** The job the fleet runs: `dino` (centering through teacher-sync) without rank-dependent randomness. */
function equivalenceSpec(
  manifestUri: string,
  o: Required<Omit<EquivalenceOptions, 'logDir' | 'log' | 'during' | 'fleetWorkers' | 'collective'>>,
  collective: EquivalenceOptions['collective'],
): Record<string, unknown> {
  return {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: 'equivalence' },
    spec: {
      // Drop path draws from the rank's random stream, so it is off: with it each rank
      // would drop different paths than the one process does for the same images.
      // The lr is constant and large enough that a few steps move the weights ~100x the
      // tolerance; the preset's warm-up would keep a 4-step run at lr ~ 0.
      recipe: {
        preset: 'dino',
        overrides: { dropPathRate: 0, crops: { nLocal: o.nLocal }, optim: { baseLr: 2e-4, lrScaling: 'none', warmupEpochs: 0 } },
      },
      data: { manifest: manifestUri, recordSamples: true, shards: 4 * o.workers },
      training: { steps: o.steps, globalBatchSize: o.globalBatchSize, seed: SEED },
      fleet: { workers: o.workers, minWorkers: 1, maxWorkers: o.maxWorkers },
      checkpoint: { uri: `s3://${BUCKET}/checkpoints/`, everySteps: 1_000_000 },
      ...(collective !== undefined && { collective }),
    },
  };
}

/** Manifest byte offset → object key, read from the manifest object itself. */
async function manifestKeys(s3: S3Client, bucket: string, key: string): Promise<Map<number, string>> {
  const response = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const bytes = Buffer.from((await response.Body?.transformToByteArray()) ?? []);
  const keys = new Map<number, string>();
  let start = 0;
  while (start < bytes.length) {
    let end = bytes.indexOf(0x0a, start);
    if (end === -1) end = bytes.length;
    const line = bytes.toString('utf8', start, end).replace(/\r$/, '');
    if (line !== '') keys.set(start, line.split('\t')[0] ?? line);
    start = end + 1;
  }
  return keys;
}

/** The sample ledger of a job in verification mode: sample ids of every committed step, in rank order. */
async function ledger(redisUrl: string, jobId: string, steps: number): Promise<number[][]> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
  try {
    await redis.connect();
    const raw = await redis.hgetall(`dinofleet:job:${jobId}:samples`);
    const entries = Object.entries(raw)
      .map(([step, entry]) => [Number(step), (JSON.parse(entry) as { ids: number[] }).ids] as const)
      .sort((a, b) => a[0] - b[0]);
    if (entries.length !== steps) throw new Error(`the sample ledger of ${jobId} holds ${entries.length} steps, expected ${steps}`);
    return entries.map(([, ids]) => ids);
  } finally {
    redis.disconnect();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array, what: string): number {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} values in the cluster, ${b.length} in the reference`);
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    // NaN on either side must fail the comparison, not vanish in Math.max.
    max = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(max, d);
  }
  return max;
}

async function waitForJob(client: JobServiceClient, jobId: string, timeoutMs: number): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { job } = await callUnary(client, 'getJob', { jobId }, { deadlineMs: 5000 });
    if (job !== undefined && TERMINAL.has(job.state)) return job;
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not finish within ${timeoutMs / 1000} s (state ${job?.state})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Polls until a step after `afterStep` committed (or the job ended). */
async function waitForStepAfter(client: JobServiceClient, jobId: string, afterStep: number): Promise<Job | undefined> {
  for (;;) {
    const { job } = await callUnary(client, 'getJob', { jobId }, { deadlineMs: 5000 });
    if (job === undefined || TERMINAL.has(job.state) || job.committedStep > afterStep) return job;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A disruption for {@link EquivalenceOptions.during}: ScaleJob(`scaleTo`) once step
 * `scaleAfter` committed, then, once a step committed at that size and at step `killAfter`
 * or later, a SIGKILL of one worker (the survivors go on in a new generation; the local
 * scaler starts a replacement that joins).
 */
export function scaleThenKill(o: { readonly scaleAfter: number; readonly scaleTo: number; readonly killAfter: number }): NonNullable<EquivalenceOptions['during']> {
  return async ({ fleet, client, jobId }) => {
    if ((await waitForStepAfter(client, jobId, o.scaleAfter - 1))?.finishedAtUnixMs !== 0) return;
    await callUnary(client, 'scaleJob', { jobId, workers: o.scaleTo }, { deadlineMs: 10_000 });
    // The kill comes once the joiner trains (a commit at the new size), at step killAfter or later.
    let job: Job | undefined;
    do {
      job = await waitForStepAfter(client, jobId, Math.max(o.killAfter - 1, job?.committedStep ?? 0));
    } while (job !== undefined && job.finishedAtUnixMs === 0 && job.progress?.worldSize !== o.scaleTo);
    if (job?.finishedAtUnixMs !== 0) return;
    const victim = (await fleet.workers())[1];
    if (victim !== undefined) process.kill(victim.pid, 'SIGKILL');
  };
}

/** One-process reference: the same images per step, the same crops, `trainStep`. */
async function referenceRun(spec: JobSpec, images: readonly (readonly Image[])[]): Promise<{ state: DinoState; initialStudent: Map<string, Float32Array> }> {
  const recipe = resolveRecipe(spec);
  const seed = spec.spec.training.seed;
  const state = createDinoState(recipe, seed, { totalSteps: images.length });
  const initialStudent = new Map(Object.entries(state.student).map(([name, v]) => [name, v.dataSync() as Float32Array]));
  for (const [step, batchImages] of images.entries()) {
    const batch = buildCropBatch(batchImages, recipe.crops, new Rng(seed).fork(step + 1));
    const metrics = await trainStep(state, batch);
    if (!metrics.applied) throw new Error(`reference step ${step} was not applied (loss ${metrics.loss.total})`);
  }
  return { state, initialStudent };
}

/** Runs the job on a local fleet and the reference in this process, and compares the weights. */
export async function runEquivalence(options: EquivalenceOptions = {}): Promise<EquivalenceResult> {
  const o = {
    workers: options.workers ?? 2,
    steps: options.steps ?? 4,
    globalBatchSize: options.globalBatchSize ?? 16,
    images: options.images ?? 256,
    nLocal: options.nLocal ?? 2,
    maxWorkers: options.maxWorkers ?? options.workers ?? 2,
  };
  const log = options.log ?? (() => undefined);
  await using fleet = await startLocalFleet({ workers: options.fleetWorkers ?? o.workers, backend: 'wasm', ...(options.logDir !== undefined && { logDir: options.logDir }) });
  const s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
  try {
    log(`fleet up: coordinator ${fleet.coordinatorAddress}, teacher-sync ${fleet.teacherSyncAddress}`);
    const upload = await uploadFashionMnist(s3, { bucket: BUCKET, split: 'train', limit: o.images });
    log(`uploaded ${upload.count} images, manifest ${upload.manifestUri}`);
    const specObject = equivalenceSpec(upload.manifestUri, o, options.collective);
    const spec = resolveJobSpec(specObject);
    const client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
    const started = performance.now();
    try {
      const { jobId } = await callUnary(client, 'submitJob', { spec: JSON.stringify(specObject), idempotencyKey: '' }, { deadlineMs: 30_000 });
      log(`submitted ${jobId}`);
      const during = options.during?.({ fleet, client, jobId });
      const job = await waitForJob(client, jobId, 10 * 60_000);
      await during;
      const clusterSeconds = (performance.now() - started) / 1000;
      if (job.state !== JobState.JOB_STATE_SUCCEEDED) throw new Error(`job ${jobId} ended ${JobState[job.state]}: ${job.error}`);
      log(`job ${jobId} succeeded after ${clusterSeconds.toFixed(1)} s, ${job.committedStep} steps`);

      const checkpoint = await readCheckpoint(s3, `s3://${BUCKET}/checkpoints/`, jobId);
      if (checkpoint === null) throw new Error(`job ${jobId} left no checkpoint under s3://${BUCKET}/checkpoints/`);
      if (checkpoint.step !== o.steps) throw new Error(`the final checkpoint is at step ${checkpoint.step}, expected ${o.steps}`);

      const ids = await ledger(fleet.redisUrl, jobId, o.steps);
      const manifestKey = upload.manifestUri.slice(`s3://${BUCKET}/`.length);
      const keyOf = await manifestKeys(s3, BUCKET, manifestKey);
      const recipe = resolveRecipe(spec);
      const images: Image[][] = [];
      for (const [step, stepIds] of ids.entries()) {
        if (stepIds.length !== o.globalBatchSize) throw new Error(`step ${step + 1} trained ${stepIds.length} images, expected ${o.globalBatchSize}`);
        const keys = stepIds.map((id) => {
          const key = keyOf.get(id);
          if (key === undefined) throw new Error(`sample id ${id} of step ${step + 1} is not a record offset of the manifest`);
          return key;
        });
        const fetched = await fetchImages(s3, BUCKET, keys, { channels: recipe.vit.inChannels as 1 | 3 });
        images.push(
          fetched.map((f) => {
            if (!('image' in f)) throw new Error(`reference could not read ${f.key}: ${f.skipped}`);
            return f.image;
          }),
        );
      }
      log(`reference: ${o.steps} steps on the same ${o.steps * o.globalBatchSize} images in one process`);
      await initComputeBackend('wasm');
      const { state, initialStudent } = await referenceRun(spec, images);
      try {
        const tensors = checkpoint.tensors;
        const take = (name: string): NamedTensor => {
          const t = tensors[name];
          if (t === undefined) throw new Error(`the checkpoint has no tensor ${name}`);
          return t;
        };
        let student = 0;
        let teacher = 0;
        let compared = 0;
        let update = 0;
        for (const [name, variable] of Object.entries(state.student)) {
          const final = variable.dataSync() as Float32Array;
          student = Math.max(student, maxAbsDiff(take(`student/${name}`).data, final, `student/${name}`));
          update = Math.max(update, maxAbsDiff(final, initialStudent.get(name) ?? new Float32Array(0), `update of ${name}`));
          compared++;
        }
        for (const [name, variable] of Object.entries(state.teacher)) {
          teacher = Math.max(teacher, maxAbsDiff(take(`teacher/${name}`).data, variable.dataSync() as Float32Array, `teacher/${name}`));
          compared++;
        }
        const center = maxAbsDiff(take('center').data, state.center, 'center');
        return {
          jobId,
          workers: o.workers,
          steps: o.steps,
          maxAbsDiff: Math.max(student, teacher, center),
          maxAbsDiffStudent: student,
          maxAbsDiffTeacher: teacher,
          maxAbsDiffCenter: center,
          maxAbsUpdate: update,
          tensorsCompared: compared,
          clusterSeconds,
          generations: job.generation,
          finalWorldSize: job.progress?.worldSize ?? 0,
        };
      } finally {
        disposeDinoState(state);
      }
    } finally {
      client.close();
    }
  } finally {
    s3.destroy();
  }
}
