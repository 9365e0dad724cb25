/**
 * A throw-away Prometheus on loopback scraping a local fleet, for `dinofleet up --prometheus`
 * and the monitoring test: Debian's `prometheus` (2.x) with a generated configuration, the
 * alert rules of `deploy/prometheus/rules.yaml`, and a file of scrape targets that follows the
 * fleet's processes as workers come and go.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

import { reapOnExit } from './child-reaper.ts';
import { findFreePort } from './free-port.ts';
import { LogTail } from './log-tail.ts';
import { findRepoRoot } from './repo-root.ts';

/** One `/metrics` endpoint of the fleet. */
export interface MetricsTarget {
  /** `host:port` of the process's metrics server. */
  readonly address: string;
  /** `coordinator`, `teacher-sync` or `worker`: the `component` label of its series. */
  readonly component: string;
  /** More target labels (e.g. `worker_id`). */
  readonly labels?: Readonly<Record<string, string>>;
}

/** Thrown when `prometheus` or `promtool` is not installed. */
export class PrometheusNotInstalledError extends Error {
  override readonly name = 'PrometheusNotInstalledError';
  /** Stable code. */
  readonly code = 'prometheus_not_installed';
}

/** The alert rules every local Prometheus loads: `deploy/prometheus/rules.yaml`. */
export function defaultRulesFile(): string {
  return join(findRepoRoot(), 'deploy', 'prometheus', 'rules.yaml');
}

/** Default scrape (and rule evaluation) interval of a local Prometheus, seconds. */
export const DEFAULT_SCRAPE_INTERVAL_SECONDS = 5;

function findBinary(name: 'prometheus' | 'promtool', env: NodeJS.ProcessEnv): string | undefined {
  const override = name === 'prometheus' ? env['DINOFLEET_PROMETHEUS'] : env['DINOFLEET_PROMTOOL'];
  const candidates = [override, `/usr/bin/${name}`, ...(env['PATH'] ?? '').split(delimiter).filter((dir) => dir !== '').map((dir) => join(dir, name))];
  for (const candidate of candidates) {
    if (candidate === undefined || candidate === '') continue;
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not this one
    }
  }
  return undefined;
}

const INSTALL_HINT =
  'install it: `bash scripts/ensure-prometheus.sh` (runs apt-get install prometheus as root; `npm test` and ' +
  '`scripts/ensure-deps.sh` run it too), or put Prometheus 2.x (prometheus and promtool) on PATH, ' +
  'or set DINOFLEET_PROMETHEUS / DINOFLEET_PROMTOOL';

/** Path of `prometheus` (`$DINOFLEET_PROMETHEUS`, /usr/bin, PATH); throws {@link PrometheusNotInstalledError}. */
export function findPrometheus(env: NodeJS.ProcessEnv = process.env): string {
  const found = findBinary('prometheus', env);
  if (found === undefined) throw new PrometheusNotInstalledError(`prometheus is not installed (looked at $DINOFLEET_PROMETHEUS, /usr/bin and PATH): ${INSTALL_HINT}`);
  return found;
}

/** Path of `promtool` (`$DINOFLEET_PROMTOOL`, /usr/bin, PATH); throws {@link PrometheusNotInstalledError}. */
export function findPromtool(env: NodeJS.ProcessEnv = process.env): string {
  const found = findBinary('promtool', env);
  if (found === undefined) throw new PrometheusNotInstalledError(`promtool is not installed (looked at $DINOFLEET_PROMTOOL, /usr/bin and PATH): ${INSTALL_HINT}`);
  return found;
}

/**
 * Finds `prometheus` and `promtool`; when either is missing, runs
 * `scripts/ensure-prometheus.sh` (apt-get as root, the way ensure-deps.sh installs
 * redis-server; elsewhere it only says how) and looks again. Throws
 * {@link PrometheusNotInstalledError} when they are still missing.
 */
