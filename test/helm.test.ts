// The Helm chart (helm/dinofleet): rendered with the pinned Helm for the default values and
// combinations of them, every object checked against the Kubernetes OpenAPI schemas
// (kubernetes-models), every service flag resolved by the service's own config code, and what
// the objects mean (RBAC, NetworkPolicy ports, GPUs, probes, the headless Service, TLS and
// API tokens) asserted. Bad values must be refused by Helm itself (values.schema.json, or the
// chart's checks).
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseJobSpec, resolveJobSpec } from '@dinofleet/config';
import { COORDINATOR_FLAG_OPTIONS, resolveCoordinatorConfig } from '@dinofleet/coordinator';
import { resolveS3Config } from '@dinofleet/data';
import { API_SCOPES, generateApiToken, hashApiToken, loadApiTokens, loadTlsDir, parseApiTokens } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import {
  CHART_API_SCOPES,
  CHART_API_TOKENS_DIR,
  CHART_DASHBOARDS_DIR,
  CHART_DIR,
  CHART_RULES_FILE,
  CHART_TLS_DIR,
  CHART_VALUES_SCHEMA,
  REPO_ROOT,
  helmLint,
  helmTemplate,
  renderChart,
  staleChartFiles,
  validateKubernetesObject,
  type ChartKind,
  type ChartKinds,
  type KubernetesObject,
  type RenderedChart,
} from '@dinofleet/helm-chart';
import { resolveTeacherSyncConfig, type TeacherSyncFlags } from '@dinofleet/teacher-sync';
import { resolveWorkerConfig } from '@dinofleet/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';

const RELEASE = 'df';
const NAMESPACE = 'train';
const POD_IP = '10.1.2.3';

type Values = Record<string, unknown>;

