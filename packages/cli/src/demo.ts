// `npm run demo`: the whole system on loopback. Starts Redis and s3rver, uploads
// Fashion-MNIST to S3 as PNG objects plus a manifest, starts a coordinator (whose local
// scaler starts the worker processes) and a teacher-sync, submits a DINOv2 job over gRPC,
// shows its progress, evaluates the trained teacher with k-NN beside a random-init one,
// stops everything it started and prints one JSON line. The fleet is secure as by default:
// mutual TLS with a CA made for it, and the job submitted with its submit token.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { findRepoRoot, startLocalFleet, uploadFashionMnist } from '@dinofleet/local';
import { callUnary, channelCredentials, createClient, JobServiceClient, JobState, TeacherSyncClient } from '@dinofleet/proto';
import { evalKnn } from './eval-knn.ts';
import { watchJob } from './watch-job.ts';

/** What the demo prints as its last line. */
export interface DemoResult {
  readonly job: string;
  readonly workers: number;
  readonly steps: number;
  readonly knn_top1_trained: number;
  readonly knn_top1_random_init: number;
  readonly seconds: number;
}

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Worker processes. @default 2 */
  readonly workers: number;
  /** Optimiser steps of the job. */
  readonly steps: number;
  /** Images per step over the fleet. */
  readonly globalBatchSize: number;
  /** Fashion-MNIST training images uploaded to S3 (class-balanced). */
  readonly images: number;
  /** k-NN memory bank size (train split) and test images. */
  readonly knnTrain: number;
  readonly knnTest: number;
  /** Process logs go here. */
  readonly logDir: string;
  /** Progress lines (stderr). */
  readonly out: NodeJS.WritableStream;
}

const BUCKET = 'dinofleet-demo';

/** Runs the demo; everything it started is stopped before it returns or throws. */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const started = performance.now();
  const say = (line: string): void => void options.out.write(`${line}\n`);
  await mkdir(options.logDir, { recursive: true });
  say(`dinofleet demo: starting Redis, s3rver, teacher-sync, a coordinator and ${options.workers} workers (logs in ${options.logDir})`);
  await using fleet = await startLocalFleet({ workers: options.workers, backend: 'wasm', logDir: options.logDir });
  say(`  coordinator ${fleet.coordinatorAddress}, teacher-sync ${fleet.teacherSyncAddress}, Redis ${fleet.redisUrl} (mutual TLS, API tokens)`);
  const s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
  // Submitting and reading a job needs no more than the submit scope.
  const jobs = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions('submit'));
  // TeacherSync serves fleet members only: connect with the fleet certificate (no token).
  const teacherSync = createClient(TeacherSyncClient, fleet.teacherSyncAddress, { credentials: channelCredentials(fleet.security) });
  try {
    let lastShown = 0;
    const upload = await uploadFashionMnist(s3, {
      bucket: BUCKET,
      split: 'train',
      limit: options.images,
      onProgress: (done, total) => {
        if (done === total || done - lastShown >= 2000) {
          lastShown = done;
          say(`  uploaded ${done}/${total} Fashion-MNIST images to s3://${BUCKET}/`);
        }
      },
    });
    const spec = {
      apiVersion: 'dinofleet/v1',
      kind: 'TrainingJob',
      metadata: { name: 'demo-fmnist-dinov2' },
      spec: {
        recipe: { preset: 'dinov2' },
        data: { manifest: upload.manifestUri },
        training: { steps: options.steps, globalBatchSize: options.globalBatchSize, seed: 0 },
        fleet: { workers: options.workers },
        checkpoint: { uri: `s3://${BUCKET}/checkpoints/`, everySteps: Math.max(1, Math.ceil(options.steps / 2)) },
      },
    };
    const { jobId } = await callUnary(jobs, 'submitJob', { spec: JSON.stringify(spec), idempotencyKey: '' }, { deadlineMs: 30_000 });
    say(`submitted job ${jobId}: dinov2, ${options.steps} steps of ${options.globalBatchSize} images on ${options.workers} workers`);
    const job = await watchJob(jobs, jobId, { out: options.out });
    if (job.state !== JobState.JOB_STATE_SUCCEEDED) throw new Error(`job ${jobId} ended ${JobState[job.state]}: ${job.error}`);

    say(`evaluating: weighted k-NN (k 20) on ${options.knnTrain} train / ${options.knnTest} test images`);
    const common = { jobId, jobs, train: options.knnTrain, test: options.knnTest, backend: 'wasm' as const };
    const trained = await evalKnn({ ...common, teacher: { kind: 'snapshot', client: teacherSync } });
    say(`  trained teacher (step ${trained.step}): top-1 ${trained.knn_top1.toFixed(4)}`);
    const random = await evalKnn({ ...common, teacher: { kind: 'random-init' } });
    say(`  random-init teacher:          top-1 ${random.knn_top1.toFixed(4)}`);
    return {
      job: jobId,
      workers: options.workers,
      steps: job.committedStep,
      knn_top1_trained: trained.knn_top1,
      knn_top1_random_init: random.knn_top1,
      seconds: Math.round((performance.now() - started) / 1000),
    };
  } finally {
    jobs.close();
    teacherSync.close();
    s3.destroy();
    say('stopping the fleet');
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      workers: { type: 'string', default: process.env.DEMO_WORKERS ?? '2' },
      steps: { type: 'string', default: process.env.DEMO_STEPS ?? '320' },
      'batch-size': { type: 'string', default: '64' },
      images: { type: 'string', default: process.env.DEMO_IMAGES ?? '16000' },
      'knn-train': { type: 'string', default: '5000' },
      'knn-test': { type: 'string', default: '10000' },
    },
  });
  const int = (name: string, value: string, min: number): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) {
      process.stderr.write(`demo: --${name} must be an integer >= ${min}, got '${value}'\n`);
      process.exit(2);
    }
    return n;
  };
  const result = await runDemo({
    workers: int('workers', values.workers, 1),
    steps: int('steps', values.steps, 1),
    globalBatchSize: int('batch-size', values['batch-size'], 1),
    images: int('images', values.images, 1),
    knnTrain: int('knn-train', values['knn-train'], 1),
    knnTest: int('knn-test', values['knn-test'], 1),
    logDir: join(findRepoRoot(), '.dinofleet', 'demo-logs'),
    out: process.stderr,
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  // Ctrl-C or SIGTERM: exit at once; every child process gets SIGTERM on the way out
  // (@dinofleet/local reaps what it spawned), so nothing is left running.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`demo: ${signal}, stopping every process it started\n`);
      process.exit(130);
    });
  }
  main().catch((error: unknown) => {
    process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
