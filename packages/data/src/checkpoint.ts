/**
 * Training checkpoints in S3 (docs/cluster.md, "S3 layout"):
 *
 * ```
 * <checkpoint.uri><jobId>/step-<8 digits>/model.safetensors   tensors
 * <checkpoint.uri><jobId>/step-<8 digits>/state.json          {jobId, step, …state, createdAt}
 * <checkpoint.uri><jobId>/step-<8 digits>/manifest.json       {step, files:[{key, bytes, sha256}]}
 * <checkpoint.uri><jobId>/latest.json                         {step, prefix}
 * ```
 *
 * Objects are written in that order. S3 has no multi-object transaction, so the manifest
 * is the commit point: it is written only after every file it lists, and a step prefix
 * without one (a writer that died half-way) is not a checkpoint. The manifest's `key`s are
 * relative to the step prefix, so a checkpoint copied elsewhere still verifies.
 */
import { createHash } from 'node:crypto';

import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';

import { httpStatusOf } from './retry-backoff.ts';
import { decodeSafetensors, encodeSafetensors, SafetensorsError } from './safetensors.ts';
import type { NamedTensor } from './safetensors.ts';

/** Tensor file of a checkpoint. */
export const CHECKPOINT_MODEL_FILE = 'model.safetensors';
/** JSON state file of a checkpoint. */
export const CHECKPOINT_STATE_FILE = 'state.json';
/** The manifest, written last; its presence marks a complete checkpoint. */
export const CHECKPOINT_MANIFEST_FILE = 'manifest.json';
/** The per-job pointer to the newest checkpoint. */
export const CHECKPOINT_LATEST_FILE = 'latest.json';

/** Thrown for a checkpoint that exists but is unusable: a hash or size mismatch, bad JSON, bad tensors, a bad URI. */
export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
  /** Stable code for callers that map errors. */
  readonly code = 'invalid_checkpoint';
}

/** One file listed in a checkpoint's `manifest.json`. */
export interface CheckpointFile {
  /** Object key relative to the step prefix, e.g. `model.safetensors`. */
  readonly key: string;
  /** Size in bytes. */
  readonly bytes: number;
  /** Lowercase hex SHA-256 of the object's bytes. */
  readonly sha256: string;
}

/** The content of `manifest.json`. */
export interface CheckpointManifest {
  /** Completed training steps the checkpoint holds. */
  readonly step: number;
  /** The files, in the order they were written. */
  readonly files: readonly CheckpointFile[];
}

/** Options of {@link writeCheckpoint}. */
export interface WriteCheckpointOptions {
  /**
   * Write `manifest.json` and `latest.json` after the files, which completes the
   * checkpoint. `false` writes the files only, for a caller that completes the checkpoint
   * itself later (the coordinator, once the step committed). @default true
   */
  readonly commit?: boolean;
  /** Called with each file's entry once the file is written, in order. */
  readonly onFileWritten?: (file: CheckpointFile) => void;
}

/** A checkpoint read back by {@link readCheckpoint}. */
export interface LoadedCheckpoint {
  /** Completed training steps the checkpoint holds. */
  readonly step: number;
  /** `s3://bucket/<prefix><jobId>/step-<8 digits>/`. */
  readonly uri: string;
  /** The tensors of `model.safetensors`. */
  readonly tensors: Record<string, NamedTensor>;
  /** The whole `state.json` (`jobId`, `step`, `createdAt` and the caller's fields). */
  readonly state: Record<string, unknown>;
}

interface S3Prefix {
  readonly bucket: string;
  /** Key prefix, empty or ending in '/'. */
  readonly key: string;
}

const STEP_DIGITS = 8;
const STEP_PREFIX = /^step-(\d+)\/$/;

function parsePrefixUri(uri: string): S3Prefix {
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/s.exec(uri);
  if (match === null || match[1] === undefined) {
    throw new CheckpointError(`checkpoint URI ${JSON.stringify(uri)} must look like s3://bucket/prefix/`);
  }
  const key = match[2] ?? '';
  if (key.startsWith('/')) throw new CheckpointError(`checkpoint URI ${JSON.stringify(uri)} has an empty path segment after the bucket`);
  return { bucket: match[1], key: key === '' || key.endsWith('/') ? key : `${key}/` };
}

function checkJobId(jobId: string): void {
  if (jobId === '' || jobId.includes('/')) throw new CheckpointError(`job id ${JSON.stringify(jobId)} must be non-empty and contain no '/'`);
}

function checkStep(step: number): void {
  if (!Number.isSafeInteger(step) || step < 0) throw new CheckpointError(`step must be a non-negative integer, got ${step}`);
}

