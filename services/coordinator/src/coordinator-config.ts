/**
 * The coordinator's flags (docs/cluster.md "coordinator"): parsed by `main.ts` with
 * `parseArgs`, each also read from its environment variable (the flag wins), resolved and
 * checked here so a bad value stops start-up with a message naming the flag.
 */
import { transportSecurityFromFlags } from '@dinofleet/proto';
import { LogLevel } from '@dinofleet/telemetry';

/** One usage line for errors and `--help`. */
export const COORDINATOR_USAGE =
  'usage: coordinator --redis-url redis://host:port --teacher-sync-address host:port [--redis-prefix p] [--listen host:port] ' +
  '[--metrics-listen host:port] [--ready-file path] [--log-level debug|info|warn|error] [--max-running-jobs n] [--scaler none|local|kubernetes] ' +
  '[--k8s-statefulset name] [--k8s-namespace ns] [--kubeconfig path] [--initial-workers n] [--worker-backend wasm|cpu|tensorflow] [--worker-log-dir dir] [--worker-wait-seconds s] [--heartbeat-timeout-seconds s] ' +
  '(--tls-dir dir --api-tokens file | --insecure) [--max-spec-bytes n] [--max-queued-jobs-per-caller n]';

/** `--max-spec-bytes` when none is given: 256 KiB. */
export const DEFAULT_MAX_SPEC_BYTES = 262_144;
/** Range of `--max-spec-bytes`. */
export const MAX_SPEC_BYTES_RANGE = { min: 1024, max: 16 * 1024 * 1024 } as const;
/** `--max-queued-jobs-per-caller` when none is given. */
export const DEFAULT_MAX_QUEUED_JOBS_PER_CALLER = 32;
/** Range of `--max-queued-jobs-per-caller`. */
export const MAX_QUEUED_JOBS_PER_CALLER_RANGE = { min: 1, max: 100_000 } as const;

/** The scalers `--scaler` selects (docs/cluster.md "coordinator"). */
export const COORDINATOR_SCALERS = ['none', 'local', 'kubernetes'] as const;
/** One of {@link COORDINATOR_SCALERS}. */
export type CoordinatorScalerKind = (typeof COORDINATOR_SCALERS)[number];

/** `--k8s-statefulset`, `--k8s-namespace`, `--kubeconfig`, resolved. */
export interface CoordinatorKubernetesConfig {
  /** The worker StatefulSet whose scale subresource the coordinator sets. */
  readonly statefulSet: string;
  /** Its namespace. */
  readonly namespace: string;
  /** A kubeconfig file instead of the pod's in-cluster configuration; undefined: in-cluster. */
  readonly kubeconfigPath: string | undefined;
}

/** The flags as `parseArgs` returns them. */
export type CoordinatorFlags = Partial<Record<string, string | boolean | undefined>>;

/** The resolved coordinator settings. */
export interface CoordinatorConfig {
  readonly redisUrl: string;
  readonly redisPrefix: string;
  readonly teacherSyncAddress: string;
  readonly listen: string;
  readonly metricsListen: string;
  readonly readyFile: string | undefined;
  readonly logLevel: LogLevel;
  readonly maxRunningJobs: number;
  readonly scaler: CoordinatorScalerKind;
  /** The Kubernetes scaler's settings; undefined unless `scaler` is 'kubernetes'. */
  readonly kubernetes: CoordinatorKubernetesConfig | undefined;
  readonly initialWorkers: number;
  readonly workerBackend: 'wasm' | 'cpu' | 'tensorflow';
  readonly workerLogDir: string | undefined;
  readonly workerWaitSeconds: number;
  readonly heartbeatTimeoutSeconds: number;
  /**
   * `--tls-dir`: the directory with ca.crt, tls.crt and tls.key (read by `main.ts` with
   * `transportSecurityFromFlags`); undefined exactly when {@link insecure}.
   */
  readonly tlsDir: string | undefined;
  /** `--insecure`: plaintext, every caller is an anonymous admin. */
  readonly insecure: boolean;
  /** `--api-tokens`: the hashed tokens file (read by `main.ts`); undefined exactly when {@link insecure}. */
  readonly apiTokensFile: string | undefined;
  /** `--max-spec-bytes`: largest SubmitJob spec, bytes of UTF-8, in [1024, 16 MiB]. */
  readonly maxSpecBytes: number;
  /** `--max-queued-jobs-per-caller`: jobs one caller may have waiting (QUEUED or STARTING), in [1, 100000]. */
  readonly maxQueuedJobsPerCaller: number;
}

