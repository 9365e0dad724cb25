/**
 * A whole fleet on loopback: Redis and S3 (unless given), teacher-sync, and the coordinator
 * whose local scaler starts the workers (docs/cluster.md). Teacher-sync and the coordinator
 * listen on ports fixed at start, so either can be killed and started again at the same
 * address (what the chaos benchmark and the failure tests do); Redis runs append-only so a
 * restart keeps its data.
 *
 * Secure by default (docs/security.md): every service gets `--tls-dir` (development
 * certificates of a CA made for this fleet) and the coordinator `--api-tokens` (one token
 * per scope); `insecure: true` passes `--insecure` instead. Clients of the fleet connect
 * with {@link LocalFleet.clientOptions}.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';

import { channelCredentials, INSECURE, loadTlsDir } from '@dinofleet/proto';
import type { ApiScope, CreateClientOptions, TransportSecurity } from '@dinofleet/proto';

import { ensureLocalFleetCredentials } from './fleet-credentials.ts';
import type { LocalFleetTokens } from './fleet-credentials.ts';
import { findFreePort } from './free-port.ts';
import { startPrometheus } from './prometheus-server.ts';
import type { MetricsTarget, PrometheusServer } from './prometheus-server.ts';
import { listWorkerProcesses } from './worker-processes.ts';
import type { WorkerProcess } from './worker-processes.ts';
import { startRedis } from './redis-server.ts';
import type { RedisServer } from './redis-server.ts';
import { startS3 } from './s3-server.ts';
import type { S3Server } from './s3-server.ts';
import { spawnService } from './service-process.ts';
import type { ServiceProcess } from './service-process.ts';

/** Options of {@link startLocalFleet}. */
export interface LocalFleetOptions {
  /** Workers the coordinator's local scaler starts at boot (`--initial-workers`), ≥ 0. */
  readonly workers: number;
  /** A running Redis to use. @default a fresh `redis-server` ({@link startRedis}) */
  readonly redisUrl?: string;
  /** Environment pointing at an S3 endpoint (see `S3Server.env()`). @default a fresh s3rver ({@link startS3}) */
  readonly s3?: { readonly env: Readonly<Record<string, string>> };
  /** Compute backend of the workers (`--worker-backend`). @default 'wasm' */
  readonly backend?: 'wasm' | 'cpu' | 'tensorflow';
  /**
   * Directory for `coordinator.log`, `teacher-sync.log` and the workers' `<id>.log`.
   * @default none: output kept in memory only (see `ServiceProcess.logTail()`)
   */
  readonly logDir?: string;
  /** Extra environment for every service, merged over `process.env`. @default none */
  readonly env?: Readonly<Record<string, string>>;
  /** Time each service has to become ready, ms. @default 90000 */
  readonly readyTimeoutMs?: number;
  /** Extra coordinator flags (e.g. `['--heartbeat-timeout-seconds', '5']`). @default none */
  readonly coordinatorArgs?: readonly string[];
  /**
   * Also start a Prometheus that scrapes every process of the fleet (workers as they come
   * and go) with the alert rules of `deploy/prometheus/rules.yaml` (`dinofleet up
   * --prometheus`); stopped with the fleet. Needs Debian's `prometheus`
   * (`scripts/ensure-prometheus.sh`). @default none
   */
  readonly prometheus?: LocalPrometheusOptions;
  /**
   * Plaintext without authentication: `--insecure` to every service instead of `--tls-dir`
   * and `--api-tokens` (each logs a warning). @default false
   */
  readonly insecure?: boolean;
  /**
   * Directory for the fleet's credentials: `tls/` (ca.crt, ca.key, tls.crt, tls.key),
   * `api-tokens` (the coordinator's tokens file) and the tokens in `token` (admin),
   * `token.submit` and `token.read` (mode 0600). What is there and usable is reused (see
   * `ensureLocalFleetCredentials`); `dinofleet up` uses `.dinofleet`. Unused with
   * {@link LocalFleetOptions.insecure}.
   * @default a temporary directory, removed by {@link LocalFleet.stop}
   */
  readonly credentialsDir?: string;
}

