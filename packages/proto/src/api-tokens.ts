/**
 * Bearer tokens of the job API (docs/security.md). A token is `dft_` + 43 base64url
 * characters (32 random bytes). The coordinator stores only SHA-256 hashes, one per line
 * of its tokens file (`--api-tokens FILE`):
 *
 *     # name   scopes        hash
 *     alice    submit        sha256:3f0c…
 *     ops      admin         sha256:9a1b…
 *
 * Scopes nest: `admin` (ScaleJob, CancelJob) includes `submit` (SubmitJob), which includes
 * `read` (GetJob, ListJobs, WatchJob). Tokens are random, so a fast hash is enough: there is
 * nothing to guess from it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Metadata } from '@grpc/grpc-js';
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from './errors.ts';

/** What a token may do. */
export type ApiScope = 'read' | 'submit' | 'admin';

/** Every scope, weakest first: each includes the ones before it. */
export const API_SCOPES: readonly ApiScope[] = ['read', 'submit', 'admin'];

/** The prefix of every dinofleet API token (so secret scanners and people can spot one). */
export const API_TOKEN_PREFIX = 'dft_';

const TOKEN_PATTERN = /^dft_[A-Za-z0-9_-]{43}$/;
const HASH_PATTERN = /^sha256:[0-9a-f]{64}$/;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

/** A new random API token. */
export function generateApiToken(): string {
  return API_TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** The stored form of a token: `sha256:<hex>`. */
export function hashApiToken(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

/** One line of a tokens file. */
export interface ApiTokenEntry {
  /** Who holds it: names the caller in logs, events and per-caller limits. */
  readonly name: string;
  /** The strongest scope it has. */
  readonly scope: ApiScope;
  /** `sha256:<hex>` of the token. */
  readonly hash: string;
}

/** The tokens-file line for `entry`. */
export function formatApiTokenLine(entry: ApiTokenEntry): string {
  return `${entry.name} ${entry.scope} ${entry.hash}`;
}

/** A tokens file that cannot be used; the message names the line. */
export class ApiTokensFileError extends InvalidArgumentError {
}

function parseScopes(text: string, where: string): ApiScope {
  const scopes = text.split(',').filter((s) => s !== '');
  let strongest = -1;
  for (const scope of scopes) {
    const index = API_SCOPES.indexOf(scope as ApiScope);
    if (index < 0) throw new ApiTokensFileError(`${where}: unknown scope ${JSON.stringify(scope)}; scopes are ${API_SCOPES.join(', ')}`);
    strongest = Math.max(strongest, index);
  }
  const scope = API_SCOPES[strongest];
  if (scope === undefined) throw new ApiTokensFileError(`${where}: no scope`);
  return scope;
}

/**
 * Parses a tokens file: `name scopes sha256:<hex>` per line, `#` comments and blank lines
 * ignored. Refuses a raw token in place of its hash, unknown scopes, and duplicate names
 * or hashes. Messages name the line, never echo a token.
 */
export function parseApiTokens(text: string, source: string): ApiTokenEntry[] {
  const entries: ApiTokenEntry[] = [];
  const names = new Set<string>();
  const hashes = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') return;
    const where = `${source} line ${i + 1}`;
    const fields = line.split(/\s+/);
    if (fields.some((f) => f.startsWith(API_TOKEN_PREFIX))) {
      throw new ApiTokensFileError(`${where} holds a token itself; store its hash instead (\`dinofleet token create\` prints the line to add), and treat that token as leaked`);
    }
    if (fields.length !== 3) throw new ApiTokensFileError(`${where}: expected "name scopes sha256:<hex>", found ${fields.length} fields`);
    const [name = '', scopes = '', hash = ''] = fields;
    if (!NAME_PATTERN.test(name)) throw new ApiTokensFileError(`${where}: name must be 1-64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)`);
    if (!HASH_PATTERN.test(hash)) throw new ApiTokensFileError(`${where}: the hash must be sha256: and 64 lowercase hex digits`);
    if (names.has(name)) throw new ApiTokensFileError(`${where}: name ${name} appears twice`);
    if (hashes.has(hash)) throw new ApiTokensFileError(`${where}: the same token hash appears twice`);
    names.add(name);
    hashes.add(hash);
    entries.push({ name, scope: parseScopes(scopes, where), hash });
  });
  return entries;
}

/** Reads and parses a tokens file. An empty file is refused (nobody could call the API). */
export function loadApiTokens(path: string): ApiTokenEntry[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ApiTokensFileError(`--api-tokens ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'}); create one with \`dinofleet token create\``);
  }
  const entries = parseApiTokens(text, path);
  if (entries.length === 0) throw new ApiTokensFileError(`--api-tokens ${path} holds no token; add a line with \`dinofleet token create\``);
  return entries;
}

/** Who called, once authenticated. */
export interface ApiCaller {
  readonly name: string;
  readonly scope: ApiScope;
}

/** The caller of an insecure (unauthenticated) server: every call is allowed. */
export const ANONYMOUS_ADMIN: ApiCaller = Object.freeze({ name: 'anonymous', scope: 'admin' });

/** Checks bearer tokens against a tokens file's entries. */
export class ApiTokenAuthenticator {
  readonly #byHash = new Map<string, ApiTokenEntry>();

  constructor(entries: readonly ApiTokenEntry[]) {
    for (const entry of entries) this.#byHash.set(entry.hash, entry);
  }

  /** Number of tokens known. */
  get size(): number {
    return this.#byHash.size;
  }

  /** The caller whose token is in `metadata`'s `authorization: Bearer …`, or UNAUTHENTICATED. */
  authenticate(metadata: Metadata): ApiCaller {
    const values = metadata.get('authorization');
    if (values.length === 0) {
      throw new UnauthenticatedError('no API token: send "authorization: Bearer <token>" (the CLI reads DINOFLEET_TOKEN or --token-file)');
    }
    if (values.length > 1) throw new UnauthenticatedError('more than one authorization header; send exactly one bearer token');
    const value = String(values[0]);
    const match = /^Bearer +(\S+)$/i.exec(value);
    if (match === null) throw new UnauthenticatedError('the authorization header is not "Bearer <token>"');
    const token = match[1] ?? '';
    if (!TOKEN_PATTERN.test(token)) throw new UnauthenticatedError(`the bearer token is not a dinofleet API token (${API_TOKEN_PREFIX} and 43 characters)`);
    const hash = hashApiToken(token);
    const entry = this.#byHash.get(hash);
    // The map lookup is keyed by the hash; compare once more in constant time anyway.
    if (entry === undefined || !timingSafeEqual(Buffer.from(entry.hash), Buffer.from(hash))) {
      throw new UnauthenticatedError("the bearer token is not one of this coordinator's API tokens (--api-tokens); check DINOFLEET_TOKEN");
    }
    return { name: entry.name, scope: entry.scope };
  }
}

/** Whether `caller` has `scope` (scopes nest: admin ⊇ submit ⊇ read). */
export function hasScope(caller: ApiCaller, scope: ApiScope): boolean {
  return API_SCOPES.indexOf(caller.scope) >= API_SCOPES.indexOf(scope);
}

/** Throws PERMISSION_DENIED unless `caller` has `scope` for `method`. */
export function requireScope(caller: ApiCaller, scope: ApiScope, method: string): void {
  if (!hasScope(caller, scope)) {
    throw new PermissionDeniedError(`token ${caller.name} has scope ${caller.scope}, but ${method} needs ${scope}; ask for a token with scope ${scope}`);
  }
}
