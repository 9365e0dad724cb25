/**
 * The arithmetic of docs/cluster.md "Shards and steps": how many shards, in which order
 * an epoch hands them out, how many steps an epoch-measured job runs, and how the global
 * batch splits over the ranks.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { JobSpec } from '@dinofleet/config';
import { getObjectRange, manifestSplitCount, planManifestSplits } from '@dinofleet/data';
import { Rng } from '@dinofleet/dino';
import type { PlannedShard } from './job-store.ts';

/** Bytes of manifest per shard when the spec does not fix the count (1 MiB). */
export const SHARD_TARGET_BYTES = 1024 * 1024;
/** Prefix of the manifest read to estimate the mean record length (1 MiB). */
export const RECORD_SAMPLE_BYTES = 1024 * 1024;

/** Shards a manifest of `sizeBytes` is split into for `workers` workers. */
export function shardCount(spec: JobSpec, sizeBytes: number, workers: number): number {
  if (spec.spec.data.shards !== null) return spec.spec.data.shards;
  return Math.max(4 * workers, Math.ceil(sizeBytes / SHARD_TARGET_BYTES));
}

/** Record-aligned byte ranges of the manifest (planned from its size alone). */
export function planShards(sizeBytes: number, count: number): PlannedShard[] {
  manifestSplitCount({ sizeBytes, splitCount: count });
  return planManifestSplits({ sizeBytes, splitCount: count }).map((split) => ({ begin: split.start, end: split.end }));
}

/** Shard indices of epoch `epoch` in hand-out order: `Rng(seed ^ (epoch+1)·0x9e3779b1)` shuffle. */
export function epochShardOrder(seed: number, epoch: number, shards: number): number[] {
  const rng = new Rng((seed ^ Math.imul(epoch + 1, 0x9e3779b1)) >>> 0);
  return rng.shuffle(Array.from({ length: shards }, (_, i) => i));
}

/** Images rank `rank` of `worldSize` processes per step out of a global batch `globalBatch`. */
export function perRankBatch(globalBatch: number, worldSize: number, rank: number): number {
  return Math.floor(globalBatch / worldSize) + (rank < globalBatch % worldSize ? 1 : 0);
}

/** Mean record length in `bytes` (a prefix of the manifest), counting whole lines only. */
export function meanRecordBytes(bytes: Uint8Array): number {
  let lines = 0;
  let lastNewline = -1;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x0a) {
      lines++;
      lastNewline = i;
    }
  }
  if (lines === 0) return Math.max(1, bytes.length);
  return (lastNewline + 1) / lines;
}

/**
 * `total_steps` of a job: `spec.training.steps`, or for epochs
 * `ceil(epochs × estimatedRecords / globalBatchSize)` with the record count estimated from
 * the mean record length in the manifest's first MiB.
 */
export async function totalStepsOf(
  spec: JobSpec,
  manifest: { s3: S3Client; bucket: string; key: string; sizeBytes: number; etag?: string },
): Promise<number> {
  const { training } = spec.spec;
  if (training.steps !== null) return training.steps;
  if (manifest.sizeBytes === 0) return 0;
  const end = Math.min(manifest.sizeBytes, RECORD_SAMPLE_BYTES);
  const { bytes } = await getObjectRange(manifest.s3, manifest.bucket, manifest.key, 0, end, manifest.etag === undefined ? {} : { etag: manifest.etag });
  const estimatedRecords = manifest.sizeBytes / meanRecordBytes(bytes);
  return Math.max(1, Math.ceil((training.epochs * estimatedRecords) / training.globalBatchSize));
}
