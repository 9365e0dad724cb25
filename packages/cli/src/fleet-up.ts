/**
 * `dinofleet up`: a local fleet in the foreground. Writes `.dinofleet/fleet.json` so later
 * commands in the same directory find it, and stops everything on SIGINT/SIGTERM. Secure
 * unless `insecure`: the fleet's certificates (`.dinofleet/tls`) and API tokens
 * (`.dinofleet/api-tokens`, the admin token in `.dinofleet/token`) are made once and reused.
 */
import { join, relative } from 'node:path';

import { ensurePrometheusInstalled, startLocalFleet } from '@dinofleet/local';
import type { LocalFleet, ServiceProcess } from '@dinofleet/local';
import { INSECURE_WARNING } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';
import { FLEET_DIR_NAME, removeFleetFile, writeFleetFile } from './fleet-file.ts';

/** Options of {@link runFleetUp}. */
export interface FleetUpOptions {
  /** Workers the coordinator starts. */
  readonly workers: number;
  /** A running Redis; none: a fresh redis-server. */
  readonly redisUrl?: string;
  /** An S3 endpoint (credentials from `AWS_*` in `env`); none: a fresh s3rver. */
  readonly s3Endpoint?: string;
  /** Workers' compute backend. @default 'wasm' */
  readonly backend?: 'wasm' | 'cpu' | 'tensorflow';
  /** Directory for the services' logs. @default none (kept in memory) */
  readonly logDir?: string;
  /**
   * Also start Prometheus (Debian's `prometheus`, installed by scripts/ensure-prometheus.sh
   * when missing) scraping every process of the fleet with deploy/prometheus/rules.yaml;
   * stopped with the fleet. @default false
   */
  readonly prometheus?: boolean;
  /**
   * Plaintext without tokens (`--insecure` to every service). @default false: mutual TLS
   * with `.dinofleet/tls` and API tokens in `.dinofleet/api-tokens`
   */
  readonly insecure?: boolean;
  /** Where `.dinofleet/` (fleet.json, tls/, api-tokens, token) goes. */
  readonly cwd: string;
  /** Environment (S3 credentials for `s3Endpoint`). */
  readonly env: NodeJS.ProcessEnv;
  /** Progress and addresses. */
  readonly out: NodeJS.WritableStream;
  /** Aborting it stops the fleet (SIGINT/SIGTERM). */
  readonly signal: AbortSignal;
  /** Called once the fleet is up, with it (for tests and the demo). */
  readonly onReady?: (fleet: LocalFleet) => void;
}

/** The S3 environment for an existing endpoint: the endpoint plus region/credentials from `env`. */
export function s3EnvForEndpoint(endpoint: string, env: NodeJS.ProcessEnv): Record<string, string> {
  const s3Env: Record<string, string> = {
    DINOFLEET_S3_ENDPOINT: endpoint,
    AWS_REGION: env['AWS_REGION'] ?? env['AWS_DEFAULT_REGION'] ?? 'us-east-1',
    DINOFLEET_S3_FORCE_PATH_STYLE: env['DINOFLEET_S3_FORCE_PATH_STYLE'] ?? 'true',
  };
  for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) {
    const value = env[name];
    if (value !== undefined && value !== '') s3Env[name] = value;
  }
  return s3Env;
}

function exitOf(service: ServiceProcess): Promise<string> {
  return service.exited.then(({ code, signal }) => `${service.name} (pid ${service.pid}) exited with ${signal !== null ? `signal ${signal}` : `code ${String(code)}`}`);
}

/**
 * Starts the fleet, writes the fleet file, waits for `signal` (exit 0) or for a service to
 * die (exit 1, with its log tail), then stops everything and removes the fleet file.
 */
