/**
 * `dinofleet token create` and `dinofleet token hash`: job API tokens (docs/security.md).
 * The token is shown once, to whoever creates it; the coordinator's tokens file
 * (`--api-tokens`) holds only its hash, one `name scope sha256:<hex>` line per token.
 */
import { chmod, open, readFile } from 'node:fs/promises';

import { API_SCOPES, API_TOKEN_PREFIX, ApiTokensFileError, formatApiTokenLine, generateApiToken, hashApiToken, parseApiTokens } from '@dinofleet/proto';
import type { ApiScope, ApiTokenEntry } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';

/** A new token and its tokens-file entry. */
export interface CreatedApiToken {
  /** The token: shown once, stored nowhere by dinofleet. */
  readonly token: string;
  /** Its entry (the hash, not the token). */
  readonly entry: ApiTokenEntry;
  /** `entry` as a tokens-file line. */
  readonly line: string;
}

/** Options of {@link createApiToken}. */
export interface CreateApiTokenOptions {
  /** Who holds it (named in the coordinator's logs and per-caller limits): 1-64 of A-Z a-z 0-9 . _ @ -. */
  readonly name: string;
  /** What it may do: read ⊂ submit ⊂ admin. */
  readonly scope: ApiScope;
  /**
   * Tokens file to append the line to (created mode 0600 when missing); a name already in
   * it is refused. @default none: the line is only returned
   */
  readonly tokensFile?: string;
}

/** Whether `scope` is an {@link ApiScope}. */
export function isApiScope(scope: string): scope is ApiScope {
  return (API_SCOPES as readonly string[]).includes(scope);
}

/**
 * The tokens-file line of `entry`, checked by the parser the coordinator uses: a
 * {@link CliError} (exit 2) naming `--name` when the name is not valid.
 */
export function tokensFileLine(entry: ApiTokenEntry): string {
  const line = formatApiTokenLine(entry);
  if (/\s/.test(entry.name)) throw new CliError(`--name ${JSON.stringify(entry.name)}: no spaces allowed`, ExitCode.Usage);
  try {
    parseApiTokens(line, '--name');
  } catch (error) {
    if (error instanceof ApiTokensFileError) {
      throw new CliError(`--name ${JSON.stringify(entry.name)}: ${error.message.replace(/^--name line 1: /, '')}`, ExitCode.Usage, { cause: error });
    }
    throw error;
  }
  return line;
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(`--tokens-file ${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`, ExitCode.Failure, { cause: error });
  }
}

/**
 * A new random token of `scope` for `name`, its line appended to `tokensFile` when given.
 * Nothing is written when the name is invalid, the file does not parse, or the name is in
 * it already.
 */
export async function createApiToken(options: CreateApiTokenOptions): Promise<CreatedApiToken> {
  const token = generateApiToken();
  const entry: ApiTokenEntry = { name: options.name, scope: options.scope, hash: hashApiToken(token) };
  const line = tokensFileLine(entry);
  if (options.tokensFile !== undefined) {
    const path = options.tokensFile;
    const existing = await readIfExists(path);
    if (existing !== undefined) {
      let entries: ApiTokenEntry[];
      try {
        entries = parseApiTokens(existing, path);
      } catch (error) {
        throw new CliError(`${error instanceof Error ? error.message : String(error)}; fix the file before adding to it`, ExitCode.Usage, { cause: error });
      }
      if (entries.some((e) => e.name === options.name)) {
        throw new CliError(`${path} has a token named ${options.name} already; pick another --name, or delete that line first to replace the token`, ExitCode.Usage);
      }
    }
    const separator = existing !== undefined && existing !== '' && !existing.endsWith('\n') ? '\n' : '';
    const file = await open(path, 'a', 0o600);
    try {
      if (existing === undefined) await chmod(path, 0o600); // whatever the umask did
      await file.appendFile(`${separator}${line}\n`);
    } finally {
      await file.close();
    }
  }
  return { token, entry, line };
}

/** The token a stream holds (its whole text, trimmed), checked to be a dinofleet API token. */
export async function readApiToken(input: NodeJS.ReadableStream, origin = 'stdin'): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of input as AsyncIterable<Buffer | string>) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += buffer.length;
    if (size > 4096) throw new CliError(`${origin} holds more than a token (over 4096 bytes)`, ExitCode.Usage);
    chunks.push(buffer);
  }
  const token = Buffer.concat(chunks).toString('utf8').trim();
  if (token === '') throw new CliError(`${origin} is empty: pipe the token in, e.g. \`dinofleet token hash < token-file\``, ExitCode.Usage);
  if (!/^dft_[A-Za-z0-9_-]{43}$/.test(token)) {
    throw new CliError(
      `${origin} does not hold a dinofleet API token (${API_TOKEN_PREFIX} and 43 base64url characters, the form \`dinofleet token create\` makes); the coordinator accepts no other`,
      ExitCode.Usage,
    );
  }
  return token;
}
