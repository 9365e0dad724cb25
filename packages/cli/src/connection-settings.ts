/**
 * How the CLI secures its connections to a fleet (docs/security.md): the TLS directory that
 * verifies the servers (and, when it holds tls.crt/tls.key, identifies this client as a
 * fleet member), and the bearer token of the job API. Each is looked up in a fixed order:
 *
 * - TLS: `--tls-dir DIR`, or `--insecure` (not both); else `DINOFLEET_TLS_DIR`; else
 *   `.dinofleet/fleet.json` of `dinofleet up` (its TLS directory, or that it is insecure).
 * - Token: `DINOFLEET_TOKEN` (the token itself); else `--token-file FILE`, else
 *   `DINOFLEET_TOKEN_FILE`; else the token file that `.dinofleet/fleet.json` names.
 *   `DINOFLEET_TOKEN` together with `--token-file` is refused rather than one of them
 *   silently ignored.
 *
 * A token is never sent over plaintext, never printed, never part of an error message.
 */
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve as resolvePath } from 'node:path';

import { API_TOKEN_PREFIX, channelCredentials, INSECURE, loadTlsDir, TLS_FILES, TlsConfigError } from '@dinofleet/proto';
import type { CreateClientOptions, TransportSecurity } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';
import { fleetFilePath, readFleetFile } from './fleet-file.ts';
import type { FleetRecord } from './fleet-file.ts';

/** The flags of every command that connects to a fleet. */
export interface ConnectionFlags {
  /** `--tls-dir DIR`: ca.crt, and tls.crt/tls.key when this client needs an identity. */
  readonly tlsDir?: string | undefined;
  /** `--insecure`: plaintext, no token. */
  readonly insecure?: boolean | undefined;
  /** `--token-file FILE`: a file holding the API token alone. */
  readonly tokenFile?: string | undefined;
}

/** Where the settings are looked up besides the flags. */
export interface ConnectionContext {
  /** Environment (`DINOFLEET_TLS_DIR`, `DINOFLEET_TOKEN`, `DINOFLEET_TOKEN_FILE`). */
  readonly env: NodeJS.ProcessEnv;
  /** Working directory: relative paths and `.dinofleet/fleet.json`. */
  readonly cwd: string;
}

/** The transport security chosen and where it came from. */
export interface ResolvedTransport {
  /** mTLS material (a CA-only directory is fine for the job API) or insecure. */
  readonly security: TransportSecurity;
  /** Where it came from, for messages: `--tls-dir /x`, `DINOFLEET_TLS_DIR /x`, `--insecure`, … */
  readonly origin: string;
}

/** A token and where it came from (never the token in `origin`). */
export interface ResolvedToken {
  /** The token: not to be printed. */
  readonly token: string;
  /** Where it came from, for messages: `DINOFLEET_TOKEN`, `--token-file /x`, … */
  readonly origin: string;
  /** A warning to show (a token file others can read), if any. */
  readonly warning?: string;
}

/** What a job API client needs. */
export interface JobApiConnection {
  readonly transport: ResolvedTransport;
  /** Absent only when insecure. */
  readonly token: ResolvedToken | undefined;
  /** For `createClient(JobServiceClient, address, …)`. */
  readonly clientOptions: CreateClientOptions;
}

/** What a client of a fleet-only service (TeacherSync) needs. */
export interface FleetMemberConnection {
  readonly transport: ResolvedTransport;
  /** For `createClient(TeacherSyncClient, address, …)`. */
  readonly clientOptions: CreateClientOptions;
}

/** The shape of a dinofleet API token (see `generateApiToken` in @dinofleet/proto). */
const TOKEN_PATTERN = /^dft_[A-Za-z0-9_-]{43}$/;

const TLS_HOW = 'pass --tls-dir DIR (a directory with the fleet\'s ca.crt) or set DINOFLEET_TLS_DIR, or run `dinofleet up` in this directory; for a fleet started with --insecure, pass --insecure';
const TOKEN_HOW = 'set DINOFLEET_TOKEN, pass --token-file FILE or set DINOFLEET_TOKEN_FILE (a file holding the token), or run `dinofleet up` in this directory; `dinofleet token create` makes a token';

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

async function fleetRecord(context: ConnectionContext): Promise<FleetRecord | undefined> {
  return readFleetFile(context.cwd);
}

function loadTransport(dir: string, origin: string): ResolvedTransport {
  try {
    return { security: { kind: 'mtls', material: loadTlsDir(dir, { requireIdentity: false }) }, origin };
  } catch (error) {
    if (error instanceof TlsConfigError) throw new CliError(`${origin}: ${error.message}`, ExitCode.Usage, { cause: error });
    throw error;
  }
}

/**
 * The transport security for connecting to the fleet: `--tls-dir`/`--insecure`, else
 * `DINOFLEET_TLS_DIR`, else the fleet file; a {@link CliError} (exit 2) saying what to set
 * when none is known or the directory cannot be used.
 */