/** The `parseArgs` option table. */
export const COORDINATOR_FLAG_OPTIONS = {
  'redis-url': { type: 'string' },
  'redis-prefix': { type: 'string' },
  'teacher-sync-address': { type: 'string' },
  listen: { type: 'string' },
  'metrics-listen': { type: 'string' },
  'ready-file': { type: 'string' },
  'log-level': { type: 'string' },
  'max-running-jobs': { type: 'string' },
  scaler: { type: 'string' },
  'k8s-statefulset': { type: 'string' },
  'k8s-namespace': { type: 'string' },
  kubeconfig: { type: 'string' },
  'initial-workers': { type: 'string' },
  'worker-backend': { type: 'string' },
  'worker-log-dir': { type: 'string' },
  'worker-wait-seconds': { type: 'string' },
  'heartbeat-timeout-seconds': { type: 'string' },
  'tls-dir': { type: 'string' },
  insecure: { type: 'boolean' },
  'api-tokens': { type: 'string' },
  'max-spec-bytes': { type: 'string' },
  'max-queued-jobs-per-caller': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const ENV: Readonly<Record<string, string>> = {
  'redis-url': 'DINOFLEET_REDIS_URL',
  'redis-prefix': 'DINOFLEET_REDIS_PREFIX',
  'teacher-sync-address': 'DINOFLEET_TEACHER_SYNC_ADDRESS',
  listen: 'DINOFLEET_LISTEN',
  'metrics-listen': 'DINOFLEET_METRICS_LISTEN',
  'ready-file': 'DINOFLEET_READY_FILE',
  'log-level': 'DINOFLEET_LOG_LEVEL',
  scaler: 'DINOFLEET_SCALER',
  'k8s-statefulset': 'DINOFLEET_K8S_STATEFULSET',
  'k8s-namespace': 'DINOFLEET_K8S_NAMESPACE',
  kubeconfig: 'DINOFLEET_KUBECONFIG',
  'tls-dir': 'DINOFLEET_TLS_DIR',
  'api-tokens': 'DINOFLEET_API_TOKENS',
  'max-spec-bytes': 'DINOFLEET_MAX_SPEC_BYTES',
  'max-queued-jobs-per-caller': 'DINOFLEET_MAX_QUEUED_JOBS_PER_CALLER',
};

/** A DNS-1123 subdomain (StatefulSet names) and label (namespaces), as Kubernetes checks them. */
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const HOST_PORT = /^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/;

/** Resolves flags + environment into a {@link CoordinatorConfig}; throws RangeError naming the flag. */
export function resolveCoordinatorConfig(flags: CoordinatorFlags, env: NodeJS.ProcessEnv = process.env): CoordinatorConfig {
  const read = (flag: string): string | undefined => {
    const value = flags[flag];
    if (typeof value === 'string') return value;
    const name = ENV[flag];
    const fromEnv = name === undefined ? undefined : env[name];
    return fromEnv === undefined || fromEnv === '' ? undefined : fromEnv;
  };
  const required = (flag: string): string => {
    const value = read(flag);
    if (value === undefined) throw new RangeError(`--${flag}${ENV[flag] === undefined ? '' : ` (or ${ENV[flag]})`} is required`);
    return value;
  };
  const address = (flag: string, fallback: string): string => {
    const value = read(flag) ?? fallback;
    if (!HOST_PORT.test(value)) throw new RangeError(`--${flag} must be host:port, got ${JSON.stringify(value)}`);
    return value;
  };
  const integer = (flag: string, fallback: number, min: number, max: number): number => {
    const raw = read(flag);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) throw new RangeError(`--${flag} must be an integer in [${min}, ${max}], got ${JSON.stringify(raw)}`);
    return n;
  };
  const oneOf = <T extends string>(flag: string, allowed: readonly T[], fallback: T): T => {
    const value = read(flag) ?? fallback;
    if (!(allowed as readonly string[]).includes(value)) throw new RangeError(`--${flag} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
    return value as T;
  };
  const redisUrl = required('redis-url');
  if (!/^rediss?:\/\//.test(redisUrl)) throw new RangeError(`--redis-url must be redis://host:port, got ${JSON.stringify(redisUrl)}`);
  const teacherSyncAddress = required('teacher-sync-address');
  if (!HOST_PORT.test(teacherSyncAddress)) throw new RangeError(`--teacher-sync-address must be host:port, got ${JSON.stringify(teacherSyncAddress)}`);
  const scaler = oneOf('scaler', COORDINATOR_SCALERS, 'none');
  let kubernetes: CoordinatorKubernetesConfig | undefined;
  if (scaler === 'kubernetes') {
    const needed = (flag: string, what: string): string => {
      const value = read(flag);
      if (value === undefined) throw new RangeError(`--${flag} (or ${ENV[flag]}) is required with --scaler kubernetes: ${what}`);
      return value;
    };
    const statefulSet = needed('k8s-statefulset', "the worker StatefulSet's name (the Helm chart sets it)");
    if (statefulSet.length > 253 || !DNS_SUBDOMAIN.test(statefulSet)) {
      throw new RangeError(`--k8s-statefulset must be a StatefulSet name (lowercase letters, digits, '-', '.', at most 253), got ${JSON.stringify(statefulSet)}`);
    }
    const namespace = needed('k8s-namespace', "the StatefulSet's namespace (the Helm chart sets it from the pod's namespace)");
    if (namespace.length > 63 || !DNS_LABEL.test(namespace)) {
      throw new RangeError(`--k8s-namespace must be a namespace name (lowercase letters, digits, '-', at most 63), got ${JSON.stringify(namespace)}`);
    }
    kubernetes = { statefulSet, namespace, kubeconfigPath: read('kubeconfig') };
  } else if (read('kubeconfig') !== undefined && flags['kubeconfig'] !== undefined) {
    throw new RangeError(`--kubeconfig is for --scaler kubernetes, got --scaler ${scaler}`);
  }
  const { tlsDir, insecure, apiTokensFile } = resolveSecurityFlags(flags, env, read);
  const redisPrefix = read('redis-prefix') ?? 'dinofleet';
  if (!/^[A-Za-z0-9_.{}-]{1,64}$/.test(redisPrefix)) throw new RangeError(`--redis-prefix must be 1-64 letters, digits, '_', '.', '-', got ${JSON.stringify(redisPrefix)}`);
  return {
    redisUrl,
    redisPrefix,
    teacherSyncAddress,
    listen: address('listen', '127.0.0.1:0'),
    metricsListen: address('metrics-listen', '127.0.0.1:0'),
    readyFile: read('ready-file'),
    logLevel: oneOf('log-level', [LogLevel.Debug, LogLevel.Info, LogLevel.Warn, LogLevel.Error], LogLevel.Info),
    maxRunningJobs: integer('max-running-jobs', 1, 1, 1000),
    scaler,
    kubernetes,
    initialWorkers: integer('initial-workers', 0, 0, 1024),
    workerBackend: oneOf('worker-backend', ['wasm', 'cpu', 'tensorflow'] as const, 'wasm'),
    workerLogDir: read('worker-log-dir'),
    workerWaitSeconds: integer('worker-wait-seconds', 300, 1, 86_400),
    heartbeatTimeoutSeconds: integer('heartbeat-timeout-seconds', 10, 1, 3600),
    tlsDir,
    insecure,
    apiTokensFile,
    maxSpecBytes: integer('max-spec-bytes', DEFAULT_MAX_SPEC_BYTES, MAX_SPEC_BYTES_RANGE.min, MAX_SPEC_BYTES_RANGE.max),
    maxQueuedJobsPerCaller: integer(
      'max-queued-jobs-per-caller',
      DEFAULT_MAX_QUEUED_JOBS_PER_CALLER,
      MAX_QUEUED_JOBS_PER_CALLER_RANGE.min,
      MAX_QUEUED_JOBS_PER_CALLER_RANGE.max,
    ),
  };
}

/** `--insecure` / `DINOFLEET_INSECURE` ("1"/"true" on, "0"/"false"/"" off). */
function readInsecure(flags: CoordinatorFlags, env: NodeJS.ProcessEnv): boolean {
  if (flags.insecure === true) return true;
  const raw = (env.DINOFLEET_INSECURE ?? '').trim().toLowerCase();
  if (raw === '' || raw === '0' || raw === 'false') return false;
  if (raw === '1' || raw === 'true') return true;
  throw new RangeError(`DINOFLEET_INSECURE must be 1, true, 0 or false, got ${JSON.stringify(env.DINOFLEET_INSECURE)}`);
}

/**
 * The transport and token flags, checked without reading any file (the files are read by
 * `main.ts`, so a chart's flags resolve on a machine without its Secrets): exactly one of
 * `--tls-dir` and `--insecure`, and `--api-tokens` with `--tls-dir` only.
 */
function resolveSecurityFlags(
  flags: CoordinatorFlags,
  env: NodeJS.ProcessEnv,
  read: (flag: string) => string | undefined,
): { tlsDir: string | undefined; insecure: boolean; apiTokensFile: string | undefined } {
  const insecure = readInsecure(flags, env);
  const tlsDir = read('tls-dir');
  const apiTokensFile = read('api-tokens');
  // Throws the shared messages ("exclude each other", "no TLS material: pass --tls-dir …")
  // for the combinations that need no file; a lone --tls-dir is loaded by main.ts.
  if (insecure || tlsDir === undefined) transportSecurityFromFlags({ tlsDir, insecure });
  if (insecure && apiTokensFile !== undefined) {
    throw new RangeError('--api-tokens has no effect with --insecure (plaintext carries no authentication); drop one');
  }
  if (!insecure && apiTokensFile === undefined) {
    throw new RangeError(
      '--api-tokens FILE (or DINOFLEET_API_TOKENS) is required with --tls-dir: the hashed tokens of the job API\'s callers, one "name scope sha256:<hex>" per line; create one with `dinofleet token create`',
    );
  }
  return { tlsDir: insecure ? undefined : tlsDir, insecure, apiTokensFile };
}