const DEFAULT_VALUES = parseYaml(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8')) as Values;

/** Helm's merge of an override file over values.yaml: maps merge, everything else replaces. */
function mergeValues(base: Values, override: Values): Values {
  const merged: Values = { ...base };
  for (const [key, value] of Object.entries(override)) {
    const current = merged[key];
    merged[key] = isMap(value) && isMap(current) ? mergeValues(current, value) : value;
  }
  return merged;
}

function isMap(value: unknown): value is Values {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Tokens whose hashes the cases put into values. The tokens themselves must appear nowhere in
 * what the chart renders (nor in its error messages).
 */
const RAW_TOKENS = { ops: generateApiToken(), ci: generateApiToken() } as const;
/** Anything shaped like a dinofleet API token. */
const RAW_TOKEN_PATTERN = /dft_[A-Za-z0-9_-]{43}/;
/** apiTokens.tokens of the cases: one hash as `dinofleet token create` prints it, one as bare hex (the chart adds `sha256:`). */
const TOKEN_ENTRIES = [
  { name: 'ops', scope: 'admin', sha256: hashApiToken(RAW_TOKENS.ops) },
  { name: 'ci', scope: 'submit', sha256: hashApiToken(RAW_TOKENS.ci).slice('sha256:'.length) },
] as const;
/** TLS is on by default, so the coordinator needs a tokens file: the least a release needs. */
const WITH_TOKENS: Values = { apiTokens: { tokens: TOKEN_ENTRIES } };

/** A real CA and fleet certificate (what `dinofleet certs` writes) for the PEM-in-values case. */
const DEV_TLS_DIR = mkdtempSync(join(tmpdir(), 'dinofleet-helm-tls-'));
await createDevCertificates(DEV_TLS_DIR);
const DEV_PEM = {
  cert: readFileSync(join(DEV_TLS_DIR, 'tls.crt'), 'utf8'),
  key: readFileSync(join(DEV_TLS_DIR, 'tls.key'), 'utf8'),
  ca: readFileSync(join(DEV_TLS_DIR, 'ca.crt'), 'utf8'),
};

/** The combinations every structural check runs on. */
const CASES: Readonly<Record<string, Values>> = {
  default: WITH_TOKENS,
  'external Redis URL, created Secrets, DNS advertise': {
    redis: { mode: 'external', external: { url: 'rediss://:pw@redis.example.com:6380/0' } },
    s3: { endpoint: 'http://minio.storage.svc:9000', region: 'eu-west-1', forcePathStyle: true, credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI' } },
    tls: { enabled: true, ...DEV_PEM },
    ...WITH_TOKENS,
    workers: { advertise: 'dns' },
  },
  'existing Secrets: cert-manager TLS, a tokens file, a submit token': {
    redis: { mode: 'external', external: { existingSecret: 'shared-redis', existingSecretKey: 'url' } },
    s3: { credentials: { existingSecret: 'shared-s3', accessKeyIdKey: 'id', secretAccessKeyKey: 'secret' } },
    // A cert-manager Certificate's secretName: ca.crt, tls.crt, tls.key.
    tls: { enabled: true, existingSecret: 'dinofleet-mtls' },
    apiTokens: { existingSecret: 'dinofleet-tokens', existingSecretKey: 'tokens.txt' },
    job: { submit: true, tokenSecret: 'ci-submit-token', tokenSecretKey: 'dinofleet-token' },
  },
  'monitoring objects and job submit': {
    ...WITH_TOKENS,
    metrics: {
      serviceMonitor: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
      prometheusRule: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
      grafanaDashboards: { enabled: true, annotations: { grafana_folder: 'dinofleet' } },
    },
    job: { submit: true, tokenSecret: 'df-submit-token' },
  },
  'TLS off (insecure acknowledged), job submit': {
    tls: { enabled: false, insecureAcknowledged: true },
    job: { submit: true },
  },
  'CPU workers, no NetworkPolicy, no PDB, ephemeral Redis, every worker flag': {
    ...WITH_TOKENS,
    workers: { backend: 'wasm', gpu: { enabled: false }, fetchConcurrency: 64, loaderThreads: 6, prefetchMb: 1_048_576, podDisruptionBudget: { enabled: false } },
    teacherSync: { maxSnapshotBytes: 4_294_967_296 },
    networkPolicy: { enabled: false },
    redis: { bundled: { persistence: { enabled: false } } },
    logLevel: 'debug',
    coordinator: { scaler: 'none' },
  },
  'GPU scheduling, Redis password, kubernetes scaler, long names': {
    ...WITH_TOKENS,
    fullnameOverride: 'a-very-long-release-name-for-a-dinofleet-training-cluster',
    workers: {
      replicas: 4,
      gpu: { count: 2, resourceName: 'nvidia.com/gpu' },
      nodeSelector: { 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' },
      tolerations: [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }],
    },
    coordinator: { scaler: 'kubernetes' },
    redis: { bundled: { auth: { enabled: true, password: 'correct-horse' }, persistence: { storageClass: 'fast-ssd' } } },
    ports: { grpc: 7070, data: 7071, metrics: 9464 },
  },
};

const rendered = new Map<string, RenderedChart>();

function chartOf(caseName: string): RenderedChart {
  const chart = rendered.get(caseName);
  if (chart === undefined) throw new Error(`case ${caseName} was not rendered`);
  return chart;
}

function valuesOf(caseName: string): Values {
  return mergeValues(DEFAULT_VALUES, CASES[caseName] ?? {});
}

/** A value at a dotted path of the merged values. */
function valueAt(values: Values, path: string): unknown {
  return path.split('.').reduce<unknown>((node, key) => (isMap(node) ? node[key] : undefined), values);
}

const COMPONENT = 'app.kubernetes.io/component';

/** The one object of `kind` labelled with `component` (names depend on the release and overrides). */
function byComponent<K extends ChartKind>(chart: RenderedChart, kind: K, component: string): ChartKinds[K] {
  const found = chart.all(kind).filter((object) => object.metadata?.labels?.[COMPONENT] === component);
  if (found.length !== 1) throw new Error(`expected one ${kind} of component ${component}, found ${found.length}`);
  return found[0] as ChartKinds[K];
}

function nameOf(object: { metadata?: { name?: string } }): string {
  return object.metadata?.name ?? '';
}

type Container = NonNullable<NonNullable<NonNullable<ChartKinds['Deployment']['spec']>['template']['spec']>['containers']>[number];

function containerOf(workload: ChartKinds['Deployment'] | ChartKinds['StatefulSet']): Container {
  const container = workload.spec?.template.spec?.containers[0];
  if (container === undefined) throw new Error(`${nameOf(workload)} has no container`);
  return container;
}

/** The release's fullname, as the chart's resource names start with it. */
function chartFullname(chart: RenderedChart): string {
  return nameOf(byComponent(chart, 'Deployment', 'coordinator')).replace(/-coordinator$/, '');
}

/** The key of the tokens file in the API tokens Secret (and its file name under CHART_API_TOKENS_DIR). */
function tokensKeyOf(values: Values): string {
  return valueAt(values, 'apiTokens.existingSecret') ? String(valueAt(values, 'apiTokens.existingSecretKey')) : 'api-tokens';
}

/** A kubernetes.io/tls Secret's files as text, from data (base64) or stringData. */
function tlsFilesOf(secret: ChartKinds['Secret']): Record<'ca.crt' | 'tls.crt' | 'tls.key', string> {
  const file = (key: 'ca.crt' | 'tls.crt' | 'tls.key'): string => {
    const encoded = secret.data?.[key];
    return encoded === undefined ? (secret.stringData?.[key] ?? '') : Buffer.from(encoded, 'base64').toString('utf8');
  };
  return { 'ca.crt': file('ca.crt'), 'tls.crt': file('tls.crt'), 'tls.key': file('tls.key') };
}

/** What a service's loadTlsDir makes of a TLS Secret once the kubelet has mounted it. */
function loadMountedTlsSecret(secret: ChartKinds['Secret']): ReturnType<typeof loadTlsDir> {
  const dir = mkdtempSync(join(tmpdir(), 'dinofleet-helm-mounted-'));
  try {
    for (const [name, text] of Object.entries(tlsFilesOf(secret))) writeFileSync(join(dir, name), text);
    return loadTlsDir(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// What a container sees at run time: the kubelet's expansion of env and args.

/** Stand-ins for Secret values, by variable name. */
const SECRET_STAND_INS: Readonly<Record<string, string>> = {
  DINOFLEET_REDIS_URL: 'redis://redis.example.com:6379',
  REDIS_PASSWORD: 'correct-horse',
  AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE',
  AWS_SECRET_ACCESS_KEY: 'wJalrXUtnFEMI',
};

/** `$(VAR)` as the kubelet expands it (an unknown name stays as written). */
function expand(text: string, env: Readonly<Record<string, string>>): string {
  return text.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole);
}

function containerEnv(container: Container, podName: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const variable of container.env ?? []) {
    const from = variable.valueFrom;
    if (variable.value !== undefined) env[variable.name] = expand(variable.value, env);
    else if (from?.fieldRef !== undefined) {
      const field = from.fieldRef.fieldPath;
      const value = { 'metadata.name': podName, 'metadata.namespace': NAMESPACE, 'status.podIP': POD_IP }[field];
      if (value === undefined) throw new Error(`${container.name}: ${variable.name} reads unexpected field ${field}`);
      env[variable.name] = value;
    } else if (from?.secretKeyRef !== undefined) {
      env[variable.name] = SECRET_STAND_INS[variable.name] ?? `${from.secretKeyRef.name}/${from.secretKeyRef.key}`;
    } else throw new Error(`${container.name}: ${variable.name} has neither a value nor a supported valueFrom`);
  }
  return env;
}

/**
 * The container's args as the process gets them; with `mounts` (from {@link mountSecretVolumes}),
 * `--flag=<mount path>...` points at the directory standing in for the mount.
 */
function containerArgs(container: Container, env: Readonly<Record<string, string>>, mounts: ReadonlyMap<string, string> = new Map()): string[] {
  const args = (container.args ?? []).map((arg) => {
    const expanded = expand(arg, env);
    for (const [mountPath, dir] of mounts) {
      const [flag, value] = [expanded.slice(0, expanded.indexOf('=') + 1), expanded.slice(expanded.indexOf('=') + 1)];
      if (flag !== '' && (value === mountPath || value.startsWith(`${mountPath}/`))) return flag + dir + value.slice(mountPath.length);
    }
    return expanded;
  });
  for (const arg of args) expect(arg, `${container.name}: unexpanded reference in ${arg}`).not.toMatch(/\$\(/);
  return args;
}

/** Directories made by {@link mountSecretVolumes}, removed after the tests. */
const MOUNT_DIRS: string[] = [];

/**
 * The files of Secret `secretName` as a pod sees them: the chart's own Secret when it renders
 * one, else (a Secret the values name) a stand-in: the dev CA's files for TLS, the cases'
 * token hashes as the tokens file.
 */
function secretFiles(chart: RenderedChart, secretName: string, volumeName: string, keys: readonly string[]): Record<string, string> {
  if (chart.has('Secret', secretName)) {
    const secret = chart.get('Secret', secretName);
    return {
      ...Object.fromEntries(Object.entries(secret.data ?? {}).map(([key, encoded]) => [key, Buffer.from(encoded, 'base64').toString('utf8')])),
      ...secret.stringData,
    };
  }
  if (volumeName === 'tls') return { 'ca.crt': DEV_PEM.ca, 'tls.crt': DEV_PEM.cert, 'tls.key': DEV_PEM.key };
  if (volumeName === 'api-tokens') {
    const tokensFile = TOKEN_ENTRIES.map(({ name, scope, sha256 }) => `${name} ${scope} ${sha256.startsWith('sha256:') ? sha256 : `sha256:${sha256}`}`).join('\n');
    return Object.fromEntries(keys.map((key) => [key, tokensFile]));
  }
  throw new Error(`no stand-in for the files of Secret ${secretName} (volume ${volumeName})`);
}

/** The kubelet's Secret volumes of `container`: mount path -> a directory with the files it would see there. */
function mountSecretVolumes(chart: RenderedChart, workload: ChartKinds['Deployment'] | ChartKinds['StatefulSet'], container: Container): Map<string, string> {
  const mounts = new Map<string, string>();
  for (const mount of container.volumeMounts ?? []) {
    const secret = workload.spec?.template.spec?.volumes?.find((volume) => volume.name === mount.name)?.secret;
    if (secret?.secretName === undefined) continue;
    const items = secret.items?.map((item) => [item.key, item.path] as const);
    const all = secretFiles(chart, secret.secretName, mount.name, items?.map(([key]) => key) ?? []);
    const files = items === undefined ? Object.entries(all) : items.map(([key, path]) => [path, all[key] ?? ''] as const);
    const dir = mkdtempSync(join(tmpdir(), `dinofleet-helm-${mount.name}-`));
    MOUNT_DIRS.push(dir);
    for (const [name, text] of files) writeFileSync(join(dir, name), text);
    mounts.set(mount.mountPath, dir);
  }
  return mounts;
}

/** teacher-sync's flags, keyed by its exported flag type: a flag added or renamed there (or a change of its type) breaks this table. */
const TEACHER_SYNC_FLAG_OPTIONS = {
  listen: { type: 'string' },
  'metrics-listen': { type: 'string' },
  'ready-file': { type: 'string' },
  'log-level': { type: 'string' },
  'max-snapshot-bytes': { type: 'string' },
  'tls-dir': { type: 'string' },
  insecure: { type: 'boolean' },
} as const satisfies { [K in keyof TeacherSyncFlags]-?: NonNullable<TeacherSyncFlags[K]> extends boolean ? { type: 'boolean' } : { type: 'string' } };

/**
 * Environment variables the chart may set: those docs/cluster.md names (checked against its
 * text below), and these, which no service reads as configuration.
 */
const NON_CONFIG_ENV = new Set([
  'POD_NAME',
  'POD_NAMESPACE',
  'POD_IP',
  'REDIS_PASSWORD',
  'REDISCLI_AUTH',
  'HOME',
  'TMPDIR',
  'CUDA_CACHE_PATH',
]);
/** The docs that name the services' and the CLI's settings (docs/security.md: the TLS and token ones). */
const CLUSTER_DOC = ['docs/cluster.md', 'docs/security.md'].map((path) => readFileSync(join(REPO_ROOT, path), 'utf8')).join('\n');

// ---------------------------------------------------------------------------------------

describe('the Helm chart helm/dinofleet', () => {
  afterAll(() => {
    for (const dir of [DEV_TLS_DIR, ...MOUNT_DIRS]) rmSync(dir, { recursive: true, force: true });
  });

  beforeAll(async () => {
    await Promise.all(
      Object.entries(CASES).map(async ([name, values]) => {
        rendered.set(name, await renderChart({ values: [values], releaseName: RELEASE, namespace: NAMESPACE }));
      }),
    );
  });

  it('has values.schema.json generated from helm/src/chart-values-schema.ts and current copies of deploy/ (pnpm --filter @dinofleet/helm-chart generate)', () => {
    expect(staleChartFiles()).toEqual([]);
  });

  it('has values.yaml that passes the values schema, with a default job spec the coordinator accepts', () => {
    const parsed = CHART_VALUES_SCHEMA.safeParse(DEFAULT_VALUES);
    expect(parsed.error?.issues ?? []).toEqual([]);
    const spec = resolveJobSpec(valueAt(DEFAULT_VALUES, 'job.spec'));
    expect(spec.spec.training.backend).toBe(valueAt(DEFAULT_VALUES, 'workers.backend'));
    expect(spec.spec.fleet.workers).toBeLessThanOrEqual(Number(valueAt(DEFAULT_VALUES, 'workers.replicas')));
  });

  it("ships deploy/'s Grafana dashboards (a datasource variable, a uid, PromQL targets on it) and alert rules in files/", () => {
    const dashboards = readdirSync(join(CHART_DIR, CHART_DASHBOARDS_DIR)).filter((name) => name.endsWith('.json'));
    expect(dashboards.sort()).toEqual(['collapse.json', 'communication.json', 'data.json', 'fleet.json', 'learning.json', 'throughput.json']);
    const uids = new Set<string>();
    for (const name of dashboards) {
      const dashboard = JSON.parse(readFileSync(join(CHART_DIR, CHART_DASHBOARDS_DIR, name), 'utf8')) as {
        uid?: unknown;
        title?: unknown;
        templating?: { list?: Array<{ name?: string; type?: string; query?: unknown }> };
        panels?: Array<{ id?: number; title?: string; datasource?: { uid?: string }; targets?: Array<{ expr?: string; refId?: string; datasource?: { uid?: string } }> }>;
      };
      expect(typeof dashboard.title, name).toBe('string');
      expect(dashboard.uid, name).toMatch(/^dinofleet-[a-z]+$/);
      uids.add(String(dashboard.uid));
      expect(dashboard.templating?.list?.find((v) => v.name === 'datasource'), name).toMatchObject({ type: 'datasource', query: 'prometheus' });
      expect(dashboard.panels?.length, name).toBeGreaterThan(3);
      for (const panel of dashboard.panels ?? []) {
        expect(panel.datasource?.uid, `${name} / ${panel.title}`).toBe('${datasource}');
        expect(panel.targets?.length, `${name} / ${panel.title}`).toBeGreaterThan(0);
        for (const target of panel.targets ?? []) {
          expect(target.datasource?.uid, `${name} / ${panel.title}`).toBe('${datasource}');
          expect(target.expr, `${name} / ${panel.title}`).toMatch(/dinofleet_/);
        }
      }
    }
    expect(uids.size).toBe(dashboards.length);
    const rules = parseYaml(readFileSync(join(CHART_DIR, CHART_RULES_FILE), 'utf8')) as { groups?: Array<{ name?: string; rules?: unknown[] }> };
    expect(rules.groups?.length).toBeGreaterThan(0);
    for (const group of rules.groups ?? []) expect(group.rules?.length, group.name).toBeGreaterThan(0);
  });

  describe.each(Object.keys(CASES))('with values: %s', (caseName) => {
    it('renders only objects that pass the Kubernetes OpenAPI schemas and naming rules', () => {
      const chart = chartOf(caseName);
      expect(chart.objects.length).toBeGreaterThan(10);
      for (const object of chart.objects) validateKubernetesObject(object);
    });

    it('passes helm lint --strict', async () => {
      const result = await helmLint({ values: [CASES[caseName] ?? {}], namespace: NAMESPACE });
      expect(result.stdout + result.stderr).toContain('0 chart(s) failed');
      expect(result.exitCode).toBe(0);
    });

    it("passes each service only flags its own config code accepts, pointing at the chart's Services and ports", () => {
      const chart = chartOf(caseName);
      const values = valuesOf(caseName);
      const grpcPort = Number(valueAt(values, 'ports.grpc'));
      const dataPort = Number(valueAt(values, 'ports.data'));
      const metricsPort = Number(valueAt(values, 'ports.metrics'));
      const coordinatorService = nameOf(byComponent(chart, 'Service', 'coordinator'));
      const teacherSyncService = nameOf(byComponent(chart, 'Service', 'teacher-sync'));
      const workerService = nameOf(byComponent(chart, 'Service', 'worker'));

      // The Secrets mounted as the kubelet would (--tls-dir, --api-tokens point into them).
      const tlsOn = valueAt(values, 'tls.enabled') === true;
      const coordinatorDeployment = byComponent(chart, 'Deployment', 'coordinator');
      const coordinator = containerOf(coordinatorDeployment);
      const coordinatorEnv = containerEnv(coordinator, 'coordinator-7d9f-abcde');
      const coordinatorMounts = mountSecretVolumes(chart, coordinatorDeployment, coordinator);
      const { values: coordinatorFlags } = parseArgs({
        args: containerArgs(coordinator, coordinatorEnv, coordinatorMounts),
        options: COORDINATOR_FLAG_OPTIONS,
        strict: true,
        allowPositionals: false,
      });
      const coordinatorConfig = resolveCoordinatorConfig(coordinatorFlags, coordinatorEnv);
      // The scaler the values chose; kubernetes scales this release's worker StatefulSet (in-cluster config).
      expect(coordinatorConfig.scaler).toBe(valueAt(values, 'coordinator.scaler'));
      expect(coordinatorConfig.kubernetes).toEqual(
        coordinatorConfig.scaler === 'kubernetes' ? { statefulSet: nameOf(byComponent(chart, 'StatefulSet', 'worker')), namespace: NAMESPACE, kubeconfigPath: undefined } : undefined,
      );
      expect(coordinatorConfig.listen).toBe(`0.0.0.0:${grpcPort}`);
      expect(coordinatorConfig.metricsListen).toBe(`0.0.0.0:${metricsPort}`);
      expect(coordinatorConfig.teacherSyncAddress).toBe(`${teacherSyncService}.${NAMESPACE}.svc:${grpcPort}`);
      expect(coordinatorConfig.logLevel).toBe(valueAt(values, 'logLevel'));
      // --tls-dir and --api-tokens (a file of the mounted tokens Secret), or --insecure alone;
      // main.ts then loads both as here.
      expect([coordinatorConfig.tlsDir, coordinatorConfig.insecure]).toEqual(tlsOn ? [coordinatorMounts.get(CHART_TLS_DIR), false] : [undefined, true]);
      expect(coordinatorConfig.apiTokensFile).toBe(tlsOn ? `${coordinatorMounts.get(CHART_API_TOKENS_DIR)}/${tokensKeyOf(values)}` : undefined);
      if (coordinatorConfig.tlsDir !== undefined) expect(loadTlsDir(coordinatorConfig.tlsDir).cert).toBeDefined();
      if (coordinatorConfig.apiTokensFile !== undefined) expect(loadApiTokens(coordinatorConfig.apiTokensFile).map(({ name, scope }) => `${name} ${scope}`)).toEqual(['ops admin', 'ci submit']);
      if (valueAt(values, 'redis.mode') === 'bundled') {
        const redisService = nameOf(byComponent(chart, 'Service', 'redis'));
        const auth = valueAt(values, 'redis.bundled.auth.enabled') === true ? ':correct-horse@' : '';
        expect(coordinatorConfig.redisUrl).toBe(`redis://${auth}${redisService}.${NAMESPACE}.svc:6379`);
      } else {
        expect(coordinator.env?.find((variable) => variable.name === 'DINOFLEET_REDIS_URL')?.valueFrom?.secretKeyRef).toBeDefined();
      }
      expect(resolveS3Config({}, coordinatorEnv).endpoint).toBe((valueAt(values, 's3.endpoint') as string) || undefined);

      const teacherSyncDeployment = byComponent(chart, 'Deployment', 'teacher-sync');
      const teacherSync = containerOf(teacherSyncDeployment);
      const teacherSyncEnv = containerEnv(teacherSync, 'teacher-sync-5c6b-fghij');
      const teacherSyncMounts = mountSecretVolumes(chart, teacherSyncDeployment, teacherSync);
      const { values: teacherSyncFlags } = parseArgs({
        args: containerArgs(teacherSync, teacherSyncEnv, teacherSyncMounts),
        options: TEACHER_SYNC_FLAG_OPTIONS,
        strict: true,
        allowPositionals: false,
      });
      const teacherSyncConfig = resolveTeacherSyncConfig(teacherSyncFlags, teacherSyncEnv);
      expect(teacherSyncConfig.listen).toBe(`0.0.0.0:${grpcPort}`);
      expect(teacherSyncConfig.metricsListen).toBe(`0.0.0.0:${metricsPort}`);
      expect(teacherSyncConfig.maxSnapshotBytes).toBe(valueAt(values, 'teacherSync.maxSnapshotBytes') ?? 1024 ** 3);
      expect([teacherSyncConfig.tlsDir, teacherSyncConfig.insecure]).toEqual(tlsOn ? [teacherSyncMounts.get(CHART_TLS_DIR), false] : [undefined, true]);
      resolveS3Config({}, teacherSyncEnv);

      const workers = byComponent(chart, 'StatefulSet', 'worker');
      const worker = containerOf(workers);
      const podName = `${nameOf(workers)}-0`;
      const workerEnv = containerEnv(worker, podName);
      const workerMounts = mountSecretVolumes(chart, workers, worker);
      const workerConfig = resolveWorkerConfig(containerArgs(worker, workerEnv, workerMounts), workerEnv, 'not-the-pod-name');
      // The worker loads its TLS directory while resolving its flags: the mounted Secret's files.
      expect(workerConfig.security.kind === 'mtls' ? workerConfig.security.material.dir : 'insecure').toBe(tlsOn ? workerMounts.get(CHART_TLS_DIR) : 'insecure');
      expect(workerConfig.coordinator).toBe(`${coordinatorService}.${NAMESPACE}.svc:${grpcPort}`);
      expect(workerConfig.workerId).toBe(podName);
      expect(workerConfig.listen).toBe(`0.0.0.0:${grpcPort}`);
      expect(workerConfig.dataListen).toBe(`0.0.0.0:${dataPort}`);
      expect(workerConfig.metricsListen).toBe(`0.0.0.0:${metricsPort}`);
      expect(workerConfig.advertiseHost).toBe(
        valueAt(values, 'workers.advertise') === 'dns' ? `${podName}.${workerService}.${NAMESPACE}.svc.cluster.local` : POD_IP,
      );
      expect(workerConfig.backend).toBe(valueAt(values, 'workers.backend'));
      expect(workerConfig.fetchConcurrency).toBe(valueAt(values, 'workers.fetchConcurrency') ?? 16);
      const prefetchMb = valueAt(values, 'workers.prefetchMb');
      expect(workerConfig.prefetchBytes).toBe((typeof prefetchMb === 'number' ? prefetchMb : 512) * 1024 * 1024);
      if (typeof valueAt(values, 'workers.loaderThreads') === 'number') expect(workerConfig.loaderThreads).toBe(valueAt(values, 'workers.loaderThreads'));
      resolveS3Config({}, workerEnv);
    });

    it('sets only environment variables the services read (docs/cluster.md) or that only feed $(VAR) and the runtime', () => {
      for (const { owner, template } of chartOf(caseName).podTemplates()) {
        for (const container of template.spec?.containers ?? []) {
          if (container.name === 'redis') continue;
          for (const { name } of container.env ?? []) {
            expect(NON_CONFIG_ENV.has(name) || CLUSTER_DOC.includes(`\`${name}\``), `${owner} sets ${name}`).toBe(true);
          }
        }
      }
    });

    it('gives every service --tls-dir on the mounted TLS Secret (--insecure with TLS off), the coordinator alone --api-tokens on its mounted tokens file', () => {
      const chart = chartOf(caseName);
      const values = valuesOf(caseName);
      const tlsOn = valueAt(values, 'tls.enabled') === true;
      const tlsSecret = (valueAt(values, 'tls.existingSecret') as string) || `${chartFullname(chart)}-tls`;
      const tokensSecret = (valueAt(values, 'apiTokens.existingSecret') as string) || `${chartFullname(chart)}-api-tokens`;
      const tokensFile = `${CHART_API_TOKENS_DIR}/${tokensKeyOf(values)}`;
      const services = [byComponent(chart, 'Deployment', 'coordinator'), byComponent(chart, 'Deployment', 'teacher-sync'), byComponent(chart, 'StatefulSet', 'worker')];
      for (const workload of services) {
        const container = containerOf(workload);
        const pod = workload.spec?.template.spec;
        const args = container.args ?? [];
        const isCoordinator = workload.metadata?.labels?.[COMPONENT] === 'coordinator';
        const security = args.filter((arg) => /^--(tls-dir|insecure|api-tokens)\b/.test(arg));
        expect(security, container.name).toEqual(
          tlsOn ? [`--tls-dir=${CHART_TLS_DIR}`, ...(isCoordinator ? [`--api-tokens=${tokensFile}`] : [])] : ['--insecure'],
        );
        const mounts = new Map((container.volumeMounts ?? []).map((mount) => [mount.name, mount]));
        const volumes = new Map((pod?.volumes ?? []).map((volume) => [volume.name, volume]));
        if (tlsOn) {
          // The whole Secret: each member presents the fleet certificate and holds its key.
          expect(mounts.get('tls'), container.name).toEqual({ name: 'tls', mountPath: CHART_TLS_DIR, readOnly: true });
          expect(volumes.get('tls')?.secret, container.name).toEqual({ secretName: tlsSecret, defaultMode: 0o440 });
        } else {
          expect([mounts.has('tls'), volumes.has('tls')], container.name).toEqual([false, false]);
        }
        if (tlsOn && isCoordinator) {
          expect(mounts.get('api-tokens')).toEqual({ name: 'api-tokens', mountPath: CHART_API_TOKENS_DIR, readOnly: true });
          // Only the tokens file, whatever else the Secret holds.
          expect(volumes.get('api-tokens')?.secret).toEqual({ secretName: tokensSecret, defaultMode: 0o440, items: [{ key: tokensKeyOf(values), path: tokensKeyOf(values) }] });
        } else {
          expect([mounts.has('api-tokens'), volumes.has('api-tokens')], container.name).toEqual([false, false]);
        }
      }
    });

    it('renders no API token anywhere: only hashes, and only where the tokens file is', () => {
      const rendered = JSON.stringify(chartOf(caseName).objects);
      for (const token of Object.values(RAW_TOKENS)) expect(rendered.includes(token)).toBe(false);
      expect(rendered).not.toMatch(RAW_TOKEN_PATTERN);
    });

    it('runs every pod as non-root with RuntimeDefault seccomp, a read-only root filesystem and no capabilities', () => {
      for (const { owner, template } of chartOf(caseName).podTemplates()) {
        const pod = template.spec;
        expect(pod?.securityContext?.runAsNonRoot, owner).toBe(true);
        expect(pod?.securityContext?.seccompProfile?.type, owner).toBe('RuntimeDefault');
        for (const container of pod?.containers ?? []) {
          expect(container.securityContext?.readOnlyRootFilesystem, `${owner} ${container.name}`).toBe(true);
          expect(container.securityContext?.allowPrivilegeEscalation, `${owner} ${container.name}`).toBe(false);
          expect(container.securityContext?.capabilities?.drop, `${owner} ${container.name}`).toEqual(['ALL']);
          // The read-only root needs a writable /tmp (tsx's cache, redis-cli).
          expect(container.volumeMounts?.some((mount) => mount.mountPath === '/tmp'), `${owner} ${container.name}`).toBe(true);
        }
      }
    });

    it("runs the repository's entry points and gives Services selectors and target ports that match pods", () => {
      const chart = chartOf(caseName);
      const templates = chart.podTemplates();
      for (const { owner, template } of templates) {
        for (const container of template.spec?.containers ?? []) {
          for (const path of (container.command ?? []).filter((part) => part.startsWith('/app/'))) {
            expect(existsSync(join(REPO_ROOT, path.slice('/app/'.length))), `${owner} runs ${path}`).toBe(true);
          }
        }
      }
      for (const service of chart.all('Service')) {
        const selector = service.spec?.selector ?? {};
        const pods = templates.filter(({ template }) => Object.entries(selector).every(([key, value]) => template.metadata?.labels?.[key] === value));
        expect(pods.length, `Service ${nameOf(service)} selects no pod`).toBe(1);
        const portNames = new Set(pods[0]?.template.spec?.containers.flatMap((container) => (container.ports ?? []).map((port) => port.name)));
        for (const port of service.spec?.ports ?? []) expect(portNames.has(String(port.targetPort)), `Service ${nameOf(service)} port ${port.name}`).toBe(true);
      }
    });
  });

  it('gives the coordinator a Role on the worker StatefulSet and its scale subresource only, and the scaler its settings', () => {
    const chart = chartOf('GPU scheduling, Redis password, kubernetes scaler, long names');
    const workers = byComponent(chart, 'StatefulSet', 'worker');
    const role = byComponent(chart, 'Role', 'coordinator');
    expect(role.rules).toEqual([{ apiGroups: ['apps'], resources: ['statefulsets', 'statefulsets/scale'], resourceNames: [nameOf(workers)], verbs: ['get', 'patch', 'update'] }]);
    expect(chart.all('Role')).toHaveLength(1);
    expect(chart.objects.some((object) => object.kind.startsWith('Cluster'))).toBe(false);

    const coordinator = byComponent(chart, 'Deployment', 'coordinator');
    const binding = byComponent(chart, 'RoleBinding', 'coordinator');
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: nameOf(role) });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: coordinator.spec?.template.spec?.serviceAccountName, namespace: NAMESPACE }]);
    expect(chart.has('ServiceAccount', coordinator.spec?.template.spec?.serviceAccountName ?? '')).toBe(true);
    // Nobody else gets the coordinator's account or an API token.
    for (const { owner, template } of chart.podTemplates()) {
      if (owner === `Deployment/${nameOf(coordinator)}`) continue;
      expect(template.spec?.serviceAccountName, owner).not.toBe(coordinator.spec?.template.spec?.serviceAccountName);
      expect(template.spec?.automountServiceAccountToken, owner).toBe(false);
    }

    const env = containerEnv(containerOf(coordinator), 'coordinator-0');
    expect(env).toMatchObject({ DINOFLEET_SCALER: 'kubernetes', DINOFLEET_K8S_STATEFULSET: nameOf(workers), DINOFLEET_K8S_NAMESPACE: NAMESPACE });
    // Long names are cut so that every name (and the pods' hostnames) stays a DNS label.
    expect(nameOf(workers).length).toBeLessThanOrEqual(52);
  });

  it('lets workers reach each other on the gRPC and data ports, the coordinator alone reach Redis, and Prometheus scrape metrics', () => {
    const chart = chartOf('default');
    const labelsOf = (component: string): Readonly<Record<string, string>> =>
      byComponent(chart, component === 'redis' ? 'StatefulSet' : component === 'worker' ? 'StatefulSet' : 'Deployment', component).spec?.template.metadata?.labels ?? {};
    const selects = (selector: Readonly<Record<string, string>> | undefined, component: string): boolean =>
      Object.entries(selector ?? {}).every(([key, value]) => labelsOf(component)[key] === value);
    const ingressOf = (component: string) => {
      const policy = byComponent(chart, 'NetworkPolicy', component);
      expect(selects(policy.spec?.podSelector.matchLabels, component)).toBe(true);
      expect(policy.spec?.policyTypes).toEqual(['Ingress']);
      return policy.spec?.ingress ?? [];
    };

    const workerIngress = ingressOf('worker');
    const ring = workerIngress.find((rule) => rule.ports?.some((port) => port.port === 'data'));
    expect(ring?.ports).toEqual([
      { port: 'grpc', protocol: 'TCP' },
      { port: 'data', protocol: 'TCP' },
    ]);
    expect(ring?.from).toHaveLength(1);
    expect(selects(ring?.from?.[0]?.podSelector?.matchLabels, 'worker')).toBe(true);
    // The named ports are the worker's fixed --listen and --data-listen ports.
    const workerPorts = containerOf(byComponent(chart, 'StatefulSet', 'worker')).ports ?? [];
    expect(workerPorts.map(({ name, containerPort }) => [name, containerPort])).toEqual([
      ['grpc', 50051],
      ['metrics', 9090],
      ['data', 50052],
    ]);

    for (const component of ['worker', 'coordinator', 'teacher-sync']) {
      const metrics = ingressOf(component).find((rule) => rule.ports?.some((port) => port.port === 'metrics'));
      expect(metrics?.from, component).toEqual([{ namespaceSelector: {} }]);
    }
    const coordinatorGrpc = ingressOf('coordinator').find((rule) => rule.ports?.some((port) => port.port === 'grpc'));
    expect(selects(coordinatorGrpc?.from?.[0]?.podSelector?.matchLabels, 'worker')).toBe(true);
    expect(coordinatorGrpc?.from?.[1]?.podSelector?.matchLabels?.[COMPONENT]).toBe('job-submit');
    expect(coordinatorGrpc?.from?.[2]).toEqual({ podSelector: {} });

    const redisIngress = ingressOf('redis');
    expect(redisIngress).toHaveLength(1);
    expect(redisIngress[0]?.ports).toEqual([{ port: 'redis', protocol: 'TCP' }]);
    expect(redisIngress[0]?.from).toHaveLength(1);
    expect(selects(redisIngress[0]?.from?.[0]?.podSelector?.matchLabels, 'coordinator')).toBe(true);

    expect(chartOf('CPU workers, no NetworkPolicy, no PDB, ephemeral Redis, every worker flag').all('NetworkPolicy')).toEqual([]);
  });

  it('requests GPUs with the node selector and tolerations from values, and none for CPU workers', () => {
    const resourcesOf = (caseName: string) => containerOf(byComponent(chartOf(caseName), 'StatefulSet', 'worker')).resources;
    expect(resourcesOf('default')).toEqual({ requests: { cpu: '4', memory: '16Gi', 'nvidia.com/gpu': 1 }, limits: { memory: '32Gi', 'nvidia.com/gpu': 1 } });
    expect(resourcesOf('GPU scheduling, Redis password, kubernetes scaler, long names')?.limits?.['nvidia.com/gpu']).toBe(2);
    expect(resourcesOf('GPU scheduling, Redis password, kubernetes scaler, long names')?.requests?.['nvidia.com/gpu']).toBe(2);
    expect(resourcesOf('CPU workers, no NetworkPolicy, no PDB, ephemeral Redis, every worker flag')).toEqual({ requests: { cpu: '4', memory: '16Gi' }, limits: { memory: '32Gi' } });

    const gpuPods = byComponent(chartOf('GPU scheduling, Redis password, kubernetes scaler, long names'), 'StatefulSet', 'worker');
    expect(gpuPods.spec?.replicas).toBe(4);
    expect(gpuPods.spec?.template.spec?.nodeSelector).toEqual({ 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' });
    expect(gpuPods.spec?.template.spec?.tolerations).toEqual([{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
    // Only the workers are scheduled onto GPU nodes.
    const coordinator = byComponent(chartOf('GPU scheduling, Redis password, kubernetes scaler, long names'), 'Deployment', 'coordinator');
    expect(coordinator.spec?.template.spec?.tolerations).toBeUndefined();
  });

  it('probes every service on its gRPC port (start-up, readiness: TCP under mutual TLS, the gRPC health service when insecure) and /healthz on the metrics port (liveness)', () => {
    for (const caseName of ['default', 'GPU scheduling, Redis password, kubernetes scaler, long names', 'TLS off (insecure acknowledged), job submit']) {
      const chart = chartOf(caseName);
      const grpcPort = Number(valueAt(valuesOf(caseName), 'ports.grpc'));
      const containers = [
        containerOf(byComponent(chart, 'Deployment', 'coordinator')),
        containerOf(byComponent(chart, 'Deployment', 'teacher-sync')),
        containerOf(byComponent(chart, 'StatefulSet', 'worker')),
      ];
      for (const container of containers) {
        // The kubelet's gRPC probe speaks plaintext; under mutual TLS it would never pass.
        const probe = valueAt(valuesOf(caseName), 'tls.enabled') === false ? { grpc: { port: grpcPort } } : { tcpSocket: { port: 'grpc' } };
        expect({ grpc: container.startupProbe?.grpc, tcpSocket: container.startupProbe?.tcpSocket }, container.name).toEqual({ grpc: undefined, tcpSocket: undefined, ...probe });
        expect({ grpc: container.readinessProbe?.grpc, tcpSocket: container.readinessProbe?.tcpSocket }, container.name).toEqual({ grpc: undefined, tcpSocket: undefined, ...probe });
        expect(container.livenessProbe?.httpGet, container.name).toEqual({ path: '/healthz', port: 'metrics' });
        expect(container.ports?.find((port) => port.name === 'grpc')?.containerPort, container.name).toBe(grpcPort);
      }
    }
  });

  it('gives workers a headless Service that publishes not-ready pods, as the StatefulSet serviceName, and a PodDisruptionBudget', () => {
    const chart = chartOf('default');
    const service = byComponent(chart, 'Service', 'worker');
    const workers = byComponent(chart, 'StatefulSet', 'worker');
    expect(service.spec?.clusterIP).toBe('None');
    expect(service.spec?.publishNotReadyAddresses).toBe(true);
    expect(service.spec?.ports?.map((port) => [port.name, port.port])).toEqual([
      ['grpc', 50051],
      ['data', 50052],
      ['metrics', 9090],
    ]);
    expect(workers.spec?.serviceName).toBe(nameOf(service));
    expect(workers.spec?.podManagementPolicy).toBe('Parallel');
    expect(workers.spec?.template.spec?.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(40);
    const budget = byComponent(chart, 'PodDisruptionBudget', 'worker');
    expect(budget.spec?.maxUnavailable).toBe(1);
    expect(budget.spec?.selector?.matchLabels).toEqual(workers.spec?.selector.matchLabels);
    // One coordinator and one teacher-sync, never two during a rollout.
    for (const component of ['coordinator', 'teacher-sync']) {
      const deployment = byComponent(chart, 'Deployment', component);
      expect(deployment.spec?.replicas).toBe(1);
      expect(deployment.spec?.strategy?.type).toBe('Recreate');
    }
  });

  it('runs a bundled Redis with persistence by default, and none with an external URL', () => {
    const redis = byComponent(chartOf('default'), 'StatefulSet', 'redis');
    expect(redis.spec?.volumeClaimTemplates?.[0]?.spec?.resources?.requests?.storage).toBe('8Gi');
    expect(redis.spec?.volumeClaimTemplates?.[0]?.spec?.storageClassName).toBeUndefined();
    expect(containerOf(redis).args).toContain('--appendonly');
    const withClass = byComponent(chartOf('GPU scheduling, Redis password, kubernetes scaler, long names'), 'StatefulSet', 'redis');
    expect(withClass.spec?.volumeClaimTemplates?.[0]?.spec?.storageClassName).toBe('fast-ssd');
    expect(containerOf(withClass).args).toEqual(expect.arrayContaining(['--requirepass', '$(REDIS_PASSWORD)']));
    expect(byComponent(chartOf('CPU workers, no NetworkPolicy, no PDB, ephemeral Redis, every worker flag'), 'StatefulSet', 'redis').spec?.volumeClaimTemplates).toBeUndefined();
    const external = chartOf('external Redis URL, created Secrets, DNS advertise');
    expect(external.all('StatefulSet').map((set) => set.metadata?.labels?.[COMPONENT])).toEqual(['worker']);
  });

  it('creates Secrets from values, refers to existing ones by name and key, and mounts TLS and API tokens', () => {
    // Secure by default: a generated TLS Secret and a tokens file from apiTokens.tokens.
    expect(chartOf('default').all('Secret').map(nameOf).sort()).toEqual(['df-dinofleet-api-tokens', 'df-dinofleet-tls']);

    const created = chartOf('external Redis URL, created Secrets, DNS advertise');
    const secrets = new Map(created.all('Secret').map((secret) => [nameOf(secret), secret]));
    expect([...secrets.keys()].sort()).toEqual(['df-dinofleet-api-tokens', 'df-dinofleet-redis-url', 'df-dinofleet-s3', 'df-dinofleet-tls']);
    expect(secrets.get('df-dinofleet-redis-url')?.stringData).toEqual({ 'redis-url': 'rediss://:pw@redis.example.com:6380/0' });
    // PEM from values, as given, in the layout the services load.
    const tls = secrets.get('df-dinofleet-tls');
    expect(tls?.type).toBe('kubernetes.io/tls');
    expect(tls?.stringData).toEqual({ 'tls.crt': DEV_PEM.cert, 'tls.key': DEV_PEM.key, 'ca.crt': DEV_PEM.ca });
    expect(loadMountedTlsSecret(tls as ChartKinds['Secret']).cert?.toString('utf8')).toBe(DEV_PEM.cert);
    // The tokens file the coordinator parses: the hashes of apiTokens.tokens, `sha256:` added to bare hex.
    const tokensFile = secrets.get('df-dinofleet-api-tokens')?.stringData?.['api-tokens'] ?? '';
    expect(parseApiTokens(tokensFile, 'the chart\'s api-tokens Secret')).toEqual([
      { name: 'ops', scope: 'admin', hash: hashApiToken(RAW_TOKENS.ops) },
      { name: 'ci', scope: 'submit', hash: hashApiToken(RAW_TOKENS.ci) },
    ]);
    expect(CHART_API_SCOPES).toEqual(API_SCOPES);

    const existing = chartOf('existing Secrets: cert-manager TLS, a tokens file, a submit token');
    expect(existing.all('Secret')).toEqual([]);
    const refs = (chart: RenderedChart, component: string) =>
      Object.fromEntries(
        (containerOf(byComponent(chart, component === 'worker' ? 'StatefulSet' : 'Deployment', component)).env ?? []).flatMap((variable) =>
          variable.valueFrom?.secretKeyRef === undefined ? [] : [[variable.name, `${variable.valueFrom.secretKeyRef.name}/${variable.valueFrom.secretKeyRef.key}`]],
        ),
      );
    expect(refs(existing, 'coordinator')).toEqual({ DINOFLEET_REDIS_URL: 'shared-redis/url', AWS_ACCESS_KEY_ID: 'shared-s3/id', AWS_SECRET_ACCESS_KEY: 'shared-s3/secret' });
    expect(refs(existing, 'worker')).toEqual({ AWS_ACCESS_KEY_ID: 'shared-s3/id', AWS_SECRET_ACCESS_KEY: 'shared-s3/secret' });
    expect(refs(created, 'teacher-sync')).toEqual({ AWS_ACCESS_KEY_ID: 'df-dinofleet-s3/AWS_ACCESS_KEY_ID', AWS_SECRET_ACCESS_KEY: 'df-dinofleet-s3/AWS_SECRET_ACCESS_KEY' });
    expect(containerArgs(containerOf(byComponent(existing, 'Deployment', 'coordinator')), {})).toContain(`--api-tokens=${CHART_API_TOKENS_DIR}/tokens.txt`);

    for (const [chart, tlsSecret, tokensSecret] of [
      [created, 'df-dinofleet-tls', 'df-dinofleet-api-tokens'],
      [existing, 'dinofleet-mtls', 'dinofleet-tokens'],
    ] as const) {
      for (const { owner, template } of chart.podTemplates()) {
        const volumes = new Map((template.spec?.volumes ?? []).map((volume) => [volume.name, volume.secret?.secretName]));
        const mounts = new Map((template.spec?.containers[0]?.volumeMounts ?? []).map((mount) => [mount.name, mount.mountPath]));
        expect([volumes.get('tls'), mounts.get('tls')], owner).toEqual([tlsSecret, CHART_TLS_DIR]);
        // The hashes are for the server that checks tokens, nobody else.
        const wantsTokens = owner.endsWith('-coordinator');
        expect([volumes.get('api-tokens'), mounts.get('api-tokens')], owner).toEqual(wantsTokens ? [tokensSecret, CHART_API_TOKENS_DIR] : [undefined, undefined]);
      }
    }
  });

  it('generates a CA and a fleet certificate for server and client auth that the services load, and every pod rolls with them', async () => {
    const chart = chartOf('default');
    const secret = chart.get('Secret', 'df-dinofleet-tls');
    expect(secret.type).toBe('kubernetes.io/tls');
    expect(Object.keys(secret.data ?? {}).sort()).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    expect(secret.metadata?.annotations?.['dinofleet.io/tls-generated']).toBe('true');
    const files = tlsFilesOf(secret);
    const ca = new X509Certificate(files['ca.crt']);
    const cert = new X509Certificate(files['tls.crt']);
    expect(ca.ca).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
    // One certificate for every member: servers (teacher-sync, workers, the coordinator) and clients of each other.
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
    const names = (cert.subjectAltName ?? '').split(', ');
    expect(names).toEqual(
      expect.arrayContaining([
        'DNS:df-dinofleet-coordinator.train.svc',
        'DNS:df-dinofleet-coordinator.train.svc.cluster.local',
        'DNS:df-dinofleet-teacher-sync.train.svc',
        'DNS:*.df-dinofleet-worker.train.svc',
        'DNS:*.df-dinofleet-worker.train.svc.cluster.local',
      ]),
    );
    const validDays = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 86_400_000;
    expect(Math.round(validDays)).toBe(valueAt(DEFAULT_VALUES, 'tls.generated.validityDays'));
    // What the services do at start with the mounted directory: chain, key, validity.
    const material = loadMountedTlsSecret(secret);
    expect(material.caCerts.map((c) => c.fingerprint256)).toEqual([ca.fingerprint256]);

    // The Secret and the pods' checksum see the same material (generated once per render); a
    // new CA (a fresh install here: no cluster to look the Secret up in) rolls every pod.
    const checksums = (rendered: RenderedChart): Set<string> => {
      const found = rendered.podTemplates().flatMap(({ template }) => template.metadata?.annotations?.['checksum/secrets'] ?? []);
      expect(found).toHaveLength(3); // coordinator, teacher-sync, workers
      return new Set(found);
    };
    expect(checksums(chart).size).toBe(1);
    const again = await renderChart({ values: [CASES.default ?? {}], releaseName: RELEASE, namespace: NAMESPACE });
    expect(checksums(again).size).toBe(1);
    expect([...checksums(again)]).not.toEqual([...checksums(chart)]);
    expect(tlsFilesOf(again.get('Secret', 'df-dinofleet-tls'))['ca.crt']).not.toBe(files['ca.crt']);
  });

  it('renders the ServiceMonitor, the PrometheusRule from files/prometheus/rules.yaml and the dashboards ConfigMap when asked', () => {
    const chart = chartOf('monitoring objects and job submit');
    const monitor = byComponent(chart, 'ServiceMonitor', 'metrics');
    expect(monitor.metadata?.labels?.release).toBe('kube-prometheus-stack');
    expect(monitor.spec.endpoints).toEqual([{ port: 'metrics', path: '/metrics', interval: '30s', honorLabels: true }]);
    const scraped = chart
      .all('Service')
      .filter((service) =>
        Object.entries(monitor.spec.selector.matchLabels ?? {}).every(([key, value]) => service.metadata?.labels?.[key] === value) &&
        monitor.spec.selector.matchExpressions?.every((expression) => expression.values?.includes(service.metadata?.labels?.[expression.key] ?? '')),
      )
      .map((service) => service.metadata?.labels?.[COMPONENT])
      .sort();
    expect(scraped).toEqual(['coordinator', 'teacher-sync', 'worker']);

    const rules = parseYaml(readFileSync(join(CHART_DIR, CHART_RULES_FILE), 'utf8')) as { groups: unknown };
    expect(byComponent(chart, 'PrometheusRule', 'metrics').spec?.groups).toEqual(rules.groups);

    const dashboards = byComponent(chart, 'ConfigMap', 'metrics');
    expect(dashboards.metadata?.labels?.grafana_dashboard).toBe('1');
    expect(dashboards.metadata?.annotations).toEqual({ grafana_folder: 'dinofleet' });
    const files = readdirSync(join(CHART_DIR, CHART_DASHBOARDS_DIR)).filter((name) => name.endsWith('.json'));
    expect(Object.keys(dashboards.data ?? {}).sort()).toEqual(files.sort());
    for (const file of files) expect(JSON.parse(dashboards.data?.[file] ?? '')).toEqual(JSON.parse(readFileSync(join(CHART_DIR, CHART_DASHBOARDS_DIR, file), 'utf8')));

    const plain = chartOf('default');
    expect(plain.all('ServiceMonitor')).toEqual([]);
    expect(plain.all('PrometheusRule')).toEqual([]);
    expect(plain.all('ConfigMap')).toEqual([]);
  });

  it('submits job.spec from a post-install/upgrade hook with the CLI and an idempotency key that depends only on the spec', async () => {
    const chart = chartOf('monitoring objects and job submit');
    const spec = byComponent(chart, 'ConfigMap', 'job-submit').data?.['job.json'] ?? '';
    expect(parseJobSpec(spec, 'json')).toEqual(resolveJobSpec(valueAt(DEFAULT_VALUES, 'job.spec')));
    const job = byComponent(chart, 'Job', 'job-submit');
    expect(job.metadata?.annotations?.['helm.sh/hook']).toBe('post-install,post-upgrade');
    const container = job.spec?.template.spec?.containers[0];
    expect(container?.command).toEqual(['node', '/app/packages/cli/bin/dinofleet.mjs']);
    const [command, fileFlag, file, keyFlag, key] = container?.args ?? [];
    expect([command, fileFlag, file, keyFlag]).toEqual(['submit', '-f', '/etc/dinofleet/job/job.json', '--idempotency-key']);
    expect(key).toMatch(/^df-[0-9a-f]{32}$/);
    expect(container?.args).toHaveLength(5);
    expect(containerEnv(container as Container, 'submit').DINOFLEET_COORDINATOR).toBe(`${nameOf(byComponent(chart, 'Service', 'coordinator'))}.${NAMESPACE}.svc:50051`);
    // A client of the job API: a token with submit scope from the Secret named in values, and
    // the fleet CA alone (not the fleet's certificate and key) to verify the coordinator.
    const submitEnv = new Map((container?.env ?? []).map((variable) => [variable.name, variable]));
    expect(submitEnv.get('DINOFLEET_TOKEN')?.valueFrom).toEqual({ secretKeyRef: { name: 'df-submit-token', key: 'token' } });
    expect(submitEnv.get('DINOFLEET_TLS_DIR')?.value).toBe(CHART_TLS_DIR);
    expect(container?.volumeMounts?.find((mount) => mount.name === 'tls')?.mountPath).toBe(CHART_TLS_DIR);
    const volumes = job.spec?.template.spec?.volumes ?? [];
    expect(volumes.find((volume) => volume.name === 'tls')?.secret).toEqual({ secretName: 'df-dinofleet-tls', defaultMode: 0o440, items: [{ key: 'ca.crt', path: 'ca.crt' }] });
    expect(volumes.some((volume) => volume.name === 'api-tokens')).toBe(false);
    const existing = byComponent(chartOf('existing Secrets: cert-manager TLS, a tokens file, a submit token'), 'Job', 'job-submit').spec?.template.spec?.containers[0]?.env;
    expect(existing?.find((variable) => variable.name === 'DINOFLEET_TOKEN')?.valueFrom).toEqual({ secretKeyRef: { name: 'ci-submit-token', key: 'dinofleet-token' } });
    // With TLS off: plaintext, no token sent, no TLS mounted.
    const plain = byComponent(chartOf('TLS off (insecure acknowledged), job submit'), 'Job', 'job-submit');
    const plainContainer = plain.spec?.template.spec?.containers[0];
    expect(plainContainer?.args?.slice(5)).toEqual(['--insecure']);
    expect(plainContainer?.env?.map((variable) => variable.name)).not.toEqual(expect.arrayContaining(['DINOFLEET_TOKEN']));
    expect(plainContainer?.env?.map((variable) => variable.name)).not.toEqual(expect.arrayContaining(['DINOFLEET_TLS_DIR']));
    expect(plain.spec?.template.spec?.volumes?.some((volume) => volume.name === 'tls')).toBe(false);

    const again = await renderChart({ values: [CASES['monitoring objects and job submit'] ?? {}, { workers: { replicas: 3 } }], releaseName: RELEASE, namespace: NAMESPACE });
    expect(byComponent(again, 'Job', 'job-submit').spec?.template.spec?.containers[0]?.args?.[4]).toBe(key);
    const changed = await renderChart({ values: [CASES['monitoring objects and job submit'] ?? {}, { job: { spec: { spec: { training: { seed: 7 } } } } }], releaseName: RELEASE, namespace: NAMESPACE });
    expect(byComponent(changed, 'Job', 'job-submit').spec?.template.spec?.containers[0]?.args?.[4]).not.toBe(key);

    // values.yaml's way from epochs to steps: null removes the default's key.
    const bySteps = await renderChart({
      values: [{ ...WITH_TOKENS, job: { submit: true, tokenSecret: 'df-submit-token', spec: { spec: { training: { steps: 5000, epochs: null }, checkpoint: null } } } }],
      releaseName: RELEASE,
      namespace: NAMESPACE,
    });
    const resolved = parseJobSpec(byComponent(bySteps, 'ConfigMap', 'job-submit').data?.['job.json'] ?? '', 'json');
    expect([resolved.spec.training.steps, resolved.spec.training.epochs, resolved.spec.checkpoint]).toEqual([5000, null, null]);
  });

  it('refuses a rendered object that breaks its schema (the validator is not a no-op)', () => {
    const workers = structuredClone(byComponent(chartOf('default'), 'StatefulSet', 'worker')) as unknown as KubernetesObject & {
      spec: { template: { spec: { containers: Array<{ ports: Array<{ containerPort: unknown }> }> } } };
    };
    const port = workers.spec.template.spec.containers[0]?.ports[0];
    if (port !== undefined) port.containerPort = 'grpc';
    expect(() => validateKubernetesObject(workers)).toThrow(/containerPort/);
  });

  it('refuses Kubernetes older than 1.24 (gRPC probes)', async () => {
    const result = await helmTemplate({ kubeVersion: '1.23.9' });
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toContain('kubeVersion');
  });

  /**
   * Bad values, and what Helm's message must name. `schema`: refused by values.schema.json
   * (and by the zod schema it is made from); otherwise by the chart's `dinofleet.checkValues`,
   * which compares fields (JSON Schema cannot). `helm lint` runs templates in lint mode, where
   * Helm turns `fail` into an [INFO] line and exits 0, so for those lint only reports it.
   */
  const BAD_VALUES: ReadonlyArray<{ name: string; values: Values; message: string | RegExp; schema: boolean }> = [
    { name: 'an unknown compute backend', values: { workers: { backend: 'cuda' } }, message: 'workers.backend must be one of the following', schema: true },
    { name: 'an unknown top-level key', values: { replicas: 3 }, message: 'Additional property replicas is not allowed', schema: true },
    { name: 'a string for an integer', values: { workers: { replicas: 'two' } }, message: 'workers.replicas: Invalid type. Expected: integer', schema: true },
    { name: 'a scaler the chart does not know', values: { coordinator: { scaler: 'local' } }, message: 'coordinator.scaler must be one of the following', schema: true },
    { name: 'port 0 for the data listener', values: { ports: { data: 0 } }, message: 'ports.data: Must be greater than or equal to 1', schema: true },
    { name: 'an invalid job spec field', values: { job: { spec: { spec: { training: { backend: 'tpu' } } } } }, message: 'job.spec.spec.training.backend must be one of the following', schema: true },
    { name: 'an unknown job spec field', values: { job: { spec: { spec: { fleet: { gpus: 8 } } } } }, message: /job\.spec\.spec\.fleet.*Additional property gpus is not allowed/, schema: true },
    { name: 'external Redis without a URL', values: { redis: { mode: 'external' } }, message: 'redis.external.url or redis.external.existingSecret is required', schema: false },
    { name: 'half a set of S3 keys', values: { s3: { credentials: { accessKeyId: 'AKIDEXAMPLE' } } }, message: 's3.credentials.accessKeyId and s3.credentials.secretAccessKey must be set together', schema: false },
    {
      name: 'a job with both steps and epochs (values merged over the default spec)',
      values: { job: { submit: true, spec: { spec: { training: { steps: 1000 } } } } },
      message: 'job.spec.spec.training sets both steps and epochs',
      schema: false,
    },
    {
      name: 'a job larger than the fixed worker count',
      values: { coordinator: { scaler: 'none' }, job: { submit: true, spec: { spec: { fleet: { workers: 4 } } } } },
      message: 'job.spec.spec.fleet.workers (4) is more than workers.replicas (2)',
      schema: false,
    },
    {
      name: 'TLS on (the default) without API tokens',
      values: {},
      message: /apiTokens\.tokens or apiTokens\.existingSecret is required when tls\.enabled is true.*`dinofleet token create --name NAME --scope admin`.*apiTokens\.tokens/,
      schema: false,
    },
    {
      name: 'a raw API token in place of its hash',
      values: { apiTokens: { tokens: [{ name: 'ops', scope: 'admin', sha256: RAW_TOKENS.ops }] } },
      message: /apiTokens\.tokens\[0\]\.sha256 holds an API token itself.*treat this token as leaked/,
      schema: false,
    },
    {
      name: 'a raw API token elsewhere in values (an extra env var)',
      values: { ...WITH_TOKENS, coordinator: { extraEnv: [{ name: 'DINOFLEET_TOKEN', value: RAW_TOKENS.ci }] } },
      message: 'the values hold an API token itself',
      schema: false,
    },
    {
      name: 'a token hash that is not sha256:<hex>',
      values: { apiTokens: { tokens: [{ name: 'ops', scope: 'admin', sha256: 'sha256:3F0C' }] } },
      message: 'apiTokens.tokens[0].sha256 (token ops) must be sha256: and 64 lowercase hex digits',
      schema: false,
    },
    {
      name: 'two tokens of one name',
      values: { apiTokens: { tokens: [TOKEN_ENTRIES[0], { ...TOKEN_ENTRIES[1], name: 'ops' }] } },
      message: 'apiTokens.tokens[1]: the name ops appears twice',
      schema: false,
    },
    { name: 'a token scope that does not exist', values: { apiTokens: { tokens: [{ ...TOKEN_ENTRIES[0], scope: 'root' }] } }, message: 'apiTokens.tokens.0.scope must be one of the following', schema: true },
    { name: 'the old tokens map (raw tokens by name)', values: { apiTokens: { enabled: true, tokens: { ci: 'token-1' } } }, message: 'apiTokens: Additional property enabled is not allowed', schema: true },
    {
      name: 'a job-submit hook without a token Secret',
      values: { ...WITH_TOKENS, job: { submit: true } },
      message: /job\.submit needs job\.tokenSecret when tls\.enabled is true.*--scope submit/,
      schema: false,
    },
    {
      name: 'TLS off without acknowledging plaintext',
      values: { tls: { enabled: false } },
      message: /tls\.enabled is false: every service would run with --insecure.*tls\.insecureAcknowledged=true/,
      schema: false,
    },
    {
      name: 'API tokens with TLS off (the coordinator would ignore them)',
      values: { ...WITH_TOKENS, tls: { enabled: false, insecureAcknowledged: true } },
      message: 'apiTokens has no effect with tls.enabled false',
      schema: false,
    },
    {
      name: 'half of the PEM material',
      values: { ...WITH_TOKENS, tls: { cert: DEV_PEM.cert, key: DEV_PEM.key } },
      message: 'tls.cert, tls.key and tls.ca go together',
      schema: false,
    },
    {
      name: 'PEM material and an existing Secret',
      values: { ...WITH_TOKENS, tls: { existingSecret: 'dinofleet-mtls', ...DEV_PEM } },
      message: 'tls.existingSecret and tls.cert/tls.key/tls.ca exclude each other',
      schema: false,
    },
  ];

  it.each(BAD_VALUES)('refuses $name (helm template and helm lint name the field)', async ({ values, message, schema }) => {
    const [template, lint] = await Promise.all([helmTemplate({ values: [values] }), helmLint({ values: [values] })]);
    expect(template.exitCode).not.toBe(0);
    expect(template.stderr).toMatch(message);
    expect(lint.stdout + lint.stderr).toMatch(message);
    // Messages name the value, never repeat a token.
    expect(template.stderr + lint.stdout + lint.stderr).not.toMatch(RAW_TOKEN_PATTERN);
    if (schema) {
      expect(lint.exitCode).not.toBe(0);
      // The zod schema that values.schema.json is made from refuses them too.
      expect(CHART_VALUES_SCHEMA.safeParse(mergeValues(DEFAULT_VALUES, values)).success).toBe(false);
    } else {
      expect(lint.stderr).toContain('[INFO] Fail: ');
    }
  });
});
