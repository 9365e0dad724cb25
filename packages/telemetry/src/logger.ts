import { toLoggable } from './redact.ts';
import type { Loggable } from './redact.ts';

/** Log levels, least to most severe; `silent` writes nothing. */
export const LogLevel = {
  Debug: 'debug',
  Info: 'info',
  Warn: 'warn',
  Error: 'error',
  Silent: 'silent',
} as const;
export type LogLevel = (typeof LogLevel)[keyof typeof LogLevel];

const SEVERITY: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: Number.POSITIVE_INFINITY };

/** Structured fields of a log line; values of any type, secrets are redacted on write. */
export type LogFields = Readonly<Record<string, unknown>>;

/** Where lines go: anything with a `write(string)`, e.g. `process.stderr` or a test collector. */
export interface LogSink {
  write(line: string): unknown;
}

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** The component, written as `name` on every line, e.g. `coordinator` or `worker`. */
  readonly name: string;
  /** The least severe level written. @default 'info' */
  readonly level?: LogLevel;
  /** Where JSON lines are written. @default process.stderr */
  readonly stream?: LogSink;
  /** Fields bound to every line (e.g. `{ job, rank }`). @default {} */
  readonly fields?: LogFields;
  /** The clock for the `time` field. @default () => new Date() */
  readonly now?: () => Date;
}

/**
 * A JSON-lines logger. Each call writes one line
 * `{"time":"<ISO 8601>","level":"info","name":"worker","msg":"…",…fields}`; fields that
 * would overwrite `time`, `level`, `name` or `msg` are written with a leading `_`. Secrets are
 * redacted (see `toLoggable`): secret-named fields at any depth, PEM private keys, bearer
 * tokens and URL passwords in any string, the message included.
 */
export interface Logger {
  /** The least severe level this logger writes. */
  readonly level: LogLevel;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** Whether a line at `level` would be written (to skip building costly fields). */
  isLevelEnabled(level: LogLevel): boolean;
  /** A logger with the same name, level and stream whose lines also carry `fields` (later fields win). */
  child(fields: LogFields): Logger;
}

const RESERVED = new Set(['time', 'level', 'name', 'msg']);

/** Creates a {@link Logger}. @throws RangeError for an unknown level. */
export function createLogger(options: LoggerOptions): Logger {
  const { name, level = LogLevel.Info, stream = process.stderr, fields = {}, now = () => new Date() } = options;
  if (!Object.hasOwn(SEVERITY, level)) throw new RangeError(`level must be one of ${Object.keys(SEVERITY).join(', ')}, got ${String(level)}`);
  return makeLogger({ name, level, stream, now, bound: bind({}, fields) });
}

interface LoggerConfig {
  readonly name: string;
  readonly level: LogLevel;
  readonly stream: LogSink;
  readonly now: () => Date;
  /** Bound fields, already redacted: a snapshot taken when they were bound. */
  readonly bound: Readonly<Record<string, Loggable>>;
}

function bind(bound: Readonly<Record<string, Loggable>>, fields: LogFields): Record<string, Loggable> {
  const redacted = toLoggable(fields);
  return { ...bound, ...(isRecord(redacted) ? redacted : {}) };
}

function isRecord(value: Loggable | undefined): value is { [key: string]: Loggable } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function makeLogger(config: LoggerConfig): Logger {
  const threshold = SEVERITY[config.level];
  const write = (level: Exclude<LogLevel, 'silent'>, msg: string, fields: LogFields | undefined): void => {
    if (SEVERITY[level] < threshold) return;
    const line: Record<string, Loggable> = {
      time: config.now().toISOString(),
      level,
      name: config.name,
      msg: toLoggable(msg) ?? '',
    };
    const own = fields === undefined ? config.bound : bind(config.bound, fields);
    for (const [key, value] of Object.entries(own)) line[RESERVED.has(key) ? `_${key}` : key] = value;
    config.stream.write(`${JSON.stringify(line)}\n`);
  };
  return {
    level: config.level,
    debug: (msg, fields) => write('debug', msg, fields),
    info: (msg, fields) => write('info', msg, fields),
    warn: (msg, fields) => write('warn', msg, fields),
    error: (msg, fields) => write('error', msg, fields),
    isLevelEnabled: (level) => SEVERITY[level] >= threshold && level !== 'silent',
    child: (fields) => makeLogger({ ...config, bound: bind(config.bound, fields) }),
  };
}
