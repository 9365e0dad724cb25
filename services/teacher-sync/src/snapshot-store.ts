/**
 * Teacher snapshots (docs/cluster.md, "teacher-sync"): the latest few per job in memory,
 * and a copy at `<store_uri>teacher/step-<8 digits>.safetensors` when the uploader names a
 * `store_uri`. Every rank attests the SHA-256 of its own encoding of the teacher at a
 * snapshot step; once the snapshot and all of a generation's attestations are in, the
 * snapshot is verified (every hash equals its own) or rejected (dropped, and its step
 * answered with the mismatch from then on).
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { InvalidArgumentError } from '@dinofleet/proto';

/** Snapshots kept in memory per job by default (docs/cluster.md). */
export const DEFAULT_KEPT_SNAPSHOTS = 2;

/**
 * Steps per job whose attestations (and rejections) are kept, at least the kept snapshots;
 * past it the oldest step's are dropped, so a runaway client cannot grow the store.
 */
export const MAX_ATTESTED_STEPS_PER_JOB = 16;

/** Hex digits of a SHA-256 shown in logs and error messages. */
const HASH_PREFIX_CHARS = 8;

/** One verified teacher snapshot. */
export interface TeacherSnapshot {
  /** Job id. */
  readonly jobId: string;
  /** Generation of the rank that produced it. */
  readonly generation: number;
  /** Step after which it was taken. */
  readonly step: number;
  /** Encoding, e.g. `safetensors`. */
  readonly format: string;
  /** Where it was also written (`s3://bucket/prefix/`), or `''`. */
  readonly storeUri: string;
  /** SHA-256 of `bytes` (32 bytes). */
  readonly sha256: Buffer;
  /** The snapshot. */
  readonly bytes: Buffer;
}

/** A parsed `s3://bucket/prefix/` store URI. */
export interface StoreLocation {
  /** Bucket name. */
  readonly bucket: string;
  /** Key prefix, empty or ending in `/`. */
  readonly prefix: string;
}

/**
 * Parses a snapshot header's `store_uri`; a missing trailing `/` is added.
 * @throws InvalidArgumentError naming the URI when it is not `s3://bucket[/prefix/]`.
 */