export async function runFleetUp(options: FleetUpOptions): Promise<number> {
  const { out } = options;
  const insecure = options.insecure === true;
  out.write(`dinofleet: starting a local fleet (${options.workers} workers, backend ${options.backend ?? 'wasm'}${insecure ? ', insecure' : ', mutual TLS'})\n`);
  if (insecure) out.write(`warning: ${INSECURE_WARNING}\n`);
  if (options.prometheus === true) {
    try {
      ensurePrometheusInstalled(options.env);
    } catch (error) {
      throw new CliError(`--prometheus: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  const fleet = await startLocalFleet({
    workers: options.workers,
    ...(options.redisUrl !== undefined && { redisUrl: options.redisUrl }),
    ...(options.s3Endpoint !== undefined && { s3: { env: s3EnvForEndpoint(options.s3Endpoint, options.env) } }),
    ...(options.backend !== undefined && { backend: options.backend }),
    ...(options.logDir !== undefined && { logDir: options.logDir }),
    ...(options.prometheus === true && { prometheus: {} }),
    ...(insecure ? { insecure: true } : { credentialsDir: join(options.cwd, FLEET_DIR_NAME) }),
  });
  let failure: { readonly error: unknown } | undefined;
  try {
    const path = await writeFleetFile(options.cwd, {
      coordinator: fleet.coordinatorAddress,
      teacherSync: fleet.teacherSyncAddress,
      redisUrl: fleet.redisUrl,
      s3Env: fleet.s3Env,
      pid: process.pid,
      ...(fleet.tlsDir !== undefined && { tlsDir: fleet.tlsDir }),
      ...(fleet.tokenFiles !== undefined && { tokenFile: fleet.tokenFiles.admin }),
      ...(insecure && { insecure: true }),
    });
    const shown = (path: string): string => relative(options.cwd, path) || path;
    out.write(
      [
        `  coordinator   ${fleet.coordinatorAddress}`,
        `  teacher-sync  ${fleet.teacherSyncAddress}`,
        `  redis         ${fleet.redisUrl}${fleet.redis === null ? '' : ' (started here)'}`,
        `  s3            ${fleet.s3Env['DINOFLEET_S3_ENDPOINT'] ?? '(aws)'}${fleet.s3 === null ? '' : ' (s3rver, started here)'}`,
        ...(fleet.prometheus !== null ? [`  prometheus    ${fleet.prometheus.url} (rules: deploy/prometheus/rules.yaml; dashboards: deploy/grafana)`] : []),
        ...(options.logDir !== undefined ? [`  logs          ${options.logDir}`] : []),
        ...(fleet.tlsDir !== undefined ? [`  tls           ${shown(fleet.tlsDir)} (this fleet's development CA; clients need its ca.crt)`] : ['  tls           none: plaintext (--insecure)']),
        ...(fleet.tokenFiles !== undefined && fleet.apiTokensFile !== undefined
          ? [`  api tokens    ${shown(fleet.apiTokensFile)}; admin token in ${shown(fleet.tokenFiles.admin)} (submit: ${shown(fleet.tokenFiles.submit)}, read: ${shown(fleet.tokenFiles.read)})`]
          : []),
        `wrote ${shown(path)}: dinofleet submit/watch/jobs in this directory use it (addresses, TLS and token)`,
        'press Ctrl-C to stop the fleet',
        '',
      ].join('\n'),
    );
    options.onReady?.(fleet);

    const stopped = new Promise<undefined>((resolve) => {
      if (options.signal.aborted) resolve(undefined);
      options.signal.addEventListener('abort', () => resolve(undefined), { once: true });
    });
    const died = await Promise.race([stopped, exitOf(fleet.coordinator), exitOf(fleet.teacherSync)]);
    if (died !== undefined) {
      const service = died.startsWith('coordinator') ? fleet.coordinator : fleet.teacherSync;
      throw new CliError(`${died}; stopping the fleet. Last output:\n${service.logTail().trimEnd()}`);
    }
    out.write('dinofleet: stopping the fleet\n');
  } catch (error) {
    failure = { error };
  }
  // Every cleanup runs; a failure to stop is reported only when nothing failed before it.
  const stopFailures: unknown[] = [];
  await fleet.stop().catch((error: unknown) => stopFailures.push(error));
  await removeFleetFile(options.cwd).catch((error: unknown) => stopFailures.push(error));
  if (failure !== undefined) throw failure.error;
  if (stopFailures.length > 0) throw new AggregateError(stopFailures, 'stopping the fleet failed');
  out.write('dinofleet: fleet stopped\n');
  return ExitCode.Ok;
}
