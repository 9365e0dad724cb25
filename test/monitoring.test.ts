// Monitoring that is proven: the alert rules pass `promtool check rules` and their unit tests,
// and Debian's Prometheus, scraping a local fleet that runs a short job (two workers,
// Fashion-MNIST), answers every Grafana panel's query under deploy/grafana with data.
//
// The run is made to produce what a healthy short run would not: four manifest entries whose
// objects are gone (skips), and a NaN in the loss slot of one step
// (DINOFLEET_FAULT_NONFINITE_STEPS), which the coordinator retries in a new generation (a
// recovery, a non-finite count, the DinofleetNonFiniteSteps alert). Counters that stay at 0
// (reconfigurations, rollbacks, steps lost) are started at 0 by the coordinator, so their
// panels show 0 rather than nothing.
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { ensurePrometheusInstalled, findRepoRoot, startLocalFleet, uploadFashionMnist, type LocalFleet } from '@dinofleet/local';
import { callUnary, createClient, JobServiceClient, JobState } from '@dinofleet/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, smallJobSpec, waitForJob } from './support/cluster.ts';

const ROOT = findRepoRoot();
const RULES_DIR = join(ROOT, 'deploy', 'prometheus');
const DASHBOARDS_DIR = join(ROOT, 'deploy', 'grafana');
const BUCKET = 'itest-monitoring';
/** Scrape and rule evaluation interval of the test's Prometheus, seconds. */
const SCRAPE_SECONDS = 1;
/**
 * What Grafana puts for its variables here: `$__rate_interval` is max(interval + scrape
 * interval, 4 × scrape interval); 10 s leaves room for a 2-3 s step. `$job` is the job the
 * test runs (the dashboards' "Training job" variable).
 */
const RATE_INTERVAL = '10s';
const RANGE = '10m';

/** One query of one panel. */
interface PanelQuery {
  readonly dashboard: string;
  readonly panel: string;
  readonly refId: string;
  readonly expr: string;
}

interface Dashboard {
  uid?: string;
  title?: string;
  templating?: { list?: { name: string; type: string; query?: unknown; definition?: string }[] };
  panels?: { title: string; targets?: { refId: string; expr: string; datasource?: { uid?: string } }[] }[];
}

async function dashboards(): Promise<{ file: string; dashboard: Dashboard }[]> {
  const files = (await readdir(DASHBOARDS_DIR)).filter((name) => name.endsWith('.json')).sort();
  return Promise.all(files.map(async (file) => ({ file, dashboard: JSON.parse(await readFile(join(DASHBOARDS_DIR, file), 'utf8')) as Dashboard })));
}

/** Every panel query, with Grafana's variables replaced; fails on a variable it does not know. */
function panelQueries(boards: readonly { file: string; dashboard: Dashboard }[], jobId: string): PanelQuery[] {
  return boards.flatMap(({ file, dashboard }) =>
    (dashboard.panels ?? []).flatMap((panel) =>
      (panel.targets ?? []).map((target) => {
        const expr = target.expr.replaceAll('$__rate_interval', RATE_INTERVAL).replaceAll('$__range', RANGE).replaceAll('$job', jobId);
        expect(expr, `${file} / ${panel.title}: a variable the test does not fill in`).not.toContain('$');
        return { dashboard: file, panel: panel.title, refId: target.refId, expr };
      }),
    ),
  );
}

interface VectorSample {
  metric: Record<string, string>;
  value: [number, string];
}

async function prometheusGet<T>(base: string, path: string, params: Record<string, string> = {}): Promise<T> {
  const url = new URL(path, base);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const body = (await response.json()) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`${path} ${JSON.stringify(params)}: ${body.error ?? response.status}`);
  return body.data;
}

/** An instant query; the samples with a finite value. */
async function finiteSamples(base: string, expr: string): Promise<VectorSample[]> {
  const data = await prometheusGet<{ resultType: string; result: VectorSample[] }>(base, '/api/v1/query', { query: expr });
  expect(data.resultType).toBe('vector');
  return data.result.filter((sample) => Number.isFinite(Number(sample.value[1])));
}

describe('alert rules (promtool)', () => {
  let promtool: string;
  beforeAll(() => {
    ({ promtool } = ensurePrometheusInstalled());
  }, 120_000);

  it('pass promtool check rules and the unit tests of every alert', () => {
    const check = spawnSync(promtool, ['check', 'rules', 'rules.yaml'], { cwd: RULES_DIR, encoding: 'utf8' });
    expect(check.status, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/SUCCESS: \d+ rules found/);
    const unit = spawnSync(promtool, ['test', 'rules', 'rules.test.yaml'], { cwd: RULES_DIR, encoding: 'utf8' });
    expect(unit.status, unit.stdout + unit.stderr).toBe(0);
    expect(unit.stdout).toContain('SUCCESS');
  });

  it('have a unit test for every alert', async () => {
    const rules = await readFile(join(RULES_DIR, 'rules.yaml'), 'utf8');
    const tests = await readFile(join(RULES_DIR, 'rules.test.yaml'), 'utf8');
    const alerts = [...rules.matchAll(/^\s*- alert: (\w+)/gm)].map((m) => m[1] as string);
    expect(alerts.length).toBeGreaterThanOrEqual(6);
    for (const alert of alerts) expect(tests, `no promtool test for ${alert}`).toMatch(new RegExp(`alertname: ${alert}\\n(?:.*\\n)*?\\s+exp_alerts:\\n\\s+- exp_labels`));
  });
});

