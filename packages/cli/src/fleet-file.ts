/**
 * `.dinofleet/fleet.json`: what `dinofleet up` leaves behind so that later commands in the
 * same directory find the fleet (its addresses, TLS directory and admin token file), and the
 * order in which addresses are looked up.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { CliError, ExitCode } from './cli-error.ts';

/** Directory (under the working directory) holding {@link FLEET_FILE_NAME}. */
export const FLEET_DIR_NAME = '.dinofleet';
/** File name of the fleet record. */
export const FLEET_FILE_NAME = 'fleet.json';

/** The content of `.dinofleet/fleet.json`. */
export interface FleetRecord {
  /** JobService `host:port`. */
  readonly coordinator: string;
  /** TeacherSync `host:port`. */
  readonly teacherSync: string;
  /** Redis URL of the fleet. */
  readonly redisUrl: string;
  /** S3 environment of the fleet (`DINOFLEET_S3_ENDPOINT`, `AWS_*`, …). */
  readonly s3Env: Readonly<Record<string, string>>;
  /** Process id of `dinofleet up`. */
  readonly pid: number;
  /**
   * The fleet's TLS directory (absolute; ca.crt, tls.crt, tls.key), which later commands
   * use when neither `--tls-dir` nor `DINOFLEET_TLS_DIR` is given. Absent for an insecure fleet.
   */
  readonly tlsDir?: string;
  /** A file holding the fleet's admin API token (absolute, mode 0600). Absent for an insecure fleet. */
  readonly tokenFile?: string;
  /** The fleet was started with `--insecure`: later commands connect in plaintext. */
  readonly insecure?: boolean;
}

/** Path of the fleet record for working directory `cwd`. */
export function fleetFilePath(cwd: string): string {
  return join(cwd, FLEET_DIR_NAME, FLEET_FILE_NAME);
}

/** Writes the fleet record atomically (temp file + rename). */
export async function writeFleetFile(cwd: string, record: FleetRecord): Promise<string> {
  const path = fleetFilePath(cwd);
  await mkdir(join(cwd, FLEET_DIR_NAME), { recursive: true });
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, `${JSON.stringify(record, null, 2)}\n`);
  await rename(temp, path);
  return path;
}

/** Removes the fleet record if it is there. */
export async function removeFleetFile(cwd: string): Promise<void> {
  await rm(fleetFilePath(cwd), { force: true });
}

/** The fleet record of `cwd`, or undefined when there is none. Throws on a corrupt one. */
export async function readFleetFile(cwd: string): Promise<FleetRecord | undefined> {
  const path = fleetFilePath(cwd);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let parsed: Partial<FleetRecord>;
  try {
    parsed = JSON.parse(text) as Partial<FleetRecord>;
  } catch {
    throw new CliError(`${path} is not valid JSON: delete it and run \`dinofleet up\` again`, ExitCode.Usage);
  }
  if (typeof parsed.coordinator !== 'string' || typeof parsed.teacherSync !== 'string') {
    throw new CliError(`${path} lacks coordinator/teacherSync addresses: delete it and run \`dinofleet up\` again`, ExitCode.Usage);
  }
  return {
    coordinator: parsed.coordinator,
    teacherSync: parsed.teacherSync,
    redisUrl: typeof parsed.redisUrl === 'string' ? parsed.redisUrl : '',
    s3Env: typeof parsed.s3Env === 'object' && parsed.s3Env !== null ? parsed.s3Env : {},
    pid: typeof parsed.pid === 'number' ? parsed.pid : 0,
    ...(typeof parsed.tlsDir === 'string' && parsed.tlsDir !== '' && { tlsDir: parsed.tlsDir }),
    ...(typeof parsed.tokenFile === 'string' && parsed.tokenFile !== '' && { tokenFile: parsed.tokenFile }),
    ...(parsed.insecure === true && { insecure: true }),
  };
}

/** Which address to look up. */
export type FleetEndpoint = 'coordinator' | 'teacherSync';

const ENDPOINTS: Readonly<Record<FleetEndpoint, { readonly flag: string; readonly env: string }>> = {
  coordinator: { flag: '--coordinator', env: 'DINOFLEET_COORDINATOR' },
  teacherSync: { flag: '--teacher-sync', env: 'DINOFLEET_TEACHER_SYNC' },
};

/** Where an address came from, for messages. */
export type AddressSource = 'flag' | 'env' | 'fleet-file';

/** A resolved address and its origin. */
export interface ResolvedAddress {
  /** `host:port`. */
  readonly address: string;
  /** Where it came from. */
  readonly source: AddressSource;
}

/** Inputs of {@link resolveAddress}. */
export interface ResolveAddressOptions {
  /** The flag's value, if given. */
  readonly flag?: string | undefined;
  /** Environment. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** Directory holding `.dinofleet/fleet.json`. @default process.cwd() */
  readonly cwd?: string;
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

function checkHostPort(value: string, origin: string): string {
  const match = HOST_PORT.exec(value);
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || !(port >= 1 && port <= 65535)) {
    throw new CliError(`${origin} must be host:port (e.g. 127.0.0.1:7000), got ${JSON.stringify(value)}`, ExitCode.Usage);
  }
  return value;
}

function isRunning(pid: number): boolean {
  if (!(pid > 0)) return true; // unknown: do not call it stale
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The address of the coordinator or teacher-sync: the flag, else the environment variable
 * (`DINOFLEET_COORDINATOR` / `DINOFLEET_TEACHER_SYNC`), else `.dinofleet/fleet.json` in
 * `cwd` (written by `dinofleet up`), else a {@link CliError} (exit 2) saying what to do.
 */
export async function resolveAddress(endpoint: FleetEndpoint, options: ResolveAddressOptions = {}): Promise<ResolvedAddress> {
  const { flag, env: envName } = ENDPOINTS[endpoint];
  const env = options.env ?? process.env;
  if (options.flag !== undefined && options.flag !== '') return { address: checkHostPort(options.flag, flag), source: 'flag' };
  const fromEnv = env[envName];
  if (fromEnv !== undefined && fromEnv !== '') return { address: checkHostPort(fromEnv, envName), source: 'env' };
  const cwd = options.cwd ?? process.cwd();
  const record = await readFleetFile(cwd);
  if (record !== undefined) {
    if (!isRunning(record.pid)) {
      throw new CliError(
        `${fleetFilePath(cwd)} is stale (dinofleet up, pid ${record.pid}, is not running): run \`dinofleet up\` or pass ${flag} host:port`,
        ExitCode.Usage,
      );
    }
    return { address: checkHostPort(record[endpoint], fleetFilePath(cwd)), source: 'fleet-file' };
  }
  throw new CliError(
    `no ${endpoint === 'coordinator' ? 'coordinator' : 'teacher-sync'} address: run \`dinofleet up\` in this directory, pass ${flag} host:port, or set ${envName}`,
    ExitCode.Usage,
  );
}
