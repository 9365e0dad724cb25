/**
 * teacher-sync's command line (docs/cluster.md, "Processes"): each flag also reads an
 * environment variable; the flag wins.
 */
import { InvalidArgumentError } from '@dinofleet/proto';
import { LogLevel } from '@dinofleet/telemetry';

import { parseHostPort } from './teacher-sync-server.ts';
import { DEFAULT_MAX_SNAPSHOT_BYTES } from './teacher-sync-service.ts';

/** The one-line usage printed with every flag error. */
export const TEACHER_SYNC_USAGE =
  'usage: teacher-sync [--listen host:port] [--metrics-listen host:port] [--ready-file path] [--log-level debug|info|warn|error|silent] [--max-snapshot-bytes N]';

/** Flag values as `parseArgs` returns them. */
export interface TeacherSyncFlags {
  readonly listen?: string | undefined;
  readonly 'metrics-listen'?: string | undefined;
  readonly 'ready-file'?: string | undefined;
  readonly 'log-level'?: string | undefined;
  readonly 'max-snapshot-bytes'?: string | undefined;
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
}

function pick(flag: string | undefined, env: string | undefined): string | undefined {
  if (flag !== undefined) return flag;
  return env === undefined || env.trim() === '' ? undefined : env.trim();
}

/**
 * Flags, then `DINOFLEET_LISTEN`, `DINOFLEET_METRICS_LISTEN`, `DINOFLEET_READY_FILE`,
 * `DINOFLEET_LOG_LEVEL`, `DINOFLEET_MAX_SNAPSHOT_BYTES`, then defaults.
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
  return { listen, metricsListen, ...(readyFile !== undefined && { readyFile }), logLevel: logLevel as LogLevel, maxSnapshotBytes };
}
