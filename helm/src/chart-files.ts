/**
 * The chart's files that are made from other files of the repository: `values.schema.json`
 * (from {@link CHART_VALUES_SCHEMA}) and the chart's copies of the Grafana dashboards and
 * Prometheus rules kept under `deploy/` (Helm reads nothing outside the chart directory).
 * `generate-chart-files.ts` writes them; the tests fail while any is stale.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { CHART_VALUES_SCHEMA } from './chart-values-schema.ts';

/** The repository root. */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The chart directory, `helm/dinofleet/`. */
export const CHART_DIR = fileURLToPath(new URL('../dinofleet/', import.meta.url));
/** Where the dashboards live in the chart, relative to {@link CHART_DIR}. */
export const CHART_DASHBOARDS_DIR = 'files/dashboards';
/** Where the alert rules live in the chart, relative to {@link CHART_DIR}. */
export const CHART_RULES_FILE = 'files/prometheus/rules.yaml';

/** The sources under `deploy/`, relative to {@link REPO_ROOT}. */
const DEPLOY_DASHBOARDS_DIR = 'deploy/grafana';
const DEPLOY_RULES_FILE = 'deploy/prometheus/rules.yaml';

/**
 * The JSON Schema (draft-07, what Helm 3 checks values against) of the chart's values:
 * unknown keys refused, enums and ranges of the services' flags, the job spec's own schema
 * under `job.spec`. Checks that span fields are in the templates (`dinofleet.checkValues`).
 */
export function chartValuesJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(CHART_VALUES_SCHEMA, { io: 'input', target: 'draft-07' });
}

/** One file of the chart with the content it must have. */
export interface GeneratedChartFile {
  /** Path relative to {@link CHART_DIR}. */
  readonly path: string;
  /** Expected content. */
  readonly content: string;
  /** What it is made from, for messages. */
  readonly source: string;
}

/** The generated files, and the chart directories whose other files are stale copies. */
export interface GeneratedChartFiles {
  readonly files: readonly GeneratedChartFile[];
  /** Directories (relative to the chart) that hold exactly the generated files. */
  readonly ownedDirs: readonly string[];
}

/**
 * What the generated files must hold now. The dashboards and rules are copied only once
 * `deploy/` has them; until then the chart keeps its placeholders.
 */
export function generatedChartFiles(): GeneratedChartFiles {
  const files: GeneratedChartFile[] = [
    {
      path: 'values.schema.json',
      content: `${JSON.stringify(chartValuesJsonSchema(), null, 2)}\n`,
      source: 'helm/src/chart-values-schema.ts',
    },
  ];
  const ownedDirs: string[] = [];
  const dashboardsDir = join(REPO_ROOT, DEPLOY_DASHBOARDS_DIR);
  const dashboards = existsSync(dashboardsDir) ? readdirSync(dashboardsDir).filter((name) => name.endsWith('.json')).sort() : [];
  if (dashboards.length > 0) {
    ownedDirs.push(CHART_DASHBOARDS_DIR);
    for (const name of dashboards) {
      files.push({
        path: `${CHART_DASHBOARDS_DIR}/${name}`,
        content: readFileSync(join(dashboardsDir, name), 'utf8'),
        source: `${DEPLOY_DASHBOARDS_DIR}/${name}`,
      });
    }
  }
  const rulesFile = join(REPO_ROOT, DEPLOY_RULES_FILE);
  if (existsSync(rulesFile)) {
    files.push({ path: CHART_RULES_FILE, content: readFileSync(rulesFile, 'utf8'), source: DEPLOY_RULES_FILE });
  }
  return { files, ownedDirs };
}

/** One line per chart file that differs from what it is made from, or is left over; empty when current. */
export function staleChartFiles(): string[] {
  const { files, ownedDirs } = generatedChartFiles();
  const problems: string[] = [];
  for (const file of files) {
    const path = join(CHART_DIR, file.path);
    const actual = existsSync(path) ? readFileSync(path, 'utf8') : undefined;
    if (actual === undefined) problems.push(`helm/dinofleet/${file.path} is missing (made from ${file.source})`);
    else if (actual !== file.content) problems.push(`helm/dinofleet/${file.path} differs from what ${file.source} makes`);
  }
  for (const path of leftOvers(files, ownedDirs)) problems.push(`helm/dinofleet/${path} has no source under deploy/ any more`);
  return problems;
}

/** Writes every generated file and removes left-over copies; returns the paths changed. */
export function writeChartFiles(): string[] {
  const { files, ownedDirs } = generatedChartFiles();
  const changed: string[] = [];
  for (const file of files) {
    const path = join(CHART_DIR, file.path);
    if (existsSync(path) && readFileSync(path, 'utf8') === file.content) continue;
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, file.content);
    changed.push(`helm/dinofleet/${file.path}`);
  }
  for (const path of leftOvers(files, ownedDirs)) {
    rmSync(join(CHART_DIR, path));
    changed.push(`helm/dinofleet/${path} (removed)`);
  }
  return changed;
}

function leftOvers(files: readonly GeneratedChartFile[], ownedDirs: readonly string[]): string[] {
  const wanted = new Set(files.map((file) => file.path));
  return ownedDirs.flatMap((dir) => {
    const path = join(CHART_DIR, dir);
    if (!existsSync(path)) return [];
    return readdirSync(path)
      .map((name) => `${dir}/${name}`)
      .filter((file) => !wanted.has(file));
  });
}
