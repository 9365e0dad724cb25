const SECRET_WORDS = new Set(['token', 'secret', 'password', 'passwd', 'authorization', 'credential', 'credentials', 'apikey']);
const SECRET_PAIRS = new Set(['private key', 'access key', 'secret key', 'api key', 'session key']);

/**
 * Whether a field name names a secret: its words (split at `_`, `-`, `.` and camelCase
 * boundaries) include token, secret, password, authorization, credential(s), or the pairs
 * private/access/secret/api key. Word-based, so `apiToken`, `bearer_token` and
 * `AWS_SECRET_ACCESS_KEY` are secrets while a ViT's `numTokens` or `tokensPerImage` is not.
 */
export function isSecretFieldName(name: string): boolean {
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((w) => w.length > 0);
  return words.some((w, i) => SECRET_WORDS.has(w) || (i > 0 && SECRET_PAIRS.has(`${words[i - 1]} ${w}`)));
}

/** What replaces a redacted value. */
export const REDACTED = '[redacted]';

/** How deep {@link toLoggable} descends before it writes `[truncated]`. */
export const MAX_LOG_DEPTH = 12;

// A PEM private key block (PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY", PKCS#8
// "PRIVATE KEY" / "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY"), up to its END line or,
// when the value was truncated, to the end of the string.
const PEM_PRIVATE_KEY = /-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(-----END ([A-Z0-9]+ )*PRIVATE KEY-----|$)/g;
// RFC 6750 bearer credentials: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const BEARER = /\bBearer\s+[A-Za-z0-9\-._~+/]+=*/gi;
// user:password@ in a URL (a Redis or S3 endpoint with credentials inline).
const URL_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)[^\s@/]+@/gi;

/** Masks secrets that can hide inside an innocent string: PEM private keys, bearer tokens, URL passwords. */
export function maskSecrets(text: string): string {
  if (!text.includes('PRIVATE KEY') && !/bearer/i.test(text) && !text.includes('@')) return text;
  return text
    .replace(PEM_PRIVATE_KEY, '[redacted private key]')
    .replace(BEARER, `Bearer ${REDACTED}`)
    .replace(URL_PASSWORD, `$1${REDACTED}@`);
}

/** A JSON value as the logger writes it. */
export type Loggable = string | number | boolean | null | Loggable[] | { [key: string]: Loggable };

/**
 * Turns any value into a JSON-safe one with secrets removed: fields named like
 * {@link isSecretFieldName} become `[redacted]` at any depth, strings go through
 * {@link maskSecrets}, Errors become `{ name, message, code, stack, cause }` (the cause chain
 * followed), non-finite numbers become the strings `NaN`/`Infinity`/`-Infinity` (JSON would
 * write `null`, hiding exactly the values a training log exists to show), bigints strings,
 * Dates ISO strings, cycles `[circular]`. Returns `undefined` for values JSON omits.
 */
export function toLoggable(value: unknown, depth = 0, seen: Set<object> = new Set()): Loggable | undefined {
  switch (typeof value) {
    case 'string':
      return maskSecrets(value);
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'boolean':
      return value;
    case 'bigint':
      return value.toString();
    case 'symbol':
      return value.toString();
    case 'undefined':
    case 'function':
      return undefined;
    case 'object':
      break;
  }
  if (value === null) return null;
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
  if (depth >= MAX_LOG_DEPTH) return '[truncated]';
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  try {
    if (value instanceof Error) return errorToLoggable(value, depth, seen);
    if (ArrayBuffer.isView(value)) return `[${value.constructor.name} ${value.byteLength} bytes]`;
    if (Array.isArray(value)) return value.map((item: unknown) => toLoggable(item, depth + 1, seen) ?? null);
    if (value instanceof Map) return entriesToLoggable([...value.entries()].map(([k, v]) => [String(k), v] as const), depth, seen);
    if (value instanceof Set) return [...value].map((item: unknown) => toLoggable(item, depth + 1, seen) ?? null);
    return entriesToLoggable(Object.entries(value), depth, seen);
  } finally {
    // Only ancestors count as cycles; the same object twice side by side is logged twice.
    seen.delete(value);
  }
}

function entriesToLoggable(entries: readonly (readonly [string, unknown])[], depth: number, seen: Set<object>): { [key: string]: Loggable } {
  const out: { [key: string]: Loggable } = {};
  for (const [key, v] of entries) {
    if (isSecretFieldName(key)) {
      if (v !== undefined) out[key] = REDACTED;
      continue;
    }
    const loggable = toLoggable(v, depth + 1, seen);
    if (loggable !== undefined) out[key] = loggable;
  }
  return out;
}

function errorToLoggable(err: Error, depth: number, seen: Set<object>): { [key: string]: Loggable } {
  // Own enumerable fields first (gRPC's `code`/`details`/`metadata`, our errors' `code`),
  // redacted like any object; the standard fields below win over same-named ones.
  const out = entriesToLoggable(Object.entries(err).filter(([k]) => k !== 'cause' && !(k === 'errors' && err instanceof AggregateError)), depth, seen);
  out['name'] = err.name;
  out['message'] = maskSecrets(err.message);
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) out['code'] = toLoggable(code, depth + 1, seen) ?? null;
  if (err.stack !== undefined) out['stack'] = maskSecrets(err.stack);
  if (err instanceof AggregateError) out['errors'] = toLoggable(err.errors, depth + 1, seen) ?? [];
  if (err.cause !== undefined) out['cause'] = toLoggable(err.cause, depth + 1, seen) ?? null;
  return out;
}
