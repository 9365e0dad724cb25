/**
 * The credentials of a local fleet (docs/security.md): a TLS directory of development
 * certificates for every process, and the job API's tokens file with one token per scope.
 * Kept in one directory and reused when they are there and usable, so `dinofleet up` run
 * again in the same working directory keeps its CA and its tokens (and the lines a user
 * added to the tokens file with `dinofleet token create --tokens-file`).
 */
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { API_SCOPES, formatApiTokenLine, generateApiToken, hashApiToken, loadTlsDir, parseApiTokens, TlsConfigError } from '@dinofleet/proto';
import type { ApiScope } from '@dinofleet/proto';
import { createDevCertificates, hasTlsDir } from '@dinofleet/proto/dev-certificates';

/**
 * The job API tokens of a local fleet, one per scope. A type rather than an interface so
 * that `Object.entries(tokens)` knows its values are strings.
 */
export type LocalFleetTokens = {
  /** Scope admin: everything, ScaleJob and CancelJob included. */
  readonly admin: string;
  /** Scope submit: SubmitJob and the reads. */
  readonly submit: string;
  /** Scope read: GetJob, ListJobs, WatchJob. */
  readonly read: string;
};

/** What {@link ensureLocalFleetCredentials} found or made. */
export interface LocalFleetCredentials {
  /** TLS directory (ca.crt, ca.key, tls.crt, tls.key) passed as `--tls-dir` to every service. */
  readonly tlsDir: string;
  /** The coordinator's `--api-tokens` file. */
  readonly apiTokensFile: string;
  /** The tokens, one per scope. */
  readonly tokens: LocalFleetTokens;
  /** Files holding each token alone (mode 0600), for `--token-file` / `DINOFLEET_TOKEN_FILE`. */
  readonly tokenFiles: Readonly<Record<ApiScope, string>>;
  /** Whether the certificates were created now (else reused). */
  readonly createdCertificates: boolean;
  /** Whether any token was created now (else every one was reused). */
  readonly createdTokens: boolean;
}

/** Directory of the TLS files inside a credentials directory. */
export const LOCAL_TLS_DIR_NAME = 'tls';
/** The tokens file inside a credentials directory. */
export const LOCAL_API_TOKENS_FILE_NAME = 'api-tokens';
/** The token files inside a credentials directory: `token` is the admin token (what `dinofleet up` records). */
export const LOCAL_TOKEN_FILE_NAMES: Readonly<Record<ApiScope, string>> = { admin: 'token', submit: 'token.submit', read: 'token.read' };
/** Names of the local fleet's tokens in the tokens file. */
export const LOCAL_TOKEN_NAMES: Readonly<Record<ApiScope, string>> = { admin: 'local-admin', submit: 'local-submit', read: 'local-read' };

const TOKENS_FILE_HEADER = [
  '# dinofleet API tokens of this local fleet: name scope sha256:<hash of the token>.',
  '# Add a line with `dinofleet token create --name NAME --scope read|submit|admin --tokens-file <this file>`;',
  '# the local-* lines are managed by the local fleet (their tokens are in the token* files beside it).',
];

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** Writes `text` to `path` with mode 0600 through a temp file and a rename (never half a file). */
async function writePrivateFile(path: string, text: string): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, text, { mode: 0o600 });
  await chmod(temp, 0o600);
  await rename(temp, path);
}

/** Reuses `tlsDir` when it holds a usable TLS directory, else writes new development certificates. */
async function ensureTlsDir(tlsDir: string): Promise<boolean> {
  if (await hasTlsDir(tlsDir)) {
    try {
      loadTlsDir(tlsDir);
      return false;
    } catch (error) {
      // Expired or broken development certificates: this directory is the fleet's own, replace them.
      if (!(error instanceof TlsConfigError)) throw error;
    }
  }
  await createDevCertificates(tlsDir, { force: true, caName: 'dinofleet local fleet CA' });
  return true;
}

/**
 * Makes sure `dir` holds the credentials of a local fleet, reusing what is there and
 * usable: `tls/` (development certificates, see `dinofleet certs`), `api-tokens` (the
 * coordinator's tokens file: local-admin, local-submit, local-read, plus any lines added
 * to it), and the tokens themselves in `token` (admin), `token.submit` and `token.read`,
 * mode 0600. A token whose file is missing or does not match its line is replaced by a new
 * one. A tokens file that does not parse is an error (it is not overwritten).
 */
export async function ensureLocalFleetCredentials(dir: string): Promise<LocalFleetCredentials> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tlsDir = join(dir, LOCAL_TLS_DIR_NAME);
  const createdCertificates = await ensureTlsDir(tlsDir);

  const apiTokensFile = join(dir, LOCAL_API_TOKENS_FILE_NAME);
  const existingText = await readIfExists(apiTokensFile);
  const existing = existingText === undefined ? [] : parseApiTokens(existingText, apiTokensFile);
  const tokens: Partial<Record<ApiScope, string>> = {};
  const tokenFiles = Object.fromEntries(API_SCOPES.map((scope) => [scope, join(dir, LOCAL_TOKEN_FILE_NAMES[scope])])) as Record<ApiScope, string>;
  let createdTokens = false;
  for (const scope of API_SCOPES) {
    const entry = existing.find((e) => e.name === LOCAL_TOKEN_NAMES[scope]);
    const held = (await readIfExists(tokenFiles[scope]))?.trim();
    if (entry !== undefined && entry.scope === scope && held !== undefined && hashApiToken(held) === entry.hash) {
      tokens[scope] = held;
    } else {
      tokens[scope] = generateApiToken();
      createdTokens = true;
    }
  }
  if (createdTokens || existingText === undefined) {
    // Keep every line that is not one of ours (comments included), then ours, new or reused.
    const localNames = new Set(Object.values(LOCAL_TOKEN_NAMES));
    const kept = (existingText ?? TOKENS_FILE_HEADER.join('\n'))
      .split(/\r?\n/)
      .filter((line) => line.trim() !== '' && !localNames.has(line.replace(/#.*$/, '').trim().split(/\s+/)[0] ?? ''));
    const ours = [...API_SCOPES].reverse().map((scope) => formatApiTokenLine({ name: LOCAL_TOKEN_NAMES[scope], scope, hash: hashApiToken(tokens[scope]!) }));
    await writePrivateFile(apiTokensFile, `${[...kept, ...ours].join('\n')}\n`);
    for (const scope of API_SCOPES) await writePrivateFile(tokenFiles[scope], `${tokens[scope]!}\n`);
  }
  return {
    tlsDir,
    apiTokensFile,
    tokens: { admin: tokens.admin!, submit: tokens.submit!, read: tokens.read! },
    tokenFiles,
    createdCertificates,
    createdTokens,
  };
}
