/**
 * `dinofleet eval knn`: weighted k-NN top-1 accuracy (DINO's `eval_knn.py` protocol) of a
 * job's teacher on Fashion-MNIST, the teacher taken from teacher-sync's latest snapshot, a
 * checkpoint in S3, or the job's random initialisation (the baseline).
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { initComputeBackend } from '@dinofleet/compute';
import type { ComputeBackend } from '@dinofleet/compute';
import { parseJobSpec, parseS3Uri } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { decodeSafetensors, fashionMnistImage, loadFashionMnist } from '@dinofleet/data';
import type { FashionMnistOptions, LabelledImages, NamedTensor } from '@dinofleet/data';
import { createDinoState, disposeDinoState, embedImages, knnTop1Accuracy, normalizeImage } from '@dinofleet/dino';
import type { DinoRecipe, ParamMap } from '@dinofleet/dino';
import { callUnary } from '@dinofleet/proto';
import type { JobServiceClient, TeacherSyncClient } from '@dinofleet/proto';
import { resolveRecipe } from '@dinofleet/config';
import * as tf from '@tensorflow/tfjs-core';

import { CliError, ExitCode } from './cli-error.ts';
import { UNARY_DEADLINE_MS } from './deadlines.ts';
import { fetchTeacherSnapshot } from './teacher-snapshot.ts';

/** Where the teacher comes from. */
export type TeacherSource =
  /** teacher-sync's snapshot of the job (`step` 0 = latest); tensor names without prefix. */
  | { readonly kind: 'snapshot'; readonly client: TeacherSyncClient; readonly step?: number }
  /** A checkpoint's `model.safetensors` (tensors `teacher/<name>`): its URI or its step prefix. */
  | { readonly kind: 'checkpoint'; readonly s3: S3Client; readonly uri: string }
  /** `createDinoState(recipe, seed, { totalSteps: 1 }).teacher`: the untrained baseline. */
  | { readonly kind: 'random-init' };

/** Options of {@link evalKnn}. */
export interface EvalKnnOptions {
  /** The job (for GetJob and the snapshot, and the result's `job`). */
  readonly jobId: string;
  /** The job's spec; when absent it is read with GetJob from `jobs`. */
  readonly spec?: JobSpec;
  /** JobService client for GetJob (needed when `spec` is absent). */
  readonly jobs?: JobServiceClient;
  /** The teacher to evaluate. */
  readonly teacher: TeacherSource;
  /** Training (memory bank) images: the first N of the class-interleaved train split, 1–60000. @default 10000 */
  readonly train?: number;
  /** Test images: the first N of the held-out split, 1–10000. @default 10000 */
  readonly test?: number;
  /** Neighbours that vote. @default 20 */
  readonly k?: number;
  /** Compute backend to initialise first; none: the one already active. @default none */
  readonly backend?: ComputeBackend;
  /** Where the Fashion-MNIST cache lives. @default loadFashionMnist's default */
  readonly dataset?: FashionMnistOptions;
}

/** The JSON line `dinofleet eval knn` prints. */
export interface EvalKnnResult {
  /** Job id. */
  readonly job: string;
  /** k-NN top-1 accuracy in [0, 1]. */
  readonly knn_top1: number;
  /** Training images used. */
  readonly train: number;
  /** Test images used. */
  readonly test: number;
  /** Step of the teacher (0 for random init). */
  readonly step: number;
  /**
   * For a teacher-sync snapshot: whether every rank attested its hash (teacher-sync's
   * `verified`); a snapshot still waiting for attestations is served but not verified.
   * Absent for checkpoints and random init.
   */
  readonly verified?: boolean;
}

/** Default {@link EvalKnnOptions.train}. */
export const DEFAULT_KNN_TRAIN = 10_000;
/** Default {@link EvalKnnOptions.test}. */
export const DEFAULT_KNN_TEST = 10_000;

const CHECKPOINT_TEACHER_PREFIX = 'teacher/';

function checkCount(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new CliError(`--${name} must be an integer in [1, ${max}], got ${value}`, ExitCode.Usage);
  }
  return value;
}

/** The spec of job `jobId`, read with GetJob. */
export async function fetchJobSpec(jobs: JobServiceClient, jobId: string): Promise<JobSpec> {
  const { job } = await callUnary(jobs, 'getJob', { jobId }, { deadlineMs: UNARY_DEADLINE_MS });
  if (job === undefined) throw new CliError(`GetJob returned no job for ${jobId}`);
  return parseJobSpec(job.spec);
}

async function specOf(options: EvalKnnOptions): Promise<JobSpec> {
  if (options.spec !== undefined) return options.spec;
  if (options.jobs === undefined) throw new CliError('evalKnn needs the job spec or a JobService client', ExitCode.Usage);
  return fetchJobSpec(options.jobs, options.jobId);
}

/** Teacher tensors from a checkpoint's `model.safetensors` (its `teacher/` entries, prefix removed). */
export async function loadCheckpointTeacher(s3: S3Client, uri: string): Promise<{ tensors: Record<string, NamedTensor>; step: number }> {
  const objectUri = uri.endsWith('.safetensors') ? uri : `${uri.endsWith('/') ? uri : `${uri}/`}model.safetensors`;
  const location = parseS3Uri(objectUri);
  const object = await s3.send(new GetObjectCommand({ Bucket: location.bucket, Key: location.key }));
  if (object.Body === undefined) throw new CliError(`${objectUri} has no body`);
  const decoded = decodeSafetensors(await object.Body.transformToByteArray());
  const tensors: Record<string, NamedTensor> = {};
  for (const [name, tensor] of Object.entries(decoded.tensors)) {
    if (name.startsWith(CHECKPOINT_TEACHER_PREFIX)) tensors[name.slice(CHECKPOINT_TEACHER_PREFIX.length)] = tensor;
  }
  if (Object.keys(tensors).length === 0) throw new CliError(`${objectUri} holds no teacher/ tensors: is it a dinofleet checkpoint?`);
  const fromMetadata = Number(decoded.metadata['step']);
  const fromUri = /step-(\d+)\//.exec(objectUri);
  const step = Number.isInteger(fromMetadata) && fromMetadata >= 0 ? fromMetadata : fromUri !== null ? Number(fromUri[1]) : 0;
  return { tensors, step };
}

