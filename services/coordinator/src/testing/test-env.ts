/**
 * Shared set-up of the coordinator tests: one Redis and one s3rver per test file (from
 * `@dinofleet/local`), a manifest of N records, job specs, a coordinator per test with
 * its own Redis prefix, and JobService calls with deadlines. A coordinator runs with
 * `--insecure` unless it is given a {@link TestSecurity} (certificates of a test CA and
 * API tokens), as security.test.ts does.
 */
import { randomUUID } from 'node:crypto';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { s3ClientFromEnv, startRedis, startS3 } from '@dinofleet/local';
import type { RedisServer, S3Server } from '@dinofleet/local';
import {
  callUnary,
  channelCredentials,
  createClient,
  generateApiToken,
  hashApiToken,
  INSECURE,
  JobServiceClient,
} from '@dinofleet/proto';
import type {
  ApiScope,
  ApiTokenEntry,
  Job,
  TransportSecurity,
  UnaryMethodName,
  UnaryRequest,
  UnaryResponse,
  WatchJobResponse,
} from '@dinofleet/proto';
import { createTestCertificates } from '@dinofleet/proto/dev-certificates';
import { createLogger } from '@dinofleet/telemetry';
import { startCoordinator } from '../coordinator.ts';
import type { Coordinator, CoordinatorOptions } from '../coordinator.ts';
import { FakeWorker } from './fake-worker.ts';
import type { FakeManifest, FakeWorkerOptions } from './fake-worker.ts';

/** Redis + S3 + a bucket with a manifest. */
export interface TestEnv {
  readonly redis: RedisServer;
  readonly s3server: S3Server;
  readonly s3: S3Client;
  readonly bucket: string;
  /** Key of the default manifest. */
  readonly manifestKey: string;
  /** Byte offsets of the default manifest's records. */
  readonly recordOffsets: number[];
  readonly manifest: FakeManifest;
  close(): Promise<void>;
}

/** Manifest text of `count` records and the offset of each. */
export function manifestText(count: number): { text: string; offsets: number[] } {
  let text = '';
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) {
    offsets.push(Buffer.byteLength(text));
    text += `images/${String(i).padStart(5, '0')}.png\t${i % 10}\n`;
  }
  return { text, offsets };
}

/** Starts Redis and S3 and uploads a manifest of `records` records. */
export async function startTestEnv(records = 30): Promise<TestEnv> {
  const redis = await startRedis();
  const s3server = await startS3();
  const bucket = `coord-${randomUUID().slice(0, 8)}`;
  await s3server.createBucket(bucket);
  const s3 = s3ClientFromEnv(s3server.env());
  const manifestKey = 'data/manifest.tsv';
  const { text, offsets } = manifestText(records);
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: manifestKey, Body: text }));
  return {
    redis,
    s3server,
    s3,
    bucket,
    manifestKey,
    recordOffsets: offsets,
    manifest: { s3, bucket, key: manifestKey },
    close: async () => {
      s3.destroy();
      await Promise.allSettled([redis.stop(), s3server.stop()]);
    },
  };
}

