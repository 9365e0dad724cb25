/**
 * `s3://bucket/key` URIs as the job spec accepts them: the manifest is an object
 * (`s3://bucket/path/manifest.txt`), checkpoints go under a prefix (`s3://bucket/ckpt/`).
 * Bucket names follow the AWS rules for general-purpose buckets, which MinIO and the other
 * S3 endpoints dinofleet runs against also enforce.
 */

/** A parsed `s3://bucket/key` URI. */
export interface S3Location {
  /** Bucket name, 3–63 characters. */
  readonly bucket: string;
  /** Object key or prefix, without the leading `/`; empty for the bucket root. */
  readonly key: string;
}

/** Whether a URI names one object or a prefix under which objects are written. */
export type S3UriKind = 'object' | 'prefix';

/** Longest object key S3 accepts, in UTF-8 bytes. */
export const S3_MAX_KEY_BYTES = 1024;

const S3_SCHEME = 's3://';
const BUCKET_CHARS = /^[a-z0-9.-]+$/;
const ALNUM_EDGES = /^[a-z0-9](.*[a-z0-9])?$/s;
const IPV4_LIKE = /^\d+\.\d+\.\d+\.\d+$/;
// C0 controls and DEL: legal in S3 keys but never intended in a job spec, and they make
// logs and error messages lie about what was written.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** Why `bucket` is not a valid bucket name, or `undefined` if it is. */
function bucketProblem(bucket: string): string | undefined {
  if (bucket.length === 0) return 'the bucket name is missing';
  if (bucket.length < 3 || bucket.length > 63) return `the bucket name must be 3-63 characters, not ${bucket.length}`;
  if (!BUCKET_CHARS.test(bucket)) return "the bucket name may hold only lowercase letters, digits, '.' and '-'";
  if (!ALNUM_EDGES.test(bucket)) return 'the bucket name must start and end with a lowercase letter or digit';
  if (bucket.includes('..')) return "the bucket name must not contain '..'";
  if (IPV4_LIKE.test(bucket)) return 'the bucket name must not look like an IP address';
  return undefined;
}

/**
 * Why `uri` is not an acceptable S3 URI of the given kind, or `undefined` if it is.
 * An `object` URI needs a key that does not end in `/`; a `prefix` URI may name the
 * bucket root.
 */
export function s3UriProblem(uri: string, kind: S3UriKind): string | undefined {
  if (!uri.startsWith(S3_SCHEME)) return `it must start with ${S3_SCHEME}`;
  const rest = uri.slice(S3_SCHEME.length);
  const slash = rest.indexOf('/');
  const bucket = slash === -1 ? rest : rest.slice(0, slash);
  const key = slash === -1 ? '' : rest.slice(slash + 1);
  const problem = bucketProblem(bucket);
  if (problem !== undefined) return problem;
  if (Buffer.byteLength(key, 'utf8') > S3_MAX_KEY_BYTES) return `the key must be at most ${S3_MAX_KEY_BYTES} bytes`;
  if (CONTROL_CHARS.test(key)) return 'the key must not contain control characters';
  if (key.startsWith('/')) return "the key must not start with '/' (s3://bucket//key)";
  if (kind === 'object') {
    if (key.length === 0) return 'it names a bucket, not an object (s3://bucket/path/to/object)';
    if (key.endsWith('/')) return "it names a prefix (ends in '/'), not an object";
  }
  return undefined;
}

/** Splits a valid S3 URI into bucket and key; throws `TypeError` naming the problem otherwise. */
export function parseS3Uri(uri: string, kind: S3UriKind = 'object'): S3Location {
  const problem = s3UriProblem(uri, kind);
  if (problem !== undefined) throw new TypeError(`invalid S3 URI ${JSON.stringify(uri)}: ${problem}`);
  const rest = uri.slice(S3_SCHEME.length);
  const slash = rest.indexOf('/');
  return slash === -1 ? { bucket: rest, key: '' } : { bucket: rest.slice(0, slash), key: rest.slice(slash + 1) };
}

/** A prefix URI with exactly one trailing `/`, so keys can be appended to it. */
export function normalizeS3Prefix(uri: string): string {
  return uri.endsWith('/') ? uri : `${uri}/`;
}