export function ensurePrometheusInstalled(env: NodeJS.ProcessEnv = process.env): { prometheus: string; promtool: string } {
  if (findBinary('prometheus', env) === undefined || findBinary('promtool', env) === undefined) {
    const script = join(findRepoRoot(), 'scripts', 'ensure-prometheus.sh');
    // Its progress goes to our stderr: an install takes a while and should be seen.
    spawnSync('bash', [script], { stdio: ['ignore', 'inherit', 'inherit'], env });
  }
  return { prometheus: findPrometheus(env), promtool: findPromtool(env) };
}

/** Options of {@link prometheusConfig}. */
export interface PrometheusConfigOptions {
  /** The file-SD file the targets are written to. */
  readonly targetsFile: string;
  /** Rule files to load. @default [{@link defaultRulesFile}()] */
  readonly rulesFiles?: readonly string[];
  /** Scrape and rule evaluation interval, seconds. @default {@link DEFAULT_SCRAPE_INTERVAL_SECONDS} */
  readonly scrapeIntervalSeconds?: number;
}

/**
 * The `prometheus.yml` of a local Prometheus (YAML is a superset of JSON, so it is written
 * as JSON). `honor_labels: true`: dinofleet's series carry the training job in their own
 * `job` label, which must win over the scrape job's name (else Prometheus renames it
 * `exported_job` and the dashboards' `job` selectors find nothing); the chart's
 * ServiceMonitor sets `honorLabels` for the same reason.
 */
export function prometheusConfig(options: PrometheusConfigOptions): string {
  const interval = `${options.scrapeIntervalSeconds ?? DEFAULT_SCRAPE_INTERVAL_SECONDS}s`;
  const config = {
    global: { scrape_interval: interval, evaluation_interval: interval, scrape_timeout: interval },
    rule_files: [...(options.rulesFiles ?? [defaultRulesFile()])],
    scrape_configs: [
      {
        job_name: 'dinofleet',
        honor_labels: true,
        metrics_path: '/metrics',
        file_sd_configs: [{ files: [options.targetsFile], refresh_interval: '5s' }],
      },
    ],
  };
  return `${JSON.stringify(config, null, 2)}\n`;
}

/** The file-SD JSON of `targets`: one group per target, labelled with its component. */
export function fileSdTargets(targets: readonly MetricsTarget[]): string {
  const groups = [...targets]
    .sort((a, b) => a.address.localeCompare(b.address))
    .map((target) => ({ targets: [target.address], labels: { component: target.component, ...target.labels } }));
  return `${JSON.stringify(groups, null, 2)}\n`;
}