/** A job spec (YAML) for the test manifest. */
export function jobSpec(
  env: TestEnv,
  options: {
    name?: string;
    steps?: number;
    epochs?: number;
    workers?: number;
    batch?: number;
    shards?: number;
    recordSamples?: boolean;
    minWorkers?: number;
    maxWorkers?: number;
    manifestKey?: string;
    /** Checkpoints under `s3://<test bucket>/<checkpointPrefix>` every `checkpointEvery` steps. */
    checkpointPrefix?: string;
    checkpointEvery?: number;
    maxNonFiniteSteps?: number;
    maxFailedGenerations?: number;
  } = {},
): string {
  const training = options.epochs !== undefined ? `epochs: ${options.epochs}` : `steps: ${options.steps ?? 4}`;
  const fleet = [`workers: ${options.workers ?? 2}`];
  if (options.minWorkers !== undefined) fleet.push(`minWorkers: ${options.minWorkers}`);
  if (options.maxWorkers !== undefined) fleet.push(`maxWorkers: ${options.maxWorkers}`);
  return [
    'apiVersion: dinofleet/v1',
    'kind: TrainingJob',
    `metadata: { name: ${options.name ?? 'test-job'} }`,
    'spec:',
    `  data: { manifest: "s3://${env.bucket}/${options.manifestKey ?? env.manifestKey}", shards: ${options.shards ?? 3}, recordSamples: ${options.recordSamples ?? true} }`,
    `  training: { ${training}, globalBatchSize: ${options.batch ?? 4} }`,
    `  fleet: { ${fleet.join(', ')} }`,
    ...(options.checkpointPrefix === undefined ? [] : [`  checkpoint: { uri: "s3://${env.bucket}/${options.checkpointPrefix}", everySteps: ${options.checkpointEvery ?? 1000} }`]),
    `  fault: { maxNonFiniteSteps: ${options.maxNonFiniteSteps ?? 3}, maxFailedGenerations: ${options.maxFailedGenerations ?? 10} }`,
    '',
  ].join('\n');
}

/** Names of the callers of {@link createTestSecurity} by default. */
export type DefaultTestCaller = 'admin' | 'submitter' | 'reader';

/** Certificates and API tokens for a coordinator with mutual TLS. */
export interface TestSecurity<Caller extends string = string> {
  /** A fleet member: the test CA and a certificate it issued (coordinator, workers). */
  readonly fleet: TransportSecurity;
  /** An API client: the test CA only, no certificate of its own. */
  readonly caOnly: TransportSecurity;
  /** A rogue: a certificate of another CA, trusting only that CA. */
  readonly rogue: TransportSecurity;
  /** A rogue that trusts the test CA (so the handshake with the coordinator succeeds) but presents its own CA's certificate. */
  readonly rogueTrustingFleet: TransportSecurity;
  /** The tokens file's entries (hashes only). */
  readonly apiTokens: readonly ApiTokenEntry[];
  /** The token of each caller, by name. */
  readonly tokens: Readonly<Record<Caller, string>>;
  /** The fleet's TLS directory. */
  readonly tlsDir: string;
  /** Removes the certificates. */
  close(): Promise<void>;
}

/**
 * A test CA with a fleet certificate, a rogue CA with its own (`createTestCertificates`),
 * and one API token per entry of `callers` (name → scope).
 * @default callers `{ admin: 'admin', submitter: 'submit', reader: 'read' }`
 */
export async function createTestSecurity<Caller extends string = DefaultTestCaller>(
  callers: Readonly<Record<Caller, ApiScope>> = { admin: 'admin', submitter: 'submit', reader: 'read' } as Record<Caller, ApiScope>,
): Promise<TestSecurity<Caller>> {
  const certs = await createTestCertificates('dinofleet-coordinator-tls-');
  const tokens = {} as Record<Caller, string>;
  const apiTokens: ApiTokenEntry[] = [];
  for (const [name, scope] of Object.entries(callers) as [Caller, ApiScope][]) {
    const token = generateApiToken();
    tokens[name] = token;
    apiTokens.push({ name, scope, hash: hashApiToken(token) });
  }
  const { fleet, caOnly, rogue, rogueTrustingFleet, tlsDir } = certs;
  return { fleet, caOnly, rogue, rogueTrustingFleet, apiTokens, tokens, tlsDir, close: () => certs.close() };
}

/** A coordinator on the test Redis with its own prefix, and a JobService client. */
export interface TestCoordinator extends AsyncDisposable {
  readonly coordinator: Coordinator;
  /** JobService as the admin (the `admin` token when secure). */
  readonly jobs: JobServiceClient;
  readonly prefix: string;
  /**
   * Another JobService client (closed with the coordinator): with `token` (none: no
   * authorization header) over `transport`. @default transport the test CA only, or
   * plaintext for an insecure coordinator
   */
  client(token: string | undefined, transport?: TransportSecurity): JobServiceClient;
  /** Calls a JobService method with a 10 s deadline. */
  call<M extends UnaryMethodName<JobServiceClient>>(method: M, request: UnaryRequest<JobServiceClient, M>): Promise<UnaryResponse<JobServiceClient, M>>;
  /** Polls GetJob until `until` holds. */
  waitForJob(jobId: string, until: (job: Job) => boolean, timeoutMs?: number): Promise<Job>;
  /** A fake worker connected to this coordinator. */
  worker(options: FakeWorkerOptions): FakeWorker;
  /** Collects WatchJob messages until the stream ends. */
  watch(jobId: string, sinceStep?: number): Promise<WatchJobResponse[]>;
  /** GET /metrics. */
  metrics(): Promise<string>;
  close(): Promise<void>;
}

