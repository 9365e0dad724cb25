/**
 * The Helm chart's values (`helm/dinofleet/values.yaml`) as one zod schema. It reuses
 * `@dinofleet/config` where a value is a job or service setting (the whole job spec under
 * `job.spec`, the compute backend enum) and `@dinofleet/telemetry`'s log levels, so the
 * chart cannot accept what the services would refuse. `values.schema.json`, which Helm
 * checks every install, upgrade, `lint` and `template` against, is generated from it
 * (`generate-chart-files.ts`); the flag ranges mirror the services' `resolve*Config`.
 */
import { COMPUTE_BACKEND_NAMES, JOB_SPEC_SCHEMA } from '@dinofleet/config';
import { LogLevel } from '@dinofleet/telemetry';
import { z } from 'zod';

/** How the chart runs Redis: a StatefulSet of its own, or one the user already has. */
export const REDIS_MODES = ['bundled', 'external'] as const;
/** A Redis mode. */
export type RedisMode = (typeof REDIS_MODES)[number];

/**
 * What the coordinator scales workers with: `kubernetes` (the default) sets `spec.replicas`
 * of the worker StatefulSet through its `scale` subresource (the coordinator's
 * `KubernetesScaler`); `none` leaves the count to `workers.replicas`. The coordinator's
 * `local` scaler (worker processes beside it) makes no sense in a pod.
 */
export const CHART_SCALERS = ['none', 'kubernetes'] as const;
/** A scaler the chart can select. */
export type ChartScaler = (typeof CHART_SCALERS)[number];

/** The host peers dial a worker at: its pod IP, or its stable name under the headless Service. */
export const WORKER_ADVERTISE_MODES = ['podIP', 'dns'] as const;
/** A worker advertise mode. */
export type WorkerAdvertiseMode = (typeof WORKER_ADVERTISE_MODES)[number];

/** The log levels every service accepts (the coordinator refuses `silent`). */
export const CHART_LOG_LEVELS = [LogLevel.Debug, LogLevel.Info, LogLevel.Warn, LogLevel.Error] as const;

/** Largest `--max-snapshot-bytes` teacher-sync accepts (its `resolveTeacherSyncConfig`). */
const MAX_SNAPSHOT_BYTES_LIMIT = 2 ** 32;

const port = z.int().min(1).max(65_535);
const stringMap = z.record(z.string(), z.string());
/** A free-form Kubernetes object (affinity, a security context): checked by the API server, not here. */
const kubernetesObject = z.record(z.string(), z.unknown());
const quantity = z.union([z.string().regex(/^[+-]?[0-9.]+([eE][+-]?[0-9]+)?([KMGTPE]i?|[mkMGTPE])?$/), z.number().min(0)]);

const RESOURCES = z
  .strictObject({ requests: z.record(z.string(), quantity).optional(), limits: z.record(z.string(), quantity).optional() })
  .describe('Container resources (requests, limits) as in a Kubernetes container.');

