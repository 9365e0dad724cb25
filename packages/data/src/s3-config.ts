import { S3Client } from '@aws-sdk/client-s3';

/**
 * How dinofleet reaches S3. The same fields describe AWS S3 (no endpoint, virtual-hosted
 * addressing, credentials from the SDK's default chain), MinIO and s3rver (an endpoint,
 * path-style addressing, static credentials), so nothing else changes between them.
 */

/** Caller-supplied S3 settings; every field falls back to the environment, then a default. */
export interface S3Options {
  /**
   * Endpoint URL (`http://127.0.0.1:9000`) for MinIO, s3rver or another S3-compatible
   * server. Env `DINOFLEET_S3_ENDPOINT`. @default none: AWS S3 for the region
   */
  readonly endpoint?: string;
  /** AWS region. Env `AWS_REGION`, then `AWS_DEFAULT_REGION`. @default `us-east-1` */
  readonly region?: string;
  /**
   * Static credentials. Env `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
   * `AWS_SESSION_TOKEN`). @default none: the SDK's default chain (profile, IAM role, …)
   */
  readonly credentials?: S3Credentials;
  /**
   * Path-style addressing (`endpoint/bucket/key`), which MinIO and s3rver need. Env
   * `DINOFLEET_S3_FORCE_PATH_STYLE` (`true`/`false`/`1`/`0`).
   * @default `true` when an endpoint is set, else `false`
   */
  readonly forcePathStyle?: boolean;
  /**
   * Attempts per request inside the SDK, 1–20 (1 = no SDK retry). Env
   * `DINOFLEET_S3_MAX_ATTEMPTS`. @default 3
   */
  readonly maxAttempts?: number;
  /**
   * Longest wait, milliseconds, 1–3,600,000, for a response to start and for a silent
   * socket in the middle of a body; either fails the attempt (and it is retried). Env
   * `DINOFLEET_S3_REQUEST_TIMEOUT_MS`. @default 30000
   */
  readonly requestTimeoutMs?: number;
}

/** Static S3 credentials. Never logged: use {@link describeS3Config} to print a config. */
export interface S3Credentials {
  /** Access key id. */
  readonly accessKeyId: string;
  /** Secret access key. */
  readonly secretAccessKey: string;
  /** Session token of temporary credentials. */
  readonly sessionToken?: string;
}

/** {@link S3Options} with every default applied and every field checked. */
export interface S3Config {
  /** Normalised endpoint URL, or absent for AWS S3. */
  readonly endpoint?: string;
  /** AWS region. */
  readonly region: string;
  /** Static credentials, or absent for the SDK's default chain. */
  readonly credentials?: S3Credentials;
  /** Path-style addressing. */
  readonly forcePathStyle: boolean;
  /** Attempts per request inside the SDK, 1–20. */
  readonly maxAttempts: number;
  /** Longest wait for a response to start or a silent socket mid-body, milliseconds. */
  readonly requestTimeoutMs: number;
}

/** Default attempts per request (the SDK's own default). */
export const DEFAULT_S3_MAX_ATTEMPTS = 3;
/** Default {@link S3Config.requestTimeoutMs}, milliseconds. */
export const DEFAULT_S3_REQUEST_TIMEOUT_MS = 30_000;
/** Region used when neither the options nor the environment name one. */
export const DEFAULT_S3_REGION = 'us-east-1';

const REGION_PATTERN = /^[a-z0-9-]{1,64}$/;

/** Thrown at start-up when an S3 setting is unusable; the message names the field. */
export class S3ConfigError extends Error {
  override readonly name = 'S3ConfigError';
  /** Stable code for callers that map errors. */
  readonly code = 'invalid_s3_config';
  /** The option field at fault, e.g. `endpoint`. */
  readonly field: string;

  constructor(field: string, message: string) {
    super(`invalid S3 config: ${field}: ${message}`);
    this.field = field;
  }
}