/** Options of {@link startTestCoordinator}: the coordinator's, plus the test's own. */
export type TestCoordinatorOptions = Partial<CoordinatorOptions> & {
  /** Redis prefix. @default a random one */
  prefix?: string;
  /** Mutual TLS and tokens; absent: `--insecure`. */
  secure?: TestSecurity<string>;
  /** The token of {@link TestCoordinator.jobs} when secure. @default secure.tokens.admin */
  token?: string;
};

/** Starts a coordinator for one test. */
export async function startTestCoordinator(env: TestEnv, testOptions: TestCoordinatorOptions = {}): Promise<TestCoordinator> {
  const { secure, token, ...options } = testOptions;
  const prefix = options.prefix ?? `t-${randomUUID().slice(0, 8)}`;
  const coordinator = await startCoordinator({
    security: secure?.fleet ?? INSECURE,
    ...(secure !== undefined && { apiTokens: secure.apiTokens }),
    redisUrl: env.redis.url,
    redisPrefix: prefix,
    teacherSyncAddress: '127.0.0.1:1',
    env: env.s3server.env(),
    workerWaitSeconds: 20,
    heartbeatTimeoutSeconds: 5,
    closeGraceMs: 1000,
    logger: createLogger({ name: 'coordinator', level: process.env.DINOFLEET_TEST_LOG === '1' ? 'debug' : 'silent' }),
    ...options,
  });
  const clients: JobServiceClient[] = [];
  const client = (clientToken: string | undefined, transport: TransportSecurity = secure?.caOnly ?? INSECURE): JobServiceClient => {
    const made = createClient(JobServiceClient, coordinator.grpcAddress, { credentials: channelCredentials(transport, { token: clientToken }) });
    clients.push(made);
    return made;
  };
  const jobs = client(secure === undefined ? undefined : (token ?? (secure.tokens as Partial<Record<string, string>>).admin));
  const workers: FakeWorker[] = [];
  const call: TestCoordinator['call'] = (method, request) => callUnary(jobs, method, request, { deadlineMs: 10_000 });
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      await Promise.allSettled(workers.map((w) => w.close()));
      for (const c of clients) c.close();
      await coordinator.close();
    })();
    return closed;
  };
  return {
    coordinator,
    jobs,
    prefix,
    client,
    call,
    async waitForJob(jobId, until, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { job } = await callUnary(jobs, 'getJob', { jobId }, { deadlineMs: 5_000 });
        if (job !== undefined && until(job)) return job;
        if (Date.now() > deadline) throw new Error(`job ${jobId} did not reach the expected state: ${JSON.stringify({ ...job, spec: undefined })}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    worker(workerOptions) {
      const worker = new FakeWorker(coordinator.grpcAddress, { manifest: env.manifest, security: secure?.fleet ?? INSECURE, ...workerOptions }).connect();
      workers.push(worker);
      return worker;
    },
    watch(jobId, sinceStep = 0) {
      return new Promise((resolve, reject) => {
        const messages: WatchJobResponse[] = [];
        const stream = jobs.watchJob({ jobId, sinceStep }, { deadline: new Date(Date.now() + 30_000) });
        stream.on('data', (m: WatchJobResponse) => messages.push(m));
        stream.on('end', () => resolve(messages));
        stream.on('error', reject);
      });
    },
    async metrics() {
      const response = await fetch(`http://${coordinator.metricsAddress}/metrics`);
      return response.text();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