const TOLERATION = z.strictObject({
  key: z.string().optional(),
  operator: z.enum(['Exists', 'Equal']).optional(),
  value: z.string().optional(),
  effect: z.enum(['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional(),
  tolerationSeconds: z.int().min(0).optional(),
});

const IMAGE = z.strictObject({
  repository: z.string().min(1).describe('Image repository.'),
  tag: z.string().describe("Image tag; '' means the chart's appVersion."),
  pullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).describe('Image pull policy.'),
});

const ENV_VAR = z.looseObject({ name: z.string().regex(/^[-._a-zA-Z][-._a-zA-Z0-9]*$/) });

/** Scheduling and pod settings every component has. */
const POD_PLACEMENT = {
  resources: RESOURCES,
  nodeSelector: stringMap.describe('Node labels the pods must match.'),
  tolerations: z.array(TOLERATION).describe('Taints the pods tolerate.'),
  affinity: kubernetesObject.describe('Pod affinity and anti-affinity, as in a Kubernetes pod spec.'),
  podAnnotations: stringMap.describe('Extra annotations on the pods.'),
  podLabels: stringMap.describe('Extra labels on the pods.'),
  extraEnv: z.array(ENV_VAR).describe('Extra environment variables (Kubernetes EnvVar objects).'),
  terminationGracePeriodSeconds: z.int().min(1).max(3600).describe('Seconds a pod has to drain after SIGTERM.'),
};

const COORDINATOR = z.strictObject({
  scaler: z.enum(CHART_SCALERS).describe("DINOFLEET_SCALER: 'kubernetes' lets the coordinator scale the worker StatefulSet through its scale subresource; 'none' keeps workers.replicas."),
  redisPrefix: z
    .string()
    .regex(/^[A-Za-z0-9_.{}-]{1,64}$/)
    .describe('--redis-prefix: prefix of every Redis key and BullMQ queue; one coordinator per prefix.'),
  maxRunningJobs: z.int().min(1).max(1000).describe('--max-running-jobs.'),
  workerWaitSeconds: z.int().min(1).max(86_400).describe('--worker-wait-seconds: a job fails when its workers do not register in time.'),
  heartbeatTimeoutSeconds: z.int().min(1).max(3600).describe('--heartbeat-timeout-seconds: a silent worker is dropped after this.'),
  ...POD_PLACEMENT,
});

const TEACHER_SYNC = z.strictObject({
  maxSnapshotBytes: z
    .int()
    .min(1)
    .max(MAX_SNAPSHOT_BYTES_LIMIT)
    .nullable()
    .optional()
    .describe("--max-snapshot-bytes: largest teacher snapshot accepted; null: teacher-sync's default (1 GiB)."),
  ...POD_PLACEMENT,
});

const WORKERS = z.strictObject({
  replicas: z.int().min(0).max(1024).describe('Worker pods the StatefulSet starts with (the coordinator scales it with the kubernetes scaler).'),
  backend: z.enum(COMPUTE_BACKEND_NAMES).describe("--backend: 'tensorflow' (tfjs-node-gpu, the worker image), 'wasm' or 'cpu'."),
  advertise: z.enum(WORKER_ADVERTISE_MODES).describe("--advertise-host: 'podIP' (downward API) or 'dns' (<pod>.<headless service>.<namespace>.svc.<clusterDomain>)."),
  clusterDomain: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/).describe("The cluster's DNS domain, for advertise 'dns'."),
  gpu: z
    .strictObject({
      enabled: z.boolean().describe('Request GPUs for every worker.'),
      count: z.int().min(1).max(16).describe('GPUs per worker.'),
      resourceName: z.string().min(1).describe('Extended resource name of a GPU.'),
    })
    .describe('GPU requests of the workers.'),
  fetchConcurrency: z.int().min(1).max(1024).nullable().optional().describe('--fetch-concurrency: image GETs in flight; null: 16.'),
  loaderThreads: z.int().min(1).max(256).nullable().optional().describe('--loader-threads: decode and crop threads; null: all cores the worker sees.'),
  prefetchMb: z
    .int()
    .min(1)
    .max(1024 * 1024)
    .nullable()
    .optional()
    .describe('--prefetch-mb: megabytes of batches loaded ahead; null: 512.'),
  podDisruptionBudget: z
    .strictObject({ enabled: z.boolean(), maxUnavailable: z.int().min(1).max(1024) })
    .describe('Voluntary evictions (node drains) take at most this many workers at once.'),
  ...POD_PLACEMENT,
});

const SECRET_NAME = z.string().regex(/^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$/).max(253);
const REDIS_PASSWORD = z
  .string()
  .regex(/^[A-Za-z0-9._~-]*$/)
  .describe('Password of the bundled Redis (URL-safe characters only: it is put into the redis:// URL).');

const REDIS = z
  .strictObject({
    mode: z.enum(REDIS_MODES).describe("'bundled': a Redis StatefulSet of this release; 'external': redis.external."),
    external: z.strictObject({
      url: z.string().regex(/^(rediss?:\/\/.+)?$/).describe('redis:// or rediss:// URL (written into a created Secret); or use existingSecret.'),
      existingSecret: SECRET_NAME.describe('Secret holding the URL.'),
      existingSecretKey: z.string().min(1).describe('Key of the URL in existingSecret.'),
    }),
    bundled: z.strictObject({
      image: IMAGE,
      auth: z.strictObject({
        enabled: z.boolean().describe('Require a password (the NetworkPolicy already limits Redis to the coordinator).'),
        password: REDIS_PASSWORD,
        existingSecret: SECRET_NAME.describe('Secret holding the password instead of auth.password.'),
        existingSecretKey: z.string().min(1).describe('Key of the password in existingSecret.'),
      }),
      persistence: z.strictObject({
        enabled: z.boolean().describe('Keep /data on a PersistentVolumeClaim (else an emptyDir: jobs are lost with the pod).'),
        size: z.string().regex(/^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$/).describe('Requested volume size.'),
        storageClass: z.string().nullable().optional().describe("Storage class; null: the cluster's default, '': no class."),
      }),
      resources: RESOURCES,
      nodeSelector: stringMap,
      tolerations: z.array(TOLERATION),
      affinity: kubernetesObject,
    }),
  })
  .describe('Redis: jobs, leases, membership, the sample ledger.');