/**
 * The teacher as tf variables shaped like the recipe's: every backbone parameter must be
 * there with the recipe's shape (heads are not needed for features and may be absent).
 */
function teacherParams(tensors: Readonly<Record<string, NamedTensor>>, reference: ParamMap, origin: string): ParamMap {
  const params: Record<string, tf.Tensor> = {};
  const problems: string[] = [];
  for (const [name, expected] of Object.entries(reference)) {
    const tensor = tensors[name];
    const isHead = name.startsWith('dino_head') || name.startsWith('ibot_head');
    if (tensor === undefined) {
      if (!isHead) problems.push(`${name} is missing`);
      continue;
    }
    if (tensor.shape.length !== expected.shape.length || tensor.shape.some((d, i) => d !== expected.shape[i])) {
      problems.push(`${name} has shape [${tensor.shape.join(', ')}], the recipe's is [${expected.shape.join(', ')}]`);
      continue;
    }
    params[name] = tf.tensor(tensor.data, [...tensor.shape]);
  }
  if (problems.length > 0) {
    tf.dispose(Object.values(params));
    const shown = problems.slice(0, 5).join('; ');
    throw new CliError(`${origin} does not fit the job's recipe: ${shown}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`);
  }
  return params;
}

/** Normalised 28 × 28 images `[0, count)` of a split, NHWC, and their labels. */
function evalImages(set: LabelledImages, count: number, recipe: DinoRecipe): { pixels: Float32Array; labels: Int32Array } {
  const px = 28 * 28;
  const pixels = new Float32Array(count * px);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    pixels.set(normalizeImage(fashionMnistImage(set, i), recipe.crops.mean, recipe.crops.std).data, i * px);
    labels[i] = set.labels[i]!;
  }
  return { pixels, labels };
}

/**
 * k-NN top-1 accuracy of a job's teacher CLS features on Fashion-MNIST: the first `train`
 * images of the train split (class-interleaved, so balanced) are the memory bank, the
 * first `test` held-out images are classified, both normalised like the training crops.
 */
export async function evalKnn(options: EvalKnnOptions): Promise<EvalKnnResult> {
  const trainCount = checkCount('train', options.train ?? DEFAULT_KNN_TRAIN, 60_000);
  const testCount = checkCount('test', options.test ?? DEFAULT_KNN_TEST, 10_000);
  const spec = await specOf(options);
  const recipe = resolveRecipe(spec);
  if (recipe.vit.inChannels !== 1) {
    throw new CliError(`the job's ViT takes ${recipe.vit.inChannels}-channel images; Fashion-MNIST k-NN needs 1`, ExitCode.Usage);
  }
  if (options.backend !== undefined) await initComputeBackend(options.backend);

  // The random initialisation fixes the expected names and shapes (and is the baseline).
  const initial = createDinoState(recipe, spec.spec.training.seed, { totalSteps: 1 });
  let params: ParamMap;
  let step = 0;
  let verified: boolean | undefined;
  let ownParams = true;
  try {
    const source = options.teacher;
    switch (source.kind) {
      case 'random-init':
        params = initial.teacher;
        ownParams = false;
        break;
      case 'snapshot': {
        const snapshot = await fetchTeacherSnapshot(source.client, options.jobId, source.step !== undefined ? { step: source.step } : {});
        if (snapshot.header.format !== '' && snapshot.header.format !== 'safetensors') {
          throw new CliError(`teacher snapshot of ${options.jobId} is ${snapshot.header.format}, expected safetensors`);
        }
        params = teacherParams(decodeSafetensors(snapshot.bytes).tensors, initial.teacher, `teacher snapshot of ${options.jobId} at step ${snapshot.header.step}`);
        step = snapshot.header.step;
        verified = snapshot.header.verified;
        break;
      }
      case 'checkpoint': {
        const loaded = await loadCheckpointTeacher(source.s3, source.uri);
        params = teacherParams(loaded.tensors, initial.teacher, `checkpoint ${source.uri}`);
        step = loaded.step;
        break;
      }
    }
  } catch (error) {
    disposeDinoState(initial);
    throw error;
  }

  try {
    const fmnist = await loadFashionMnist(options.dataset ?? {});
    const train = evalImages(fmnist.train, trainCount, recipe);
    const test = evalImages(fmnist.test, testCount, recipe);
    const trainFeatures = embedImages(params, recipe.vit, train.pixels, trainCount, 28, 1);
    const testFeatures = embedImages(params, recipe.vit, test.pixels, testCount, 28, 1);
    let accuracy: number;
    try {
      accuracy = knnTop1Accuracy(trainFeatures, train.labels, testFeatures, test.labels, {
        numClasses: 10,
        ...(options.k !== undefined && { k: options.k }),
      });
    } finally {
      tf.dispose([trainFeatures, testFeatures]);
    }
    return { job: options.jobId, knn_top1: accuracy, train: trainCount, test: testCount, step, ...(verified !== undefined && { verified }) };
  } finally {
    if (ownParams) tf.dispose(Object.values(params));
    disposeDinoState(initial);
  }
}