/** Options of {@link startPrometheus}. */
export interface PrometheusServerOptions {
  /** The endpoints to scrape, asked again every `targetsRefreshMs` (workers come and go). */
  readonly targets: () => Promise<readonly MetricsTarget[]>;
  /** Rule files. @default [{@link defaultRulesFile}()] */
  readonly rulesFiles?: readonly string[];
  /** Scrape and rule evaluation interval, seconds. @default {@link DEFAULT_SCRAPE_INTERVAL_SECONDS} */
  readonly scrapeIntervalSeconds?: number;
  /** How often the targets are asked for, ms. @default 1000 */
  readonly targetsRefreshMs?: number;
  /** Port of the web UI and HTTP API on 127.0.0.1. @default a free port */
  readonly port?: number;
  /** File its output is appended to. @default none: the last 16 KiB kept for errors */
  readonly logFile?: string;
  /** Environment used to find the binaries. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
}

/** A running Prometheus. */
export interface PrometheusServer extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`: the UI, `/api/v1/...`. */
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Its directory: `prometheus.yml`, `targets.json`, `data/`. */
  readonly dir: string;
  /** The generated configuration file. */
  readonly configFile: string;
  /** Writes the targets file now (it is also rewritten every `targetsRefreshMs`). */
  refreshTargets(): Promise<void>;
  /** The last 16 KiB of its output. */
  logTail(): string;
  /** Stops it and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;
const PORT_ATTEMPTS = 5;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Starts Prometheus on 127.0.0.1 with a generated configuration and the rules, keeps the
 * targets file current, and resolves once `/-/ready` answers. Rejects with
 * {@link PrometheusNotInstalledError} when the binary is missing, or with its output when it
 * exits or is not ready in 30 s.
 */
export async function startPrometheus(options: PrometheusServerOptions): Promise<PrometheusServer> {
  const binary = findPrometheus(options.env);
  const dir = await mkdtemp(join(tmpdir(), 'dinofleet-prometheus-'));
  const targetsFile = join(dir, 'targets.json');
  const configFile = join(dir, 'prometheus.yml');
  let lastTargets = '';
  const writeTargets = async (): Promise<void> => {
    const text = fileSdTargets(await options.targets());
    if (text === lastTargets) return;
    // Renamed into place: Prometheus never reads half a file.
    await writeFile(`${targetsFile}.tmp`, text);
    await rename(`${targetsFile}.tmp`, targetsFile);
    lastTargets = text;
  };
  let child: ChildProcess | undefined;
  let timer: NodeJS.Timeout | undefined;
  const tail = new LogTail(16 * 1024);
  try {
    await writeTargets();
    await writeFile(configFile, prometheusConfig({ targetsFile, ...(options.rulesFiles !== undefined && { rulesFiles: options.rulesFiles }), ...(options.scrapeIntervalSeconds !== undefined && { scrapeIntervalSeconds: options.scrapeIntervalSeconds }) }));
    let port = 0;
    let exited: Promise<void> | undefined;
    let lastError: unknown;
    for (let attempt = 1; attempt <= (options.port === undefined ? PORT_ATTEMPTS : 1) && exited === undefined; attempt++) {
      port = options.port ?? (await findFreePort());
      try {
        ({ child, exited } = await launch(binary, dir, configFile, port, tail, options.logFile));
      } catch (error) {
        lastError = error;
        if (!(error instanceof Error && /address already in use/i.test(error.message))) throw error;
      }
    }
    if (child === undefined || exited === undefined) throw lastError;
    const running = child;
    const done = exited;
    timer = setInterval(() => {
      writeTargets().catch((error: unknown) => tail.push(`dinofleet: writing the targets failed: ${String(error)}\n`));
    }, options.targetsRefreshMs ?? 1_000);
    timer.unref();
    let stopping: Promise<void> | undefined;
    const stop = (): Promise<void> => {
      stopping ??= (async () => {
        clearInterval(timer);
        if (running.exitCode === null && running.signalCode === null) {
          running.kill('SIGTERM');
          if (!(await Promise.race([done.then(() => true), sleep(STOP_GRACE_MS).then(() => false)]))) {
            running.kill('SIGKILL');
            await done;
          }
        }
        await rm(dir, { recursive: true, force: true });
      })();
      return stopping;
    };
    return {
      url: `http://127.0.0.1:${port}`,
      port,
      pid: running.pid ?? 0,
      dir,
      configFile,
      refreshTargets: writeTargets,
      logTail: () => tail.text(),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (error) {
    clearInterval(timer);
    child?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

async function launch(
  binary: string,
  dir: string,
  configFile: string,
  port: number,
  tail: LogTail,
  logFile: string | undefined,
): Promise<{ child: ChildProcess; exited: Promise<void> }> {
  const args = [
    `--config.file=${configFile}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--storage.tsdb.retention.time=1d',
    '--log.level=warn',
  ];
  // Own process group, like the services: Ctrl-C reaches the command that started it.
  const child = spawn(binary, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  reapOnExit(child);
  const append = logFile === undefined ? undefined : (await import('node:fs')).createWriteStream(logFile, { flags: 'a' });
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on('data', (chunk: Buffer) => {
      tail.push(chunk);
      append?.write(chunk);
    });
  }
  let exitedEarly = false;
  const exited = new Promise<void>((resolve) => {
    const finish = (): void => {
      exitedEarly = true;
      append?.end();
      resolve();
    };
    child.once('exit', finish);
    child.once('error', (error) => {
      tail.push(`${error.message}\n`);
      finish();
    });
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!exitedEarly) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/-/ready`, { signal: AbortSignal.timeout(1_000) });
      if (response.ok) return { child, exited };
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`prometheus on port ${port} was not ready within ${READY_TIMEOUT_MS} ms:\n${tail.text()}`);
    }
    await sleep(100);
  }
  await sleep(50);
  throw new Error(`prometheus exited before it was ready (code ${String(child.exitCode)}):\n${tail.text()}`);
}