// Userinfo in an endpoint URL is a credential; it must never reach a log or an error.
function redactUrl(text: string): string {
  return text.replace(/\/\/[^/@]*@/, '//***@');
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function resolveEndpoint(value: string | undefined, source: string): string | undefined {
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new S3ConfigError(source, `must be an http(s) URL such as http://127.0.0.1:9000, got ${JSON.stringify(redactUrl(value))}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new S3ConfigError(source, `must use http or https, got ${JSON.stringify(url.protocol)}`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new S3ConfigError(source, 'must not carry credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead');
  }
  if (url.search !== '' || url.hash !== '') {
    throw new S3ConfigError(source, 'must not have a query or fragment');
  }
  // `new URL` adds a trailing '/'; the SDK joins paths itself.
  return url.href.replace(/\/$/, '');
}

function resolveBoolean(value: boolean | string | undefined, source: string): boolean | undefined {
  if (value === undefined || typeof value === 'boolean') return value;
  const text = value.trim().toLowerCase();
  if (text === 'true' || text === '1') return true;
  if (text === 'false' || text === '0') return false;
  throw new S3ConfigError(source, `must be true, false, 1 or 0, got ${JSON.stringify(value)}`);
}

function resolveInteger(value: number | string | undefined, source: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  const number = typeof value === 'number' ? value : /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(number) || number < min || number > max) {
    throw new S3ConfigError(source, `must be an integer in [${min}, ${max}], got ${JSON.stringify(value)}`);
  }
  return number;
}

function resolveCredentials(options: S3Options, env: NodeJS.ProcessEnv): S3Credentials | undefined {
  if (options.credentials !== undefined) {
    const { accessKeyId, secretAccessKey, sessionToken } = options.credentials;
    if (nonEmpty(accessKeyId) === undefined) throw new S3ConfigError('credentials.accessKeyId', 'must not be empty');
    if (nonEmpty(secretAccessKey) === undefined) throw new S3ConfigError('credentials.secretAccessKey', 'must not be empty');
    return sessionToken === undefined ? { accessKeyId, secretAccessKey } : { accessKeyId, secretAccessKey, sessionToken };
  }
  const accessKeyId = nonEmpty(env.AWS_ACCESS_KEY_ID);
  const secretAccessKey = nonEmpty(env.AWS_SECRET_ACCESS_KEY);
  const sessionToken = nonEmpty(env.AWS_SESSION_TOKEN);
  if (accessKeyId === undefined && secretAccessKey === undefined) return undefined;
  // One without the other is a half-configured environment; the SDK would silently fall
  // through to another credential source and fail far from the cause.
  if (accessKeyId === undefined) throw new S3ConfigError('credentials (AWS_ACCESS_KEY_ID)', 'is missing while AWS_SECRET_ACCESS_KEY is set');
  if (secretAccessKey === undefined) throw new S3ConfigError('credentials (AWS_SECRET_ACCESS_KEY)', 'is missing while AWS_ACCESS_KEY_ID is set');
  return sessionToken === undefined ? { accessKeyId, secretAccessKey } : { accessKeyId, secretAccessKey, sessionToken };
}

/**
 * Resolves S3 settings: each field from `options`, else the environment, else its default.
 * Throws {@link S3ConfigError} naming the field (and the variable it came from) when a
 * value is unusable, so a misconfigured worker fails at start-up, not at its first GET.
 */
export function resolveS3Config(options: S3Options = {}, env: NodeJS.ProcessEnv = process.env): S3Config {
  const endpoint =
    options.endpoint !== undefined
      ? resolveEndpoint(options.endpoint, 'endpoint')
      : resolveEndpoint(nonEmpty(env.DINOFLEET_S3_ENDPOINT), 'endpoint (DINOFLEET_S3_ENDPOINT)');

  const regionSource = options.region !== undefined ? 'region' : 'region (AWS_REGION)';
  const region = options.region ?? nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION) ?? DEFAULT_S3_REGION;
  if (!REGION_PATTERN.test(region)) {
    throw new S3ConfigError(regionSource, `must look like us-east-1, got ${JSON.stringify(region)}`);
  }

  const forcePathStyle =
    (options.forcePathStyle !== undefined
      ? options.forcePathStyle
      : resolveBoolean(nonEmpty(env.DINOFLEET_S3_FORCE_PATH_STYLE), 'forcePathStyle (DINOFLEET_S3_FORCE_PATH_STYLE)')) ??
    endpoint !== undefined;

  const maxAttempts = resolveInteger(
    options.maxAttempts ?? nonEmpty(env.DINOFLEET_S3_MAX_ATTEMPTS),
    options.maxAttempts !== undefined ? 'maxAttempts' : 'maxAttempts (DINOFLEET_S3_MAX_ATTEMPTS)',
    1,
    20,
    DEFAULT_S3_MAX_ATTEMPTS,
  );
  const requestTimeoutMs = resolveInteger(
    options.requestTimeoutMs ?? nonEmpty(env.DINOFLEET_S3_REQUEST_TIMEOUT_MS),
    options.requestTimeoutMs !== undefined ? 'requestTimeoutMs' : 'requestTimeoutMs (DINOFLEET_S3_REQUEST_TIMEOUT_MS)',
    1,
    3_600_000,
    DEFAULT_S3_REQUEST_TIMEOUT_MS,
  );

  const credentials = resolveCredentials(options, env);
  return {
    ...(endpoint !== undefined && { endpoint }),
    region,
    ...(credentials !== undefined && { credentials }),
    forcePathStyle,
    maxAttempts,
    requestTimeoutMs,
  };
}

/** A one-line description of a config for logs, with the secret and session token left out. */
export function describeS3Config(config: S3Config): string {
  const credentials = config.credentials === undefined ? 'default chain' : `static (access key ${config.credentials.accessKeyId})`;
  return [
    `endpoint=${config.endpoint ?? 'aws'}`,
    `region=${config.region}`,
    `credentials=${credentials}`,
    `forcePathStyle=${config.forcePathStyle}`,
    `maxAttempts=${config.maxAttempts}`,
    `requestTimeoutMs=${config.requestTimeoutMs}`,
  ].join(' ');
}

/**
 * An S3 client for a resolved config. Against a custom endpoint, request checksums are sent
 * and response checksums checked only where the API requires them: S3-compatible servers
 * (s3rver, older MinIO) reject the SDK's default trailing-checksum uploads.
 */
export function createS3Client(config: S3Config): S3Client {
  return new S3Client({
    region: config.region,
    ...(config.endpoint !== undefined && {
      endpoint: config.endpoint,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    }),
    ...(config.credentials !== undefined && { credentials: config.credentials }),
    forcePathStyle: config.forcePathStyle,
    maxAttempts: config.maxAttempts,
    // requestTimeout runs until the response headers; socketTimeout catches a body that
    // stops mid-stream. Without throwOnRequestTimeout the handler only logs a warning and
    // keeps waiting, so a hung server would stall a worker instead of failing into a retry.
    requestHandler: {
      requestTimeout: config.requestTimeoutMs,
      socketTimeout: config.requestTimeoutMs,
      throwOnRequestTimeout: true,
    },
  });
}