/** Options of the fleet's Prometheus ({@link LocalFleetOptions.prometheus}). */
export interface LocalPrometheusOptions {
  /** Scrape and rule evaluation interval, seconds. @default 5 */
  readonly scrapeIntervalSeconds?: number;
  /** Rule files. @default deploy/prometheus/rules.yaml */
  readonly rulesFiles?: readonly string[];
  /** Port of its UI and API on 127.0.0.1. @default a free port */
  readonly port?: number;
}

/** A service of the fleet that {@link LocalFleet.restart} can kill and start again. */
export type RestartableService = 'coordinator' | 'teacher-sync' | 'redis';

/** A running local fleet. */
export interface LocalFleet {
  /** JobService / WorkerControl `host:port`. */
  readonly coordinatorAddress: string;
  /** TeacherSync `host:port`. */
  readonly teacherSyncAddress: string;
  /** Redis URL the coordinator uses. */
  readonly redisUrl: string;
  /** S3 environment every service got. */
  readonly s3Env: Record<string, string>;
  /** The Redis this fleet started, `null` when `redisUrl` was given. */
  readonly redis: RedisServer | null;
  /** The S3 server this fleet started, `null` when `s3` was given. */
  readonly s3: S3Server | null;
  /** The coordinator process (the newest one after a {@link LocalFleet.restart}). */
  readonly coordinator: ServiceProcess;
  /** The teacher-sync process (the newest one after a {@link LocalFleet.restart}). */
  readonly teacherSync: ServiceProcess;
  /**
   * Kills a service with `signal` (default SIGKILL: no chance to clean up), waits for it to
   * exit, and starts it again at the same address (Redis: same port and data directory,
   * only when this fleet started it). Resolves once the new one is ready.
   */
  restart(service: RestartableService, options?: { signal?: NodeJS.Signals; downMs?: number }): Promise<void>;
  /** Worker processes of this fleet now running (found by their `--coordinator` flag). */
  workers(): Promise<WorkerProcess[]>;
  /**
   * Every `/metrics` endpoint of the fleet now: the coordinator, teacher-sync (the newest
   * after a restart) and each worker that wrote its ready file.
   */
  metricsTargets(): Promise<MetricsTarget[]>;
  /** The fleet's Prometheus, `null` unless {@link LocalFleetOptions.prometheus} asked for one. */
  readonly prometheus: PrometheusServer | null;
  /** How the fleet's processes secure their connections: mutual TLS of {@link LocalFleet.tlsDir}, or insecure. */
  readonly security: TransportSecurity;
  /** The TLS directory every service got (`--tls-dir`), undefined when insecure. */
  readonly tlsDir: string | undefined;
  /** The job API's tokens, one per scope; undefined when insecure. */
  readonly tokens: LocalFleetTokens | undefined;
  /** The coordinator's `--api-tokens` file, undefined when insecure. */
  readonly apiTokensFile: string | undefined;
  /** Files holding each token alone (for `--token-file`), undefined when insecure. */
  readonly tokenFiles: Readonly<Record<ApiScope, string>> | undefined;
  /**
   * Options for `createClient` of a job API client (`JobServiceClient`): TLS verifying the
   * coordinator by the fleet CA, presenting the fleet certificate, and the token of `scope`
   * (plaintext when insecure). The fleet certificate also makes them fit the fleet-only
   * services (TeacherSync, WorkerControl), where the token is ignored.
   */
  clientOptions(scope?: ApiScope): CreateClientOptions;
  /**
   * Stops the coordinator (which stops its workers), teacher-sync, then the servers this
   * fleet started; runs every step even if one fails. Idempotent.
   */
  stop(): Promise<void>;
  /** Same as {@link LocalFleet.stop}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** The coordinator drains for 10 s and then stops its workers; give it room before SIGKILL. */
const COORDINATOR_STOP_TIMEOUT_MS = 30_000;

/** Runs every cleanup in order; throws an AggregateError of the ones that failed. */
async function runAll(steps: readonly (() => Promise<void>)[], what: string): Promise<void> {
  const failures: unknown[] = [];
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      failures.push(error);
    }
  }
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) throw new AggregateError(failures, what);
}