const S3 = z
  .strictObject({
    endpoint: z
      .string()
      .regex(/^(https?:\/\/[^/@\s]+(\/.*)?)?$/)
      .describe("DINOFLEET_S3_ENDPOINT: an S3-compatible endpoint URL without credentials; '' for AWS S3."),
    region: z.string().describe("AWS_REGION; '' leaves it unset (us-east-1)."),
    forcePathStyle: z.boolean().nullable().optional().describe('DINOFLEET_S3_FORCE_PATH_STYLE; true for MinIO and most non-AWS endpoints; null: unset.'),
    credentials: z.strictObject({
      existingSecret: SECRET_NAME.describe('Secret holding the access key id and secret access key.'),
      accessKeyIdKey: z.string().min(1).describe('Key of the access key id in existingSecret.'),
      secretAccessKeyKey: z.string().min(1).describe('Key of the secret access key in existingSecret.'),
      accessKeyId: z.string().describe('Access key id to put into a created Secret.'),
      secretAccessKey: z.string().describe('Secret access key to put into a created Secret.'),
    }),
  })
  .describe("S3 for every service; without credentials the AWS SDK's default chain applies (e.g. a role on the service account).");

/** A key of a Secret (a file name once mounted). */
const SECRET_KEY = z.string().regex(/^[-._a-zA-Z0-9]+$/).max(253);

/** Where every pod mounts its TLS directory: `--tls-dir` of the services, `DINOFLEET_TLS_DIR` of the job-submit hook. */
export const CHART_TLS_DIR = '/etc/dinofleet/tls';
/** Where the coordinator mounts the API tokens Secret; `--api-tokens` is this directory and the Secret's key. */
export const CHART_API_TOKENS_DIR = '/etc/dinofleet/api-tokens';

const TLS = z
  .strictObject({
    enabled: z
      .boolean()
      .describe(
        `Mutual TLS between the services and TLS for clients: every service gets --tls-dir ${CHART_TLS_DIR} (ca.crt, tls.crt, tls.key from the Secret below). false: every service gets --insecure (plaintext, no authentication), which the chart refuses unless tls.insecureAcknowledged is true.`,
      ),
    insecureAcknowledged: z.boolean().describe('With tls.enabled false: accept plaintext without authentication (anyone who reaches the pods can join the fleet and submit jobs). Ignored when TLS is on.'),
    existingSecret: SECRET_NAME.describe("Secret with ca.crt, tls.crt and tls.key (a cert-manager Certificate's Secret); the certificate needs server and client auth usages."),
    cert: z.string().describe('PEM fleet certificate (server and client auth, issued by tls.ca) for a Secret the chart creates; with tls.key and tls.ca.'),
    key: z.string().describe('PEM private key of tls.cert.'),
    ca: z.string().describe('PEM CA certificate(s) that issued tls.cert: what every service trusts.'),
    generated: z
      .strictObject({
        validityDays: z.int().min(1).max(36_500).describe('Days the generated CA and fleet certificate are valid.'),
      })
      .describe('With neither existingSecret nor PEM: the chart generates a CA and a fleet certificate once (genCA, genSignedCert) and keeps them across upgrades.'),
  })
  .describe('TLS of every dinofleet connection, mounted read-only in every dinofleet pod.');

/** The scopes of an API token, weakest first (`ApiScope` of @dinofleet/proto: each includes the ones before it). */
export const CHART_API_SCOPES = ['read', 'submit', 'admin'] as const;

const API_TOKEN = z.strictObject({
  name: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/)
    .describe('Who holds the token: names the caller in logs, events and per-caller limits.'),
  scope: z.enum(CHART_API_SCOPES).describe('read: GetJob, ListJobs, WatchJob; submit: also SubmitJob; admin: also ScaleJob, CancelJob.'),
  // Checked by the templates (dinofleet.checkValues), not by a pattern here, so that a raw
  // token gets a message saying what to do instead of "does not match pattern".
  sha256: z
    .string()
    .min(1)
    .describe('The hash of the token as `dinofleet token create` prints it: sha256:<64 lowercase hex> (or the 64 hex digits alone). Never the token itself.'),
});

const API_TOKENS = z
  .strictObject({
    existingSecret: SECRET_NAME.describe('Secret holding a tokens file (lines "name scope sha256:<hex>") under existingSecretKey.'),
    existingSecretKey: SECRET_KEY.describe('Key of the tokens file in existingSecret.'),
    tokens: z.array(API_TOKEN).describe('Tokens (hashes only) for a tokens file in a Secret the chart creates.'),
  })
  .describe(`API tokens of the job API: the coordinator gets --api-tokens ${CHART_API_TOKENS_DIR}/<key> whenever TLS is on; one of existingSecret or tokens is then required.`);

