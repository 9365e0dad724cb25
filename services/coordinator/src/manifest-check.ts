/**
 * Checking that a job's manifest exists before the job is accepted (docs/cluster.md
 * "Job lifecycle": missing → NOT_FOUND, S3 unreachable → UNAVAILABLE).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { statManifest } from '@dinofleet/data';
import type { ManifestObject } from '@dinofleet/data';
import { NotFoundError, UnavailableError } from '@dinofleet/proto';

/** The message for a manifest that does not exist. */
export function manifestMissingMessage(bucket: string, key: string): string {
  return `manifest s3://${bucket}/${key} does not exist: upload it or fix spec.data.manifest`;
}

/** True when an S3 error says the object (or its bucket) is not there. */
export function isManifestMissing(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'NotFound' || e.name === 'NoSuchKey' || e.name === 'NoSuchBucket' || e.$metadata?.httpStatusCode === 404;
}

/** HeadObject on the manifest, as NOT_FOUND / UNAVAILABLE errors for the client. */
export async function checkManifest(s3: S3Client, bucket: string, key: string): Promise<ManifestObject> {
  try {
    return await statManifest(s3, bucket, key);
  } catch (err) {
    if (isManifestMissing(err)) throw new NotFoundError(manifestMissingMessage(bucket, key), { cause: err });
    const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
    const why = err instanceof Error ? err.message : String(err);
    throw new UnavailableError(
      `cannot check the manifest s3://${bucket}/${key}${status === undefined ? '' : ` (HTTP ${status})`}: ${why}; check the S3 endpoint and credentials, then retry`,
      { cause: err },
    );
  }
}
