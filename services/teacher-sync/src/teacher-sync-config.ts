/**
 * teacher-sync's command line (docs/cluster.md, "Processes"): each flag also reads an
 * environment variable; the flag wins.
 */
import { InvalidArgumentError, transportSecurityFromFlags } from '@dinofleet/proto';
import { LogLevel } from '@dinofleet/telemetry';

import { parseHostPort } from './teacher-sync-server.ts';
import { DEFAULT_MAX_SNAPSHOT_BYTES } from './teacher-sync-service.ts';

/** The one-line usage printed with every flag error. */
export const TEACHER_SYNC_USAGE =
  'usage: teacher-sync (--tls-dir dir | --insecure) [--listen host:port] [--metrics-listen host:port] [--ready-file path] [--log-level debug|info|warn|error|silent] [--max-snapshot-bytes N]';

/** Flag values as `parseArgs` returns them. */
export interface TeacherSyncFlags {
  readonly listen?: string | undefined;
  readonly 'metrics-listen'?: string | undefined;
  readonly 'ready-file'?: string | undefined;
  readonly 'log-level'?: string | undefined;
  readonly 'max-snapshot-bytes'?: string | undefined;
  readonly 'tls-dir'?: string | undefined;
  readonly insecure?: boolean | undefined;
}

/** The resolved settings of the process. */
export interface TeacherSyncConfig {
  /** gRPC "host:port". */
  readonly listen: string;
  /** `/metrics` "host:port". */
  readonly metricsListen: string;
  /** Where to write the ready file, if anywhere. */
  readonly readyFile?: string;
  /** Log level. */
  readonly logLevel: LogLevel;
  /** Largest teacher snapshot accepted, in bytes. */
  readonly maxSnapshotBytes: number;
  /**
   * The TLS directory (ca.crt, tls.crt, tls.key), read by `main.ts`; absent exactly when
   * {@link insecure}. Only callers with a certificate of its CA are served.
   */
  readonly tlsDir?: string;
  /** Plaintext without authentication (`--insecure`). */
  readonly insecure: boolean;
}

function pick(flag: string | undefined, env: string | undefined): string | undefined {
  if (flag !== undefined) return flag;
  return env === undefined || env.trim() === '' ? undefined : env.trim();
}

/** `--insecure`, else `DINOFLEET_INSECURE` ("1"/"true" on, "0"/"false"/"" off). */
function readInsecure(flag: boolean | undefined, env: string | undefined): boolean {
  if (flag === true) return true;
  const raw = (env ?? '').trim().toLowerCase();
  if (raw === '' || raw === '0' || raw === 'false') return false;
  if (raw === '1' || raw === 'true') return true;
  throw new InvalidArgumentError(`DINOFLEET_INSECURE must be 1, true, 0 or false, got ${JSON.stringify(env)}`);
}

/**
 * Flags, then `DINOFLEET_LISTEN`, `DINOFLEET_METRICS_LISTEN`, `DINOFLEET_READY_FILE`,
 * `DINOFLEET_LOG_LEVEL`, `DINOFLEET_MAX_SNAPSHOT_BYTES`, `DINOFLEET_TLS_DIR`,
 * `DINOFLEET_INSECURE`, then defaults. Exactly one of `--tls-dir` and `--insecure` is
 * required; the TLS directory itself is read by `main.ts`, so a chart's flags resolve on a
 * machine without its Secret.
 * @throws InvalidArgumentError naming the flag and the allowed values.
 */
export function resolveTeacherSyncConfig(flags: TeacherSyncFlags, env: NodeJS.ProcessEnv = process.env): TeacherSyncConfig {
  const listen = pick(flags.listen, env.DINOFLEET_LISTEN) ?? '127.0.0.1:0';
  parseHostPort(listen, '--listen');
  const metricsListen = pick(flags['metrics-listen'], env.DINOFLEET_METRICS_LISTEN) ?? '127.0.0.1:0';
  parseHostPort(metricsListen, '--metrics-listen');
  const readyFile = pick(flags['ready-file'], env.DINOFLEET_READY_FILE);
  const logLevel = pick(flags['log-level'], env.DINOFLEET_LOG_LEVEL) ?? LogLevel.Info;
  const levels: readonly string[] = Object.values(LogLevel);
  if (!levels.includes(logLevel)) throw new InvalidArgumentError(`--log-level must be one of ${levels.join(', ')}, got ${JSON.stringify(logLevel)}`);
  const maxText = pick(flags['max-snapshot-bytes'], env.DINOFLEET_MAX_SNAPSHOT_BYTES);
  const maxSnapshotBytes = maxText === undefined ? DEFAULT_MAX_SNAPSHOT_BYTES : /^\d+$/.test(maxText) ? Number(maxText) : Number.NaN;
  if (!Number.isSafeInteger(maxSnapshotBytes) || maxSnapshotBytes < 1 || maxSnapshotBytes > 2 ** 32) {
    throw new InvalidArgumentError(`--max-snapshot-bytes must be an integer in [1, ${2 ** 32}], got ${JSON.stringify(maxText)}`);
  }
  const insecure = readInsecure(flags.insecure, env.DINOFLEET_INSECURE);
  const tlsDir = pick(flags['tls-dir'], env.DINOFLEET_TLS_DIR);
  // Throws the shared messages for the combinations that need no file ("exclude each
  // other", "no TLS material: pass --tls-dir …"); a lone --tls-dir is loaded by main.ts.
  if (insecure || tlsDir === undefined) transportSecurityFromFlags({ tlsDir, insecure });
  return {
    listen,
    metricsListen,
    ...(readyFile !== undefined && { readyFile }),
    logLevel: logLevel as LogLevel,
    maxSnapshotBytes,
    ...(tlsDir !== undefined && { tlsDir }),
    insecure,
  };
}
