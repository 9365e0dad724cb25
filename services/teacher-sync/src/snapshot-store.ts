/**
 * Teacher snapshots (docs/cluster.md, "teacher-sync"): the latest few per job in memory,
 * and a copy at `<store_uri>teacher/step-<8 digits>.safetensors` when the uploader names a
 * `store_uri`; with nothing in memory (a restart, every kept one rejected) the copies
 * under the job's last known `store_uri` are read back. Every rank attests the SHA-256 of its own encoding of the teacher at a
 * snapshot step; once the snapshot and all of a generation's attestations are in, the
 * snapshot is verified (every hash equals its own) or rejected (dropped, and its step
 * answered with the mismatch from then on).
 */
import { createHash } from 'node:crypto';

import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { DataLossError, InvalidArgumentError, ResourceExhaustedError, UnavailableError } from '@dinofleet/proto';

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

const SNAPSHOT_KEY_STEP = /teacher\/step-(\d+)\.safetensors$/;

function isNoSuchKey(err: unknown): boolean {
  const { name, $metadata } = err as { name?: unknown; $metadata?: { httpStatusCode?: number } };
  return name === 'NoSuchKey' || name === 'NotFound' || $metadata?.httpStatusCode === 404;
}

function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What {@link readStoredSnapshot} reads. */
export interface StoredSnapshotQuery {
  /** Job id (the snapshot's metadata must not name another). */
  readonly jobId: string;
  /** `s3://bucket/prefix/` the job's snapshots were written under. */
  readonly storeUri: string;
  /** The step to read; 0: the newest step not skipped. */
  readonly step: number;
  /** Steps not to serve for step 0 (rejected by the ranks' attestations). */
  readonly skip: (step: number) => boolean;
  /** Larger objects are refused, in bytes. */
  readonly maxBytes: number;
}

async function listStoredSteps(s3: S3Client, location: StoreLocation): Promise<number[]> {
  const steps: number[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: location.bucket, Prefix: `${location.prefix}teacher/step-`, ContinuationToken: token }),
    );
    for (const object of page.Contents ?? []) {
      const step = SNAPSHOT_KEY_STEP.exec(object.Key ?? '')?.[1];
      if (step !== undefined) steps.push(Number(step));
    }
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
  return steps.sort((a, b) => b - a);
}

async function readSnapshotObject(s3: S3Client, location: StoreLocation, query: StoredSnapshotQuery, step: number): Promise<TeacherSnapshot | undefined> {
  const key = snapshotObjectKey(location, step);
  const uri = `s3://${location.bucket}/${key}`;
  let object;
  try {
    object = await s3.send(new GetObjectCommand({ Bucket: location.bucket, Key: key }));
  } catch (err) {
    if (isNoSuchKey(err)) return undefined;
    throw err;
  }
  if (object.ContentLength !== undefined && object.ContentLength > query.maxBytes) {
    throw new ResourceExhaustedError(`${uri}: ${object.ContentLength} bytes exceed teacher-sync's limit of ${query.maxBytes} (--max-snapshot-bytes)`);
  }
  if (object.Body === undefined) throw new DataLossError(`${uri} has no body`);
  const bytes = Buffer.from(await object.Body.transformToByteArray());
  const sha256 = createHash('sha256').update(bytes).digest();
  const metadata = object.Metadata ?? {};
  if (metadata['job-id'] !== undefined && metadata['job-id'] !== query.jobId) {
    throw new DataLossError(`${uri} holds a teacher snapshot of job ${metadata['job-id']}, not of job ${query.jobId}`);
  }
  if (metadata.sha256 !== undefined && metadata.sha256 !== sha256.toString('hex')) {
    throw new DataLossError(`${uri}: SHA-256 of the bytes is ${sha256.toString('hex')}, the object's metadata says ${metadata.sha256}`);
  }
  const generation = Number(metadata.generation ?? 0);
  return {
    jobId: query.jobId,
    generation: Number.isSafeInteger(generation) ? generation : 0,
    step,
    format: 'safetensors',
    storeUri: query.storeUri,
    sha256,
    bytes,
  };
}

/**
 * Reads a snapshot back from where {@link storeSnapshot} wrote it: the object of `step`, or
 * with step 0 the newest `teacher/step-*.safetensors` not skipped. `undefined` when there
 * is none.
 *
 * @throws UnavailableError when S3 fails (retry), DataLossError when the object's bytes do
 *   not match its metadata.
 */
export async function readStoredSnapshot(s3: S3Client, query: StoredSnapshotQuery): Promise<TeacherSnapshot | undefined> {
  const location = parseStoreUri(query.storeUri);
  try {
    if (query.step !== 0) return await readSnapshotObject(s3, location, query, query.step);
    for (const step of await listStoredSteps(s3, location)) {
      if (query.skip(step)) continue;
      // Gone between the listing and the read: the next older one will do.
      const snapshot = await readSnapshotObject(s3, location, query, step);
      if (snapshot !== undefined) return snapshot;
    }
    return undefined;
  } catch (err) {
    if (err instanceof DataLossError || err instanceof ResourceExhaustedError) throw err;
    throw new UnavailableError(`reading the teacher snapshots under ${query.storeUri} failed (${describeError(err)}); retry`, { cause: err });
  }
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
  /** The `store_uri` of the job's latest upload that named one, or `''`. */
  storeUri: string;
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
      job = { kept: [], attestations: new Map(), rejected: new Map(), storeUri: '' };
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

  /**
   * Remembers where the job's snapshots are written, so they can be read back when none
   * is in memory. Called for every upload header that names a `store_uri`.
   */
  rememberStoreUri(jobId: string, storeUri: string): void {
    if (storeUri !== '') this.#job(jobId).storeUri = storeUri;
  }

  /** The job's last known `store_uri`, or `''`. */
  storeUri(jobId: string): string {
    return this.#byJob.get(jobId)?.storeUri ?? '';
  }

  /** True when every rank of the generation attesting `step` attested `sha256` (a snapshot read back from S3). */
  attestedAs(jobId: string, step: number, sha256: Buffer): boolean {
    const group = this.#byJob.get(jobId)?.attestations.get(step);
    return group !== undefined && group.hashes.size === group.worldSize && [...group.hashes.values()].every((h) => h.equals(sha256));
  }

  /** Steps kept for `jobId` (rejected ones not among them), ascending. */
  steps(jobId: string): number[] {
    return (this.#byJob.get(jobId)?.kept ?? []).map((e) => e.snapshot.step);
  }
}
