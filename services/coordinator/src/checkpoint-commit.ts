/**
 * The coordinator's half of a checkpoint (docs/cluster.md "Checkpoints (changes)"): rank 0
 * writes `model.safetensors` and `state.json` under the step prefix and reports them; once
 * the step committed the coordinator adds `data.json` (the data position and the lease
 * queue at that commit), then `manifest.json` listing all three, then
 * `<uri><jobId>/latest.json`. The manifest is the commit point, as in `@dinofleet/data`'s
 * `writeCheckpoint`: a prefix without one is never used. Restores read the newest
 * complete checkpoint's `data.json` here; the workers read the tensors themselves.
 */
import { createHash } from 'node:crypto';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { CHECKPOINT_LATEST_FILE, CHECKPOINT_MANIFEST_FILE } from '@dinofleet/data';
import type { CheckpointFile, CheckpointManifest } from '@dinofleet/data';
import type { LeaseData } from './shard-leases.ts';

/** The coordinator's file of a checkpoint. */
export const CHECKPOINT_DATA_FILE = 'data.json';

/** `data.json`: where the data stood when the checkpoint's step committed. */
export interface CheckpointData {
  readonly step: number;
  /** Hex state hash of the step ('' when unknown). */
  readonly stateHash: string;
  /** Newest epoch whose leases were added; epochs up to it not listed are done. */
  readonly leaseEpoch: number;
  /** Every lease not completed, at its committed cursor. */
  readonly leases: readonly (LeaseData & { readonly leaseId: string })[];
  /** Samples of the steps up to `step`. */
  readonly samplesCommitted: number;
}

/** A complete checkpoint found for a restore. */
export interface FoundCheckpoint {
  readonly step: number;
  /** The step prefix, `s3://bucket/<prefix><jobId>/step-<8 digits>/`. */
  readonly uri: string;
  readonly data: CheckpointData;
}

function splitUri(uri: string): { bucket: string; key: string } {
  const match = /^s3:\/\/([^/]+)\/?(.*)$/s.exec(uri);
  if (match === null || match[1] === undefined) throw new Error(`checkpoint URI ${JSON.stringify(uri)} must look like s3://bucket/prefix/`);
  const key = match[2] ?? '';
  return { bucket: match[1], key: key === '' || key.endsWith('/') ? key : `${key}/` };
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function jsonBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`);
}

async function put(s3: S3Client, bucket: string, key: string, body: Uint8Array): Promise<void> {
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'application/json', ContentLength: body.length }));
}

async function get(s3: S3Client, bucket: string, key: string): Promise<Uint8Array | undefined> {
  try {
    const response = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return await response.Body?.transformToByteArray();
  } catch (err) {
    const name = err instanceof Error ? err.name : '';
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) return undefined;
    throw err;
  }
}

/**
 * Completes the checkpoint at `stepUri` (rank 0's `checkpoint_uri`): `data.json`, then
 * `manifest.json` listing rank 0's `files` and `data.json`, then the job's `latest.json`.
 */
export async function completeCheckpoint(s3: S3Client, stepUri: string, files: readonly CheckpointFile[], data: CheckpointData): Promise<void> {
  const { bucket, key } = splitUri(stepUri);
  const dataBytes = jsonBytes(data);
  await put(s3, bucket, `${key}${CHECKPOINT_DATA_FILE}`, dataBytes);
  const manifest: CheckpointManifest = {
    step: data.step,
    files: [...files.filter((f) => f.key !== CHECKPOINT_DATA_FILE), { key: CHECKPOINT_DATA_FILE, bytes: dataBytes.length, sha256: sha256Hex(dataBytes) }],
  };
  await put(s3, bucket, `${key}${CHECKPOINT_MANIFEST_FILE}`, jsonBytes(manifest));
  // The job prefix is the step prefix's parent.
  const jobKey = key.replace(/[^/]+\/$/, '');
  await put(s3, bucket, `${jobKey}${CHECKPOINT_LATEST_FILE}`, new TextEncoder().encode(`${JSON.stringify({ step: data.step, prefix: `s3://${bucket}/${key}` })}\n`));
}

async function listSteps(s3: S3Client, bucket: string, jobKey: string): Promise<number[]> {
  const steps: number[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: `${jobKey}step-`, Delimiter: '/', ...(token !== undefined && { ContinuationToken: token }) }),
    );
    for (const common of page.CommonPrefixes ?? []) {
      const match = /^step-(\d+)\/$/.exec(common.Prefix?.slice(jobKey.length) ?? '');
      if (match !== null) steps.push(Number(match[1]));
    }
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return steps.sort((a, b) => b - a);
}

/**
 * The newest complete checkpoint of `jobId` under `checkpointUri` (the spec's
 * `checkpoint.uri`) at a step `<= maxStep` whose manifest lists a `data.json` that
 * matches it; undefined when there is none. Incomplete or unreadable ones are skipped.
 */
export async function findLatestCheckpoint(
  s3: S3Client,
  checkpointUri: string,
  jobId: string,
  maxStep: number,
  onSkip?: (uri: string, why: string) => void,
): Promise<FoundCheckpoint | undefined> {
  const { bucket, key } = splitUri(checkpointUri);
  const jobKey = `${key}${jobId}/`;
  for (const step of await listSteps(s3, bucket, jobKey)) {
    if (step > maxStep) continue;
    const stepKey = `${jobKey}step-${String(step).padStart(8, '0')}/`;
    const uri = `s3://${bucket}/${stepKey}`;
    try {
      const manifestBytes = await get(s3, bucket, `${stepKey}${CHECKPOINT_MANIFEST_FILE}`);
      if (manifestBytes === undefined) continue;
      const manifest = JSON.parse(new TextDecoder().decode(manifestBytes)) as CheckpointManifest;
      const listed = manifest.files.find((f) => f.key === CHECKPOINT_DATA_FILE);
      if (manifest.step !== step || listed === undefined) {
        onSkip?.(uri, `its manifest has no ${CHECKPOINT_DATA_FILE} or another step`);
        continue;
      }
      const dataBytes = await get(s3, bucket, `${stepKey}${CHECKPOINT_DATA_FILE}`);
      if (dataBytes === undefined || sha256Hex(dataBytes) !== listed.sha256) {
        onSkip?.(uri, `${CHECKPOINT_DATA_FILE} is missing or does not match the manifest`);
        continue;
      }
      const data = JSON.parse(new TextDecoder().decode(dataBytes)) as CheckpointData;
      return { step, uri, data };
    } catch (err) {
      onSkip?.(uri, err instanceof Error ? err.message : String(err));
    }
  }
  return undefined;
}