const NETWORK_PEER = kubernetesObject.describe('A NetworkPolicyPeer (podSelector, namespaceSelector, ipBlock).');

const NETWORK_POLICY = z.strictObject({
  enabled: z.boolean().describe('Ingress NetworkPolicies for every component.'),
  clientsFrom: z.array(NETWORK_PEER).describe("Peers allowed to call the coordinator's JobService and teacher-sync (the dinofleet CLI)."),
  metricsFrom: z.array(NETWORK_PEER).describe('Peers allowed to scrape the metrics ports (Prometheus).'),
});

const METRICS = z.strictObject({
  serviceMonitor: z.strictObject({
    enabled: z.boolean().describe('A Prometheus Operator ServiceMonitor for the three services.'),
    interval: z.string().regex(/^[0-9]+(ms|s|m|h)$/),
    labels: stringMap.describe('Labels the Prometheus selects ServiceMonitors by.'),
  }),
  prometheusRule: z.strictObject({
    enabled: z.boolean().describe('A PrometheusRule with the alerts of files/prometheus/rules.yaml.'),
    labels: stringMap,
  }),
  grafanaDashboards: z.strictObject({
    enabled: z.boolean().describe("A ConfigMap with files/dashboards/*.json for Grafana's dashboard sidecar."),
    labels: stringMap.describe('Labels the sidecar watches for (grafana_dashboard: "1" by default).'),
    annotations: stringMap.describe('e.g. grafana_folder.'),
  }),
});

const SERVICE_ACCOUNT = z.strictObject({
  create: z.boolean().describe('Create the two service accounts (coordinator, and workers + teacher-sync).'),
  name: z.string().describe('Service account of the workers and teacher-sync; default: the release fullname.'),
  coordinatorName: z.string().describe('Service account of the coordinator; default: <fullname>-coordinator.'),
  annotations: stringMap.describe('Annotations on both (e.g. a cloud IAM role for S3).'),
});

const JOB = z
  .strictObject({
    submit: z.boolean().describe('Submit job.spec after every install and upgrade (a Helm hook running `dinofleet submit`); the same spec is submitted once.'),
    tokenSecret: SECRET_NAME.describe('Secret holding an API token with submit scope for the hook (env DINOFLEET_TOKEN); required when submit and TLS are on.'),
    tokenSecretKey: SECRET_KEY.describe('Key of the token in tokenSecret.'),
    spec: JOB_SPEC_SCHEMA,
  })
  .describe('A training job to submit with the release.');

const POD_SECURITY_CONTEXT = kubernetesObject.describe('Pod security context of every dinofleet pod.');

/** The chart's values. */
export const CHART_VALUES_SCHEMA = z
  .strictObject({
    global: kubernetesObject.optional().describe('Values shared with parent charts (unused).'),
    nameOverride: z.string().describe('Replaces the chart name in resource names.'),
    fullnameOverride: z.string().describe('Replaces <release>-<chart> in resource names.'),
    images: z.strictObject({ coordinator: IMAGE, teacherSync: IMAGE, worker: IMAGE }),
    imagePullSecrets: z.array(z.strictObject({ name: z.string().min(1) })),
    logLevel: z.enum(CHART_LOG_LEVELS).describe('--log-level of every service.'),
    ports: z
      .strictObject({
        grpc: port.describe('--listen port: gRPC (services, health, the collective).'),
        data: port.describe("--data-listen port of the workers: the all-reduce's TCP data links."),
        metrics: port.describe('--metrics-listen port: /metrics and /healthz.'),
      })
      .describe('Container ports, fixed so NetworkPolicies and probes can name them.'),
    podSecurityContext: POD_SECURITY_CONTEXT,
    containerSecurityContext: kubernetesObject.describe('Security context of every dinofleet container.'),
    coordinator: COORDINATOR,
    teacherSync: TEACHER_SYNC,
    workers: WORKERS,
    redis: REDIS,
    s3: S3,
    tls: TLS,
    apiTokens: API_TOKENS,
    serviceAccount: SERVICE_ACCOUNT,
    rbac: z.strictObject({ create: z.boolean().describe("A Role that lets the coordinator get, patch and update the worker StatefulSet and its scale subresource, nothing more.") }),
    networkPolicy: NETWORK_POLICY,
    metrics: METRICS,
    job: JOB,
  })
  .describe('Values of the dinofleet Helm chart.');

/** Chart values as written in values.yaml or an override file. */
export type ChartValuesInput = z.input<typeof CHART_VALUES_SCHEMA>;
