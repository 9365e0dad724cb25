// Shared by the failure tests: an elastic job spec, the sample ledger check, and waiting
// for commits of a given shape.
import { parseS3Uri } from '@dinofleet/config';
import { verifySampleLedger } from '@dinofleet/coordinator';
import { createS3Client, listManifestOffsets, resolveS3Config } from '@dinofleet/data';
import type { LocalFleet } from '@dinofleet/local';
import { callUnary, type Job, type JobServiceClient } from '@dinofleet/proto';
import { Redis } from 'ioredis';
import { waitForJob } from './cluster.ts';

/**
 * A `dino` job in verification mode (sample ledger on) whose `steps` cover a bit more than
 * one epoch: epochs overlap at their boundary by up to one lease per rank, so epoch 0 is
 * whole only a few leases after its last record was handed out. Small shards keep that short.
 */
export function elasticJobSpec(
  manifestUri: string,
  o: {
    name: string;
    workers: number;
    minWorkers?: number;
    maxWorkers?: number;
    steps: number;
    shards: number;
    globalBatchSize?: number;
    checkpoint?: { uri: string; everySteps: number };
    fault?: { maxNonFiniteSteps?: number; maxFailedGenerations?: number };
  },
): Record<string, unknown> {
  return {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: o.name },
    spec: {
      recipe: { preset: 'dino', overrides: { crops: { nLocal: 1 } } },
      data: { manifest: manifestUri, recordSamples: true, shards: o.shards },
      training: { steps: o.steps, globalBatchSize: o.globalBatchSize ?? 8, seed: 3 },
      fleet: { workers: o.workers, minWorkers: o.minWorkers ?? 1, maxWorkers: o.maxWorkers ?? Math.max(o.workers, 4) },
      ...(o.checkpoint !== undefined && { checkpoint: o.checkpoint }),
      ...(o.fault !== undefined && { fault: o.fault }),
    },
  };
}

/** Submits a spec and returns the job id. */
export async function submitJob(client: JobServiceClient, spec: Record<string, unknown>): Promise<string> {
  return (await callUnary(client, 'submitJob', { spec: JSON.stringify(spec), idempotencyKey: '' }, { deadlineMs: 30_000 })).jobId;
}

/** The job once a step after `afterStep` committed (or it ended). */
export function waitForStep(client: JobServiceClient, jobId: string, afterStep: number, timeoutMs = 120_000): Promise<Job> {
  return waitForJob(client, jobId, (j) => j.committedStep > afterStep || j.finishedAtUnixMs > 0, timeoutMs);
}

/** The sample ledger of a finished job checked against every record of its manifest. */
export async function checkLedger(
  fleet: LocalFleet,
  jobId: string,
  manifestUri: string,
): Promise<{ lost: number; duplicated: number; epochsComplete: number; samplesCommitted: number }> {
  const s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
  const redis = new Redis(fleet.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 3 });
  try {
    const { bucket, key } = parseS3Uri(manifestUri);
    const offsets = await listManifestOffsets(s3, bucket, key);
    await redis.connect();
    return await verifySampleLedger(redis, 'dinofleet', jobId, offsets);
  } finally {
    redis.disconnect();
    s3.destroy();
  }
}
