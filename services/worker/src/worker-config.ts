/**
 * The worker's command line and environment (docs/cluster.md, "Processes"): every flag
 * also reads an environment variable, the flag wins, and a bad value fails at start with a
 * message that names the flag and what is allowed.
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { COMPUTE_BACKENDS, parseComputeBackend } from '@dinofleet/compute';
import type { ComputeBackend } from '@dinofleet/compute';
import { resolveS3Config } from '@dinofleet/data';
import type { S3Config } from '@dinofleet/data';
import { TlsConfigError, splitHostPort, transportSecurityFromFlags } from '@dinofleet/proto';
import type { HostPort, TransportSecurity } from '@dinofleet/proto';
import { LogLevel } from '@dinofleet/telemetry';

/** One line on how to run the worker. */
export const WORKER_USAGE =
  'usage: worker --coordinator host:port (--tls-dir dir | --insecure) [--worker-id id] [--listen host:port] [--data-listen host:port] [--advertise-host host] ' +
  `[--backend ${COMPUTE_BACKENDS.join('|')}] [--fetch-concurrency n] [--loader-threads n] [--prefetch-mb n] [--metrics-listen host:port] [--ready-file path] [--log-level level]`;

/** The resolved settings of a worker process. */
export interface WorkerConfig {
  /** "host:port" of the coordinator. Required. */
  readonly coordinator: string;
  /**
   * How every connection of the worker is secured (docs/security.md): mutual TLS with the
   * certificates of `--tls-dir` (ca.crt, tls.crt, tls.key; checked at start), or plaintext
   * with `--insecure`. Exactly one of the two is required.
   */
  readonly security: TransportSecurity;
  /** Stable worker id. @default hostname + pid */
  readonly workerId: string;
  /** Collective gRPC server address. @default "127.0.0.1:0" */
  readonly listen: string;
  /**
   * "host:port" of the Collective endpoint's TCP data listener: peers dial it (at the
   * advertised host) after an OpenDataLink call on `listen`, for the all-reduce's data
   * links. Port 0 picks a free one; fix it where a NetworkPolicy must allow it.
   * @default the host part of `listen`, port 0
   */
  readonly dataListen: string;
  /** Host peers dial. @default the host part of `listen` */
  readonly advertiseHost: string;
  /** @default 'wasm' */
  readonly backend: ComputeBackend;
  /** Image objects in flight, 1..1024. @default 16 */
  readonly fetchConcurrency: number;
  /** Threads that decode and crop images, 1..256. @default the machine's available parallelism */
  readonly loaderThreads: number;
  /** Bytes of batches loaded ahead of the step, 1 MiB..1 TiB (`--prefetch-mb`). @default 512 MiB */
  readonly prefetchBytes: number;
  /** `/metrics` and `/healthz` address. @default "127.0.0.1:0" */
  readonly metricsListen: string;
  /** Where to write the ready JSON, or null. @default null */
  readonly readyFile: string | null;
  /** @default 'info' */
  readonly logLevel: LogLevel;
}

/** Default `--prefetch-mb`: 512 MiB, about 4 batches of 64 images in 224-pixel multi-crop. */
export const DEFAULT_PREFETCH_MB = 512;

/** A bad flag or environment variable; the message names it. */
export class WorkerConfigError extends Error {
  override readonly name = 'WorkerConfigError';
  readonly code = 'INVALID_ARGUMENT';
}

const FLAGS = {
  coordinator: { type: 'string', env: 'DINOFLEET_COORDINATOR' },
  'tls-dir': { type: 'string', env: 'DINOFLEET_TLS_DIR' },
  insecure: { type: 'boolean', env: 'DINOFLEET_INSECURE' },
  'worker-id': { type: 'string', env: 'DINOFLEET_WORKER_ID' },
  listen: { type: 'string', env: 'DINOFLEET_LISTEN' },
  'data-listen': { type: 'string', env: 'DINOFLEET_DATA_LISTEN' },
  'advertise-host': { type: 'string', env: 'DINOFLEET_ADVERTISE_HOST' },
  backend: { type: 'string', env: 'DINOFLEET_BACKEND' },
  'fetch-concurrency': { type: 'string', env: 'DINOFLEET_FETCH_CONCURRENCY' },
  'loader-threads': { type: 'string', env: 'DINOFLEET_LOADER_THREADS' },
  'prefetch-mb': { type: 'string', env: 'DINOFLEET_PREFETCH_MB' },
  'metrics-listen': { type: 'string', env: 'DINOFLEET_METRICS_LISTEN' },
  'ready-file': { type: 'string', env: 'DINOFLEET_READY_FILE' },
  'log-level': { type: 'string', env: 'DINOFLEET_LOG_LEVEL' },
} as const;
type FlagName = keyof typeof FLAGS;

/** Splits "host:port" (IPv6 in brackets allowed), checking the port. */
export function parseHostPort(value: string, flag: string): HostPort {
  const parsed = splitHostPort(value);
  if (parsed === undefined) throw new WorkerConfigError(`--${flag} must be host:port with a port in 0..65535, got ${JSON.stringify(value)}`);
  return parsed;
}

/**
 * Reads the flags in `argv` (without node and the script) and the environment.
 * @throws WorkerConfigError naming the bad flag (also for an unknown flag).
 */