export async function resolveTransportSecurity(flags: ConnectionFlags, context: ConnectionContext): Promise<ResolvedTransport> {
  const flagDir = nonEmpty(flags.tlsDir);
  if (flagDir !== undefined && flags.insecure === true) throw new CliError('--insecure and --tls-dir exclude each other: pick one', ExitCode.Usage);
  if (flagDir !== undefined) return loadTransport(resolvePath(context.cwd, flagDir), `--tls-dir ${flagDir}`);
  if (flags.insecure === true) return { security: INSECURE, origin: '--insecure' };
  const envDir = nonEmpty(context.env['DINOFLEET_TLS_DIR']);
  if (envDir !== undefined) return loadTransport(resolvePath(context.cwd, envDir), `DINOFLEET_TLS_DIR ${envDir}`);
  const record = await fleetRecord(context);
  if (record?.insecure === true) return { security: INSECURE, origin: `${fleetFilePath(context.cwd)} (a fleet started with --insecure)` };
  if (record?.tlsDir !== undefined) return loadTransport(record.tlsDir, `the TLS directory of ${fleetFilePath(context.cwd)}`);
  throw new CliError(`no TLS settings to connect to the fleet: ${TLS_HOW}`, ExitCode.Usage);
}

async function readTokenFile(path: string, origin: string): Promise<ResolvedToken> {
  let text: string;
  let mode: number;
  try {
    mode = (await stat(path)).mode;
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new CliError(`${origin}: cannot read ${path} (${code === 'ENOENT' ? 'no such file' : (code ?? 'error')})`, ExitCode.Usage, { cause: error });
  }
  const token = text.trim();
  if (!TOKEN_PATTERN.test(token)) {
    throw new CliError(`${origin}: ${path} does not hold a dinofleet API token (one line: ${API_TOKEN_PREFIX} and 43 characters); \`dinofleet token create\` makes one`, ExitCode.Usage);
  }
  const warning = (mode & 0o077) !== 0 ? `${path} holds an API token but other users may read it (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); chmod 600 ${path}` : undefined;
  return { token, origin, ...(warning !== undefined && { warning }) };
}

/**
 * The job API token: `DINOFLEET_TOKEN`, else `--token-file`, else `DINOFLEET_TOKEN_FILE`,
 * else the fleet file's token file; undefined when none is set. A set but unusable source,
 * or both `DINOFLEET_TOKEN` and `--token-file`, is a {@link CliError} (exit 2) that names
 * it without echoing what it holds.
 */
export async function resolveApiToken(flags: ConnectionFlags, context: ConnectionContext): Promise<ResolvedToken | undefined> {
  const flagFile = nonEmpty(flags.tokenFile);
  const envToken = nonEmpty(context.env['DINOFLEET_TOKEN']?.trim());
  if (envToken !== undefined && flagFile !== undefined) {
    throw new CliError('both DINOFLEET_TOKEN and --token-file give a token: unset DINOFLEET_TOKEN or drop --token-file', ExitCode.Usage);
  }
  if (envToken !== undefined) {
    if (!TOKEN_PATTERN.test(envToken)) {
      throw new CliError(`DINOFLEET_TOKEN is not a dinofleet API token (${API_TOKEN_PREFIX} and 43 characters); \`dinofleet token create\` makes one`, ExitCode.Usage);
    }
    return { token: envToken, origin: 'DINOFLEET_TOKEN' };
  }
  if (flagFile !== undefined) return readTokenFile(resolvePath(context.cwd, flagFile), '--token-file');
  const envFile = nonEmpty(context.env['DINOFLEET_TOKEN_FILE']);
  if (envFile !== undefined) return readTokenFile(resolvePath(context.cwd, envFile), 'DINOFLEET_TOKEN_FILE');
  const record = await fleetRecord(context);
  if (record?.tokenFile !== undefined) {
    const path = isAbsolute(record.tokenFile) ? record.tokenFile : join(context.cwd, record.tokenFile);
    return readTokenFile(path, `the token file of ${fleetFilePath(context.cwd)}`);
  }
  return undefined;
}

/**
 * Settings for a job API client (JobService): the transport, and the token unless insecure
 * (a {@link CliError} saying what to set when there is none).
 */
export async function resolveJobApiConnection(flags: ConnectionFlags, context: ConnectionContext): Promise<JobApiConnection> {
  const transport = await resolveTransportSecurity(flags, context);
  if (transport.security.kind === 'insecure') {
    // A token would travel in the clear: it is not even looked up.
    return { transport, token: undefined, clientOptions: { credentials: channelCredentials(INSECURE) } };
  }
  const token = await resolveApiToken(flags, context);
  if (token === undefined) throw new CliError(`no API token for the job API: ${TOKEN_HOW}`, ExitCode.Usage);
  return {
    transport,
    token,
    clientOptions: { credentials: channelCredentials(transport.security, { token: token.token }) },
  };
}

/**
 * Settings for a client of a fleet-only service: TeacherSync accepts only clients that
 * present a certificate of the fleet CA, so the TLS directory must hold tls.crt and
 * tls.key (`purpose` says what needs it, for the message).
 */
export async function resolveFleetMemberConnection(flags: ConnectionFlags, context: ConnectionContext, purpose: string): Promise<FleetMemberConnection> {
  const transport = await resolveTransportSecurity(flags, context);
  if (transport.security.kind === 'mtls' && (transport.security.material.cert === undefined || transport.security.material.key === undefined)) {
    throw new CliError(
      `${purpose} talks to teacher-sync, which serves fleet members only: it needs a TLS directory with ${TLS_FILES.cert} and ${TLS_FILES.key} of the fleet CA besides ${TLS_FILES.ca}, but ${transport.origin} holds only ${TLS_FILES.ca}. ` +
        'Pass --tls-dir DIR with all three (the .dinofleet/tls of `dinofleet up` has them)',
      ExitCode.Usage,
    );
  }
  return {
    transport,
    clientOptions: { credentials: channelCredentials(transport.security) },
  };
}
