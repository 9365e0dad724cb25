/**
 * Teacher snapshots (docs/cluster.md, "teacher-sync"): the latest few per job in memory,
 * and a copy at `<store_uri>teacher/step-<8 digits>.safetensors` when the uploader names a
 * `store_uri`.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { InvalidArgumentError } from '@dinofleet/proto';

/** Snapshots kept in memory per job by default (docs/cluster.md). */
export const DEFAULT_KEPT_SNAPSHOTS = 2;

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

/** The latest snapshots of every job, in memory. */
export class SnapshotStore {
  readonly #byJob = new Map<string, TeacherSnapshot[]>();
  readonly #kept: number;

  constructor(keptPerJob: number = DEFAULT_KEPT_SNAPSHOTS) {
    if (!Number.isSafeInteger(keptPerJob) || keptPerJob < 1) throw new InvalidArgumentError(`keptSnapshots must be an integer ≥ 1, got ${keptPerJob}`);
    this.#kept = keptPerJob;
  }

  /** Keeps `snapshot`, replacing one of the same step, dropping the oldest steps past the limit. */
  put(snapshot: TeacherSnapshot): void {
    const kept = (this.#byJob.get(snapshot.jobId) ?? []).filter((s) => s.step !== snapshot.step);
    kept.push(snapshot);
    kept.sort((a, b) => a.step - b.step);
    this.#byJob.set(snapshot.jobId, kept.slice(-this.#kept));
  }

  /** The snapshot of `step`, or the latest when `step` is 0; `undefined` when not kept. */
  get(jobId: string, step: number): TeacherSnapshot | undefined {
    const kept = this.#byJob.get(jobId) ?? [];
    return step === 0 ? kept.at(-1) : kept.find((s) => s.step === step);
  }

  /** Steps kept for `jobId`, ascending. */
  steps(jobId: string): number[] {
    return (this.#byJob.get(jobId) ?? []).map((s) => s.step);
  }
}