export function resolveWorkerConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env, defaultWorkerId = 'worker'): WorkerConfig {
  let values: Partial<Record<FlagName, string | boolean>>;
  try {
    const options = Object.fromEntries(Object.entries(FLAGS).map(([name, flag]) => [name, { type: flag.type }]));
    values = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new WorkerConfigError(err instanceof Error ? err.message : String(err), { cause: err });
  }
  const read = (name: FlagName): string | undefined => {
    const flag = values[name];
    const value = typeof flag === 'string' ? flag : env[FLAGS[name].env];
    return value === undefined || value === '' ? undefined : value;
  };
  const coordinator = read('coordinator');
  if (coordinator === undefined) throw new WorkerConfigError(`--coordinator (or ${FLAGS.coordinator.env}) is required: the coordinator's host:port`);
  parseHostPort(coordinator, 'coordinator');
  const listen = read('listen') ?? '127.0.0.1:0';
  const listenHost = parseHostPort(listen, 'listen').host;
  // The host as written (an IPv6 one keeps its brackets), with any free port.
  const dataListen = read('data-listen') ?? `${listen.slice(0, listen.lastIndexOf(':'))}:0`;
  parseHostPort(dataListen, 'data-listen');
  const metricsListen = read('metrics-listen') ?? '127.0.0.1:0';
  parseHostPort(metricsListen, 'metrics-listen');
  let backend: ComputeBackend;
  try {
    backend = parseComputeBackend(read('backend') ?? 'wasm');
  } catch (err) {
    throw new WorkerConfigError(`--backend: ${err instanceof Error ? err.message : String(err)}`);
  }
  const concurrencyText = read('fetch-concurrency') ?? '16';
  const fetchConcurrency = Number(concurrencyText);
  if (!/^\d+$/.test(concurrencyText) || fetchConcurrency < 1 || fetchConcurrency > 1024) {
    throw new WorkerConfigError(`--fetch-concurrency must be an integer in 1..1024, got ${JSON.stringify(concurrencyText)}`);
  }
  const integer = (flag: FlagName, fallback: number, min: number, max: number): number => {
    const text = read(flag);
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < min || value > max) {
      throw new WorkerConfigError(`--${flag} (or ${FLAGS[flag].env}) must be an integer in ${min}..${max}, got ${JSON.stringify(text)}`);
    }
    return value;
  };
  const loaderThreads = integer('loader-threads', availableParallelism(), 1, 256);
  const prefetchBytes = integer('prefetch-mb', DEFAULT_PREFETCH_MB, 1, 1024 * 1024) * 1024 * 1024;
  const logLevelText = read('log-level') ?? LogLevel.Info;
  const logLevel = Object.values(LogLevel).find((l) => l === logLevelText);
  if (logLevel === undefined) {
    throw new WorkerConfigError(`--log-level must be one of ${Object.values(LogLevel).join(', ')}, got ${JSON.stringify(logLevelText)}`);
  }
  const advertiseHost = read('advertise-host') ?? (listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost);
  // Last: it reads files, and a plain typo elsewhere should be reported first.
  const security = resolveSecurity(values.insecure === true, read('tls-dir'), env);
  return {
    coordinator,
    security,
    workerId: read('worker-id') ?? defaultWorkerId,
    listen,
    dataListen,
    advertiseHost,
    backend,
    fetchConcurrency,
    loaderThreads,
    prefetchBytes,
    metricsListen,
    readyFile: read('ready-file') ?? null,
    logLevel,
  };
}

/**
 * `--tls-dir` / `--insecure` (or DINOFLEET_TLS_DIR / DINOFLEET_INSECURE, "1" or "true"):
 * exactly one. The TLS directory is read and checked now, so a bad one fails at start.
 */
function resolveSecurity(insecureFlag: boolean, tlsDir: string | undefined, env: NodeJS.ProcessEnv): TransportSecurity {
  let insecure = insecureFlag;
  const insecureEnv = env[FLAGS.insecure.env]?.trim().toLowerCase();
  if (!insecure && insecureEnv !== undefined && insecureEnv !== '') {
    if (insecureEnv === '1' || insecureEnv === 'true') insecure = true;
    else if (insecureEnv !== '0' && insecureEnv !== 'false') {
      throw new WorkerConfigError(`${FLAGS.insecure.env} must be "1", "true", "0" or "false", got ${JSON.stringify(env[FLAGS.insecure.env])}`);
    }
  }
  try {
    return transportSecurityFromFlags({ tlsDir, insecure });
  } catch (err) {
    if (err instanceof TlsConfigError) throw new WorkerConfigError(err.message, { cause: err });
    throw err;
  }
}

/** Attempts per S3 request inside the SDK for a worker (docs/cluster.md, worker item 9). */
export const WORKER_S3_MAX_ATTEMPTS = 5;

/**
 * The worker's S3 settings: `resolveS3Config` of the environment, with the SDK's standard
 * retries raised to {@link WORKER_S3_MAX_ATTEMPTS} attempts unless
 * `DINOFLEET_S3_MAX_ATTEMPTS` says otherwise.
 */
export function resolveWorkerS3Config(env: NodeJS.ProcessEnv = process.env): S3Config {
  const explicit = env.DINOFLEET_S3_MAX_ATTEMPTS !== undefined && env.DINOFLEET_S3_MAX_ATTEMPTS !== '';
  return resolveS3Config(explicit ? {} : { maxAttempts: WORKER_S3_MAX_ATTEMPTS }, env);
}