describe('Prometheus scraping a local fleet that runs a job', { timeout: 240_000 }, () => {
  let fleet: LocalFleet;
  let s3: S3Client;
  let client: JobServiceClient;
  let manifestUri: string;

  beforeAll(async () => {
    ensurePrometheusInstalled();
    const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-itest-monitoring-'));
    fleet = await startLocalFleet({
      workers: 2,
      backend: 'wasm',
      logDir,
      // Step 1's loss slot is NaN on every rank: a non-finite step, retried in generation 2.
      env: { DINOFLEET_FAULT_NONFINITE_STEPS: '1' },
      prometheus: { scrapeIntervalSeconds: SCRAPE_SECONDS },
    });
    s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
    const upload = await uploadFashionMnist(s3, { bucket: BUCKET, split: 'train', limit: 64 });
    // Entries whose objects are gone: skipped with reason "missing" wherever the shards put them.
    for (const index of [2, 21, 40, 59]) await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: upload.keys[index] }));
    manifestUri = upload.manifestUri;
    client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions());
  }, 180_000);

  afterAll(async () => {
    client?.close();
    s3?.destroy();
    await fleet?.stop();
  }, 60_000);

  it('loads the rules, fires DinofleetNonFiniteSteps, and answers every dashboard panel query with data', async () => {
    const prometheus = fleet.prometheus;
    if (prometheus === null) throw new Error('the fleet started no Prometheus');
    const base = prometheus.url;
    const rules = await prometheusGet<{ groups: { rules: { name: string; health: string }[] }[] }>(base, '/api/v1/rules');
    const loaded = rules.groups.flatMap((group) => group.rules);
    expect(loaded.length).toBeGreaterThanOrEqual(6);
    for (const rule of loaded) expect(rule.health, rule.name).not.toBe('err');

    const { jobId } = await callUnary(client, 'submitJob', { spec: JSON.stringify(smallJobSpec(manifestUri, { name: 'monitoring', steps: 12 })), idempotencyKey: '' }, { deadlineMs: 30_000 });
    const boards = await dashboards();
    const pending = new Map(panelQueries(boards, jobId).map((query) => [`${query.dashboard} / ${query.panel} / ${query.refId}`, query]));
    expect(pending.size).toBeGreaterThan(30);
    let nanAlert = false;
    let jobEndedAt: number | undefined;
    // While the job runs (and a little after, for the last rate windows): every pending query
    // is asked each second until it has answered with a finite sample once.
    for (;;) {
      await Promise.all(
        [...pending].map(async ([key, query]) => {
          if ((await finiteSamples(base, query.expr)).length > 0) pending.delete(key);
        }),
      );
      const alerts = await prometheusGet<{ alerts: { labels: Record<string, string>; state: string }[] }>(base, '/api/v1/alerts');
      nanAlert ||= alerts.alerts.some((a) => a.labels.alertname === 'DinofleetNonFiniteSteps' && a.labels.job === jobId && a.state === 'firing');
      const job = (await callUnary(client, 'getJob', { jobId }, { deadlineMs: 5_000 })).job;
      if (job !== undefined && isTerminal(job)) jobEndedAt ??= Date.now();
      if ((pending.size === 0 && nanAlert) || (jobEndedAt !== undefined && Date.now() - jobEndedAt > 15_000)) break;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
    expect([...pending.values()].map((q) => `${q.dashboard} / ${q.panel} / ${q.refId}: ${q.expr}`)).toEqual([]);
    expect(nanAlert, 'DinofleetNonFiniteSteps never fired for the NaN step').toBe(true);

    // The dashboards' "Training job" variable lists the job.
    const jobs = await prometheusGet<string[]>(base, '/api/v1/label/job/values', { 'match[]': 'dinofleet_job_total_steps' });
    expect(jobs).toContain(jobId);

    const job = await waitForJob(client, jobId, isTerminal);
    expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    expect(job.generation).toBeGreaterThanOrEqual(2);
    // What the faults made, as Prometheus saw it.
    const recovered = await finiteSamples(base, `max_over_time(dinofleet_job_recoveries_total{job="${jobId}",cause="nonfinite"}[${RANGE}])`);
    expect(Number(recovered[0]?.value[1])).toBeGreaterThanOrEqual(1);
    const skipped = await finiteSamples(base, `max_over_time(dinofleet_job_samples_skipped_total{job="${jobId}",reason="missing"}[${RANGE}])`);
    expect(Number(skipped[0]?.value[1])).toBeGreaterThanOrEqual(1);
  });
});