/** `step-00000012/`: zero-padded so keys sort in step order. */
function stepDirectory(step: number): string {
  return `step-${String(step).padStart(STEP_DIGITS, '0')}/`;
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function isNoSuchKey(error: unknown): boolean {
  const name = error instanceof Error ? error.name : undefined;
  return name === 'NoSuchKey' || name === 'NotFound' || httpStatusOf(error) === 404;
}

async function putObject(s3: S3Client, bucket: string, key: string, body: Uint8Array, contentType: string): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType, ContentLength: body.length }));
}

/** The object's bytes, or `undefined` when it does not exist. */
async function getObject(s3: S3Client, bucket: string, key: string): Promise<Uint8Array | undefined> {
  try {
    const response = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (response.Body === undefined) throw new CheckpointError(`s3://${bucket}/${key}: the response has no body`);
    return await response.Body.transformToByteArray();
  } catch (error) {
    if (isNoSuchKey(error)) return undefined;
    throw error;
  }
}

function parseJson(bytes: Uint8Array, where: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new CheckpointError(`${where} is not UTF-8 JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseManifest(value: unknown, where: string): CheckpointManifest {
  if (!isRecord(value) || !Number.isSafeInteger(value.step) || !Array.isArray(value.files)) {
    throw new CheckpointError(`${where} must be {step, files:[{key, bytes, sha256}]}`);
  }
  const files = value.files.map((file: unknown, i): CheckpointFile => {
    if (
      !isRecord(file) ||
      typeof file.key !== 'string' ||
      !Number.isSafeInteger(file.bytes) ||
      typeof file.sha256 !== 'string' ||
      !/^[0-9a-f]{64}$/.test(file.sha256)
    ) {
      throw new CheckpointError(`${where}: files[${i}] must be {key, bytes, sha256 (64 lowercase hex digits)}`);
    }
    return { key: file.key, bytes: file.bytes as number, sha256: file.sha256 };
  });
  return { step: value.step as number, files };
}

/**
 * Writes one checkpoint of `jobId` at `step` under `prefixUri` (the job spec's
 * `checkpoint.uri`, `s3://bucket/prefix/`): `model.safetensors` (the `tensors`, with
 * `jobId` and `step` as safetensors metadata), `state.json` (`{jobId, step, …state,
 * createdAt}`; `createdAt` defaults to now), `manifest.json` last, then `latest.json`
 * (both left out with `options.commit` false). Rewriting a step replaces it.
 *
 * @returns the step prefix, `s3://bucket/prefix/<jobId>/step-<8 digits>/`.
 * @throws CheckpointError for a bad URI, job id or step; the SDK's error when S3 fails
 *   (then no manifest was written unless only `latest.json` failed).
 */
export async function writeCheckpoint(
  s3: S3Client,
  prefixUri: string,
  jobId: string,
  step: number,
  tensors: Readonly<Record<string, NamedTensor>>,
  state: Readonly<Record<string, unknown>>,
  options: WriteCheckpointOptions = {},
): Promise<string> {
  const prefix = parsePrefixUri(prefixUri);
  checkJobId(jobId);
  checkStep(step);
  const jobKey = `${prefix.key}${jobId}/`;
  const stepKey = `${jobKey}${stepDirectory(step)}`;
  const uri = `s3://${prefix.bucket}/${stepKey}`;

  let model: Uint8Array;
  try {
    model = encodeSafetensors(tensors, { jobId, step: String(step) });
  } catch (err) {
    if (err instanceof SafetensorsError) throw new CheckpointError(`checkpoint ${uri}: ${err.message}`, { cause: err });
    throw err;
  }
  // jobId and step are the checkpoint's own; a caller's fields of the same name do not win.
  const stateDocument: Record<string, unknown> = { jobId, step, ...state, createdAt: state.createdAt ?? new Date().toISOString() };
  stateDocument.jobId = jobId;
  stateDocument.step = step;
  const stateBytes = new TextEncoder().encode(`${JSON.stringify(stateDocument, null, 2)}\n`);

  const files: CheckpointFile[] = [];
  for (const [key, body, contentType] of [
    [CHECKPOINT_MODEL_FILE, model, 'application/octet-stream'],
    [CHECKPOINT_STATE_FILE, stateBytes, 'application/json'],
  ] as const) {
    await putObject(s3, prefix.bucket, `${stepKey}${key}`, body, contentType);
    const file = { key, bytes: body.length, sha256: sha256Hex(body) };
    files.push(file);
    options.onFileWritten?.(file);
  }
  if (options.commit === false) return uri;
  const manifest: CheckpointManifest = { step, files };
  await putObject(s3, prefix.bucket, `${stepKey}${CHECKPOINT_MANIFEST_FILE}`, new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`), 'application/json');
  await putObject(s3, prefix.bucket, `${jobKey}${CHECKPOINT_LATEST_FILE}`, new TextEncoder().encode(`${JSON.stringify({ step, prefix: uri })}\n`), 'application/json');
  return uri;
}

/** Steps of the job's step prefixes, newest first (complete or not). */
async function listSteps(s3: S3Client, bucket: string, jobKey: string): Promise<number[]> {
  const steps: number[] = [];
  let continuationToken: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({
        Bucket: bucket,
        Prefix: `${jobKey}step-`,
        Delimiter: '/',
        ...(continuationToken !== undefined && { ContinuationToken: continuationToken }),
      }),
    );
    for (const common of page.CommonPrefixes ?? []) {
      const match = STEP_PREFIX.exec(common.Prefix?.slice(jobKey.length) ?? '');
      if (match !== null) steps.push(Number(match[1]));
    }
    continuationToken = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (continuationToken !== undefined);
  return steps.sort((a, b) => b - a);
}

/** The checkpoint at `step`, `undefined` when it has no manifest; throws when it is corrupt. */
async function loadStep(s3: S3Client, prefix: S3Prefix, jobKey: string, step: number): Promise<LoadedCheckpoint | undefined> {
  const stepKey = `${jobKey}${stepDirectory(step)}`;
  const uri = `s3://${prefix.bucket}/${stepKey}`;
  const manifestBytes = await getObject(s3, prefix.bucket, `${stepKey}${CHECKPOINT_MANIFEST_FILE}`);
  if (manifestBytes === undefined) return undefined;
  const manifest = parseManifest(parseJson(manifestBytes, `${uri}${CHECKPOINT_MANIFEST_FILE}`), `${uri}${CHECKPOINT_MANIFEST_FILE}`);
  if (manifest.step !== step) throw new CheckpointError(`${uri}${CHECKPOINT_MANIFEST_FILE} says step ${manifest.step}, its prefix says ${step}`);

  const contents = new Map<string, Uint8Array>();
  for (const file of manifest.files) {
    const where = `${uri}${file.key}`;
    const bytes = await getObject(s3, prefix.bucket, `${stepKey}${file.key}`);
    if (bytes === undefined) throw new CheckpointError(`${where} is listed in the manifest but does not exist`);
    if (bytes.length !== file.bytes) throw new CheckpointError(`${where} has ${bytes.length} bytes, the manifest says ${file.bytes}`);
    const sha256 = sha256Hex(bytes);
    if (sha256 !== file.sha256) throw new CheckpointError(`${where} has SHA-256 ${sha256}, the manifest says ${file.sha256}`);
    contents.set(file.key, bytes);
  }
  const model = contents.get(CHECKPOINT_MODEL_FILE);
  const stateBytes = contents.get(CHECKPOINT_STATE_FILE);
  if (model === undefined || stateBytes === undefined) {
    throw new CheckpointError(`${uri}${CHECKPOINT_MANIFEST_FILE} must list ${CHECKPOINT_MODEL_FILE} and ${CHECKPOINT_STATE_FILE}`);
  }
  let tensors: Record<string, NamedTensor>;
  try {
    tensors = decodeSafetensors(model).tensors;
  } catch (err) {
    if (err instanceof SafetensorsError) throw new CheckpointError(`${uri}${CHECKPOINT_MODEL_FILE}: ${err.message}`, { cause: err });
    throw err;
  }
  const state = parseJson(stateBytes, `${uri}${CHECKPOINT_STATE_FILE}`);
  if (!isRecord(state)) throw new CheckpointError(`${uri}${CHECKPOINT_STATE_FILE} must hold a JSON object`);
  return { step, uri, tensors, state };
}

/**
 * Reads the checkpoint of `jobId` at `step`, or its newest complete one when `step` is
 * omitted (the highest step prefix with a `manifest.json`; `latest.json` is for other
 * tools and is not trusted over the listing). Every file's size and SHA-256 are checked
 * against the manifest.
 *
 * @returns the checkpoint, or `null` when there is none (or none complete at `step`).
 * @throws CheckpointError when the checkpoint found is corrupt; the SDK's error when S3 fails.
 */
export async function readCheckpoint(s3: S3Client, prefixUri: string, jobId: string, step?: number): Promise<LoadedCheckpoint | null> {
  const prefix = parsePrefixUri(prefixUri);
  checkJobId(jobId);
  const jobKey = `${prefix.key}${jobId}/`;
  if (step !== undefined) {
    checkStep(step);
    return (await loadStep(s3, prefix, jobKey, step)) ?? null;
  }
  for (const candidate of await listSteps(s3, prefix.bucket, jobKey)) {
    const loaded = await loadStep(s3, prefix, jobKey, candidate);
    if (loaded !== undefined) return loaded;
  }
  return null;
}