/** Starts a fleet: Redis and S3 when not given, teacher-sync, then the coordinator. */
export async function startLocalFleet(options: LocalFleetOptions): Promise<LocalFleet> {
  if (!Number.isInteger(options.workers) || options.workers < 0) {
    throw new RangeError(`workers must be an integer ≥ 0, got ${options.workers}`);
  }
  const logDir = options.logDir !== undefined ? resolvePath(options.logDir) : undefined;
  if (logDir !== undefined) await mkdir(logDir, { recursive: true });
  const readyTimeout = options.readyTimeoutMs !== undefined ? { readyTimeoutMs: options.readyTimeoutMs } : {};

  // Everything started so far, stopped in reverse if a later step fails.
  const cleanups: (() => Promise<void>)[] = [];
  // Last of all, once no process of the fleet needs its certificates any more.
  const finalCleanups: (() => Promise<void>)[] = [];
  try {
    const insecure = options.insecure === true;
    let credentials: Awaited<ReturnType<typeof ensureLocalFleetCredentials>> | undefined;
    if (!insecure) {
      let dir = options.credentialsDir !== undefined ? resolvePath(options.credentialsDir) : undefined;
      if (dir === undefined) {
        const temp = await mkdtemp(join(tmpdir(), 'dinofleet-fleet-credentials-'));
        finalCleanups.push(() => rm(temp, { recursive: true, force: true }));
        dir = temp;
      }
      credentials = await ensureLocalFleetCredentials(dir);
    }
    const security: TransportSecurity = credentials === undefined ? INSECURE : { kind: 'mtls', material: loadTlsDir(credentials.tlsDir) };
    // Flags for every service (the coordinator hands its own to the workers it starts). The
    // variables of the other choice are blanked (every service reads "" as unset), so that
    // a DINOFLEET_TLS_DIR or DINOFLEET_INSECURE in this process's environment cannot
    // contradict the flags.
    const securityArgs = credentials === undefined ? ['--insecure'] : ['--tls-dir', credentials.tlsDir];
    const securityEnv: Record<string, string> =
      credentials === undefined ? { DINOFLEET_TLS_DIR: '', DINOFLEET_API_TOKENS: '' } : { DINOFLEET_INSECURE: '' };
    const apiTokensArgs = credentials === undefined ? [] : ['--api-tokens', credentials.apiTokensFile];

    let redis: RedisServer | null = null;
    if (options.redisUrl === undefined) {
      redis = await startRedis({ appendOnly: true });
      cleanups.unshift(() => redis!.stop());
    }
    const redisUrl = options.redisUrl ?? redis!.url;

    let s3: S3Server | null = null;
    if (options.s3 === undefined) {
      s3 = await startS3();
      const started = s3;
      cleanups.unshift(() => started.stop());
    }
    const s3Env: Record<string, string> = { ...(options.s3?.env ?? s3!.env()) };
    const env = { ...options.env, ...s3Env, ...securityEnv };

    const teacherSyncListen = `127.0.0.1:${await findFreePort()}`;
    const startTeacherSync = (): Promise<ServiceProcess> =>
      spawnService('teacher-sync', {
        args: ['--listen', teacherSyncListen, ...securityArgs],
        env,
        ...readyTimeout,
        ...(logDir !== undefined && { logFile: join(logDir, 'teacher-sync.log') }),
      });
    let teacherSync = await startTeacherSync();
    cleanups.unshift(() => teacherSync.stop());

    const coordinatorListen = `127.0.0.1:${await findFreePort()}`;
    const startCoordinator = (initialWorkers: number): Promise<ServiceProcess> =>
      spawnService('coordinator', {
        args: [
          '--listen', coordinatorListen,
          ...securityArgs,
          ...apiTokensArgs,
          '--scaler', 'local',
          '--initial-workers', String(initialWorkers),
          '--teacher-sync-address', teacherSync.grpcAddress,
          '--redis-url', redisUrl,
          '--worker-backend', options.backend ?? 'wasm',
          ...(logDir !== undefined ? ['--worker-log-dir', logDir] : []),
          ...(options.coordinatorArgs ?? []),
        ],
        env,
        ...readyTimeout,
        ...(logDir !== undefined && { logFile: join(logDir, 'coordinator.log') }),
      });
    let coordinator = await startCoordinator(options.workers);
    cleanups.unshift(() => coordinator.stop(COORDINATOR_STOP_TIMEOUT_MS));
    // After the coordinator: its workers are stopped by it, but a killed coordinator
    // leaves them running (they wait to reconnect), so they are stopped here too.
    cleanups.push(async () => {
      const left = await listWorkerProcesses(coordinatorListen);
      for (const worker of left) process.kill(worker.pid, 'SIGKILL');
    });

    const restart = async (service: RestartableService, restartOptions: { signal?: NodeJS.Signals; downMs?: number } = {}): Promise<void> => {
      const signal = restartOptions.signal ?? 'SIGKILL';
      const pause = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, restartOptions.downMs ?? 0));
      switch (service) {
        case 'coordinator': {
          coordinator.kill(signal);
          await coordinator.exited;
          await pause();
          // The workers it started live on (a killed coordinator cannot stop them); the
          // new one's local scaler adopts them from the worker log directory.
          coordinator = await startCoordinator(0);
          return;
        }
        case 'teacher-sync':
          teacherSync.kill(signal);
          await teacherSync.exited;
          await pause();
          teacherSync = await startTeacherSync();
          return;
        case 'redis': {
          if (redis === null) throw new Error('restart(redis): this fleet did not start its Redis');
          const { port, dir } = redis;
          await redis.kill(signal);
          await pause();
          redis = await startRedis({ appendOnly: true, port, dir, removeDirOnStop: true });
          return;
        }
        default: {
          const unknown: never = service;
          throw new Error(`unknown service ${String(unknown)}`);
        }
      }
    };

    const metricsTargets = async (): Promise<MetricsTarget[]> => [
      { address: coordinator.metricsAddress, component: 'coordinator' },
      { address: teacherSync.metricsAddress, component: 'teacher-sync' },
      ...(await listWorkerProcesses(coordinatorListen)).flatMap((worker) =>
        worker.metricsAddress === undefined ? [] : [{ address: worker.metricsAddress, component: 'worker', labels: { worker_id: worker.workerId } }],
      ),
    ];
    let prometheus: PrometheusServer | null = null;
    if (options.prometheus !== undefined) {
      const settings = options.prometheus;
      prometheus = await startPrometheus({
        targets: metricsTargets,
        ...(settings.scrapeIntervalSeconds !== undefined && { scrapeIntervalSeconds: settings.scrapeIntervalSeconds }),
        ...(settings.rulesFiles !== undefined && { rulesFiles: settings.rulesFiles }),
        ...(settings.port !== undefined && { port: settings.port }),
        ...(logDir !== undefined && { logFile: join(logDir, 'prometheus.log') }),
      });
      const started = prometheus;
      // First to stop: it would only log scrape errors while the rest goes down.
      cleanups.unshift(() => started.stop());
    }

    let stopping: Promise<void> | undefined;
    const stop = (): Promise<void> => {
      stopping ??= runAll([...cleanups, ...finalCleanups], 'stopping the local fleet failed');
      return stopping;
    };
    return {
      coordinatorAddress: coordinatorListen,
      teacherSyncAddress: teacherSyncListen,
      redisUrl,
      s3Env,
      get redis() {
        return redis;
      },
      s3,
      get coordinator() {
        return coordinator;
      },
      get teacherSync() {
        return teacherSync;
      },
      restart,
      workers: () => listWorkerProcesses(coordinatorListen),
      metricsTargets,
      prometheus,
      security,
      tlsDir: credentials?.tlsDir,
      tokens: credentials?.tokens,
      apiTokensFile: credentials?.apiTokensFile,
      tokenFiles: credentials?.tokenFiles,
      clientOptions: (scope: ApiScope = 'admin') => ({
        credentials: channelCredentials(security, { token: credentials?.tokens[scope] }),
      }),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (error) {
    await runAll([...cleanups, ...finalCleanups], 'cleaning up a fleet that failed to start').catch(() => undefined);
    throw error;
  }
}