export function parseStoreUri(uri: string): StoreLocation {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/s.exec(uri);
  if (match === null || match[1] === undefined || (match[2] ?? '').startsWith('/')) {
    throw new InvalidArgumentError(`store_uri ${JSON.stringify(uri)} must look like s3://bucket/prefix/ (or be empty to keep the snapshot in memory only)`);
  }
  const prefix = match[2] ?? '';
  return { bucket: match[1], prefix: prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/` };
}

/** The object key a snapshot of `step` is written to under `location`. */
export function snapshotObjectKey(location: StoreLocation, step: number): string {
  return `${location.prefix}teacher/step-${String(step).padStart(8, '0')}.safetensors`;
}

/** Writes `snapshot` to S3 under its `storeUri`; resolves with the `s3://` URI of the object. */
export async function storeSnapshot(s3: S3Client, snapshot: TeacherSnapshot): Promise<string> {
  const location = parseStoreUri(snapshot.storeUri);
  const key = snapshotObjectKey(location, snapshot.step);
  await s3.send(
    new PutObjectCommand({
      Bucket: location.bucket,
      Key: key,
      Body: snapshot.bytes,
      ContentLength: snapshot.bytes.length,
      ContentType: 'application/octet-stream',
      Metadata: { 'job-id': snapshot.jobId, generation: String(snapshot.generation), step: String(snapshot.step), sha256: snapshot.sha256.toString('hex') },
    }),
  );
  return `s3://${location.bucket}/${key}`;
}

/** One rank's SHA-256 of its encoded teacher snapshot at a step (AttestTeacher). */
export interface TeacherAttestation {
  /** Job id. */
  readonly jobId: string;
  /** Generation of the rank. */
  readonly generation: number;
  /** Step of the snapshot, ≥ 1. */
  readonly step: number;
  /** The sender's rank, < worldSize. */
  readonly rank: number;
  /** Ranks of the generation, ≥ 1. */
  readonly worldSize: number;
  /** SHA-256 of the rank's encoded snapshot (32 bytes). */
  readonly sha256: Buffer;
}

/** A kept snapshot and whether the ranks' attestations verified it. */
export interface KeptSnapshot {
  readonly snapshot: TeacherSnapshot;
  /** True once every rank of a generation attested the snapshot's SHA-256. */
  readonly verified: boolean;
}

/** The verdict on a snapshot, reported once when it is reached. */
export interface SnapshotCheck {
  readonly jobId: string;
  readonly step: number;
  /** True: verified. False: rejected, and no longer served. */
  readonly verified: boolean;
  /** Generation whose attestations decided. */
  readonly generation: number;
  /** The snapshot's hash and each rank's, e.g. `snapshot 3fa2…; generation 1 rank 0: 3fa2…, rank 1: 9b01…`. */
  readonly hashes: string;
}

/** What an attestation did. */
export interface AttestResult {
  /** Distinct ranks of the generation that attested the step; 0 when the attestation was ignored. */
  readonly ranksAttested: number;
  /** Whether the kept snapshot of the step is verified. */
  readonly verified: boolean;
  /** The verdict this attestation completed, if it completed one. */
  readonly check?: SnapshotCheck;
  /** The generation already attesting the step, when this (older) attestation was ignored. */
  readonly ignoredFor?: number;
}

interface AttestationGroup {
  readonly generation: number;
  readonly worldSize: number;
  readonly hashes: Map<number, Buffer>;
}

interface KeptEntry {
  readonly snapshot: TeacherSnapshot;
  verified: boolean;
}

interface JobSnapshots {
  /** Snapshots not rejected, ascending by step. */
  kept: KeptEntry[];
  /** Attestations of the latest generation that attested each step. */
  readonly attestations: Map<number, AttestationGroup>;
  /** Steps whose snapshot was rejected, and the hashes that rejected it. */
  readonly rejected: Map<number, string>;
}

function hashPrefix(sha256: Buffer): string {
  return `${sha256.toString('hex').slice(0, HASH_PREFIX_CHARS)}…`;
}

/** `generation 1 ranks 0, 2: 3fa2…, rank 1: 9b01…`: ranks grouped by the hash they attested. */
function describeAttestations(group: AttestationGroup): string {
  const ranksByHash = new Map<string, number[]>();
  for (const [rank, sha256] of [...group.hashes].sort(([a], [b]) => a - b)) {
    const prefix = hashPrefix(sha256);
    ranksByHash.set(prefix, [...(ranksByHash.get(prefix) ?? []), rank]);
  }
  const parts = [...ranksByHash].map(([prefix, ranks]) => `${ranks.length === 1 ? 'rank' : 'ranks'} ${ranks.join(', ')}: ${prefix}`);
  return `generation ${group.generation} ${parts.join(', ')}`;
}

/** Drops the smallest keys of `map` until it holds at most `max`. */
function dropOldestSteps(map: Map<number, unknown>, max: number): void {
  if (map.size <= max) return;
  const steps = [...map.keys()].sort((a, b) => a - b);
  for (const step of steps.slice(0, map.size - max)) map.delete(step);
}

/** The latest snapshots of every job, in memory, with the ranks' attestations of them. */
export class SnapshotStore {
  readonly #byJob = new Map<string, JobSnapshots>();
  readonly #kept: number;
  readonly #attestedSteps: number;

  constructor(keptPerJob: number = DEFAULT_KEPT_SNAPSHOTS) {
    if (!Number.isSafeInteger(keptPerJob) || keptPerJob < 1) throw new InvalidArgumentError(`keptSnapshots must be an integer ≥ 1, got ${keptPerJob}`);
    this.#kept = keptPerJob;
    this.#attestedSteps = Math.max(MAX_ATTESTED_STEPS_PER_JOB, keptPerJob);
  }

  #job(jobId: string): JobSnapshots {
    let job = this.#byJob.get(jobId);
    if (job === undefined) {
      job = { kept: [], attestations: new Map(), rejected: new Map() };
      this.#byJob.set(jobId, job);
    }
    return job;
  }

  /**
   * Keeps `snapshot` (unverified), replacing one of the same step (and forgetting a
   * rejection of that step), dropping the oldest steps past the limit. Returns the verdict
   * when every rank's attestation of the step is already in.
   */
  put(snapshot: TeacherSnapshot): SnapshotCheck | undefined {
    const job = this.#job(snapshot.jobId);
    job.rejected.delete(snapshot.step);
    const kept = job.kept.filter((e) => e.snapshot.step !== snapshot.step);
    kept.push({ snapshot, verified: false });
    kept.sort((a, b) => a.snapshot.step - b.snapshot.step);
    job.kept = kept.slice(-this.#kept);
    return this.#check(job, snapshot.step);
  }

  /**
   * Records one rank's attestation. An attestation of a later generation than the step's
   * replaces that generation's (the step was run again); one of an earlier generation is
   * ignored. Returns the verdict when this attestation completed the step's set and the
   * snapshot is kept.
   *
   * @throws InvalidArgumentError when `worldSize` differs from the generation's earlier
   *   attestations of the step, or the rank already attested another hash.
   */
  attest(attestation: TeacherAttestation): AttestResult {
    const { step, rank, generation, worldSize, sha256 } = attestation;
    const job = this.#job(attestation.jobId);
    const verified = (): boolean => job.kept.find((e) => e.snapshot.step === step)?.verified === true;
    let group = job.attestations.get(step);
    if (group !== undefined && generation < group.generation) {
      return { ranksAttested: 0, verified: verified(), ignoredFor: group.generation };
    }
    if (group !== undefined && generation === group.generation) {
      const where = `attestation of job ${attestation.jobId} step ${step} generation ${generation} rank ${rank}`;
      if (worldSize !== group.worldSize) {
        throw new InvalidArgumentError(`${where}: world_size ${worldSize} differs from ${group.worldSize} in the generation's earlier attestations of the step`);
      }
      const earlier = group.hashes.get(rank);
      if (earlier !== undefined && !earlier.equals(sha256)) {
        throw new InvalidArgumentError(`${where}: the rank already attested SHA-256 ${hashPrefix(earlier)}, now ${hashPrefix(sha256)}; a rank attests one hash per step`);
      }
    } else {
      group = { generation, worldSize, hashes: new Map() };
      job.attestations.set(step, group);
      dropOldestSteps(job.attestations, this.#attestedSteps);
    }
    const wasComplete = group.hashes.size === group.worldSize;
    group.hashes.set(rank, Buffer.from(sha256));
    const check = wasComplete ? undefined : this.#check(job, step);
    return { ranksAttested: group.hashes.size, verified: verified(), ...(check !== undefined && { check }) };
  }

  /**
   * Decides on the snapshot of `step` once it and all of a generation's attestations are
   * in. Verified when every rank attested the snapshot's own hash; otherwise rejected:
   * ranks that disagree with each other leave no way to tell which teacher is right, and
   * ranks that agree on another hash mean the uploaded bytes are not their teacher.
   */
  #check(job: JobSnapshots, step: number): SnapshotCheck | undefined {
    const group = job.attestations.get(step);
    const entry = job.kept.find((e) => e.snapshot.step === step);
    if (group === undefined || entry === undefined || group.hashes.size < group.worldSize) return undefined;
    const { snapshot } = entry;
    const matches = [...group.hashes.values()].every((sha256) => sha256.equals(snapshot.sha256));
    // A snapshot verified before stays so when another generation attests it again alike.
    if (matches && entry.verified) return undefined;
    const hashes = `snapshot ${hashPrefix(snapshot.sha256)}; ${describeAttestations(group)}`;
    const check = { jobId: snapshot.jobId, step, verified: matches, generation: group.generation, hashes };
    if (matches) {
      entry.verified = true;
    } else {
      job.kept = job.kept.filter((e) => e !== entry);
      job.rejected.set(step, hashes);
      dropOldestSteps(job.rejected, this.#attestedSteps);
    }
    return check;
  }

  /** The snapshot of `step`, or the latest one not rejected when `step` is 0; `undefined` when not kept. */
  get(jobId: string, step: number): KeptSnapshot | undefined {
    const kept = this.#byJob.get(jobId)?.kept ?? [];
    return step === 0 ? kept.at(-1) : kept.find((e) => e.snapshot.step === step);
  }

  /** Why the snapshot of `step` was rejected (the snapshot's and the ranks' hashes), or `undefined`. */
  rejection(jobId: string, step: number): string | undefined {
    return this.#byJob.get(jobId)?.rejected.get(step);
  }

  /** Steps kept for `jobId` (rejected ones not among them), ascending. */
  steps(jobId: string): number[] {
    return (this.#byJob.get(jobId)?.kept ?? []).map((e) => e.snapshot.step);
  }
}
