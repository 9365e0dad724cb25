// Attacks on a running local fleet, from the outside (docs/security.md): plaintext
// connections, missing and wrong tokens, a rogue worker whose certificate comes from another
// CA, oversized messages, a fuzz corpus of request messages against the live coordinator,
// then a scan of everything the fleet printed (logs, /metrics, job records and the error
// messages the probes got back) for its secrets. Shared by `npm run bench -- security` and
// test/security.test.ts.
import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Client, credentials as grpcCredentials, Metadata, status as grpcStatus } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';
import fc from 'fast-check';
import { spawnService, type LocalFleet } from '@dinofleet/local';
import {
  callUnary,
  channelCredentials,
  clientChannelOptions,
  createClient,
  DinofleetError,
  generateApiToken,
  INSECURE,
  JobServiceClient,
  loadTlsDir,
  TeacherSyncClient,
  WorkerControlClient,
  type CreateClientOptions,
  type TransportSecurity,
} from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';

/** Outcome of one probe: refused as it should be, and what the caller was told. */
export interface ProbeOutcome {
  readonly name: string;
  readonly refused: boolean;
  /** gRPC status name or error text each attempt got. */
  readonly got: string[];
}

/** What {@link runSecurityProbes} found. */
export interface SecurityProbeResult {
  readonly plaintextRefused: boolean;
  readonly unauthenticatedRefused: boolean;
  readonly wrongScopeRefused: boolean;
  readonly rogueWorkerRefused: boolean;
  readonly oversizedRefused: boolean;
  readonly fuzzCases: number;
  /** Fuzz calls that hung, got UNKNOWN or an INTERNAL from a handler, or a service that died. */
  readonly crashes: number;
  /** Every probe with what it got. */
  readonly probes: readonly ProbeOutcome[];
  /** Examples of fuzz cases that crashed (at most 5). */
  readonly crashExamples: readonly string[];
  /** Every message the probes got back (scanned for secrets too). */
  readonly messages: readonly string[];
}

/** Options of {@link runSecurityProbes}. */
export interface SecurityProbeOptions {
  /** A directory for the rogue CA. */
  readonly workDir: string;
  /** Live fuzz cases against the coordinator. @default 10000 */
  readonly fuzzCases?: number;
  /** Seed of the fuzz corpus. @default 1 */
  readonly seed?: number;
  /** `--max-spec-bytes` of the fleet's coordinator. @default 262144 */
  readonly maxSpecBytes?: number;
  readonly log?: (message: string) => void;
}

const DEADLINE_MS = 10_000;

function describeError(err: unknown): string {
  if (err instanceof DinofleetError) return `${err.code}: ${err.message}`;
  const e = err as Partial<ServiceError>;
  if (typeof e.code === 'number') return `${grpcStatus[e.code] ?? e.code}: ${e.details ?? e.message ?? ''}`;
  return String(err);
}

function codeOf(err: unknown): string {
  if (err instanceof DinofleetError) return String(err.code).toLowerCase();
  const e = err as Partial<ServiceError>;
  if (typeof e.code === 'number') return (grpcStatus[e.code] ?? String(e.code)).toLowerCase();
  return 'error';
}

/** Calls `fn` and returns what came back: 'ok' or the error's code, plus its text. */
async function attempt(fn: () => Promise<unknown>): Promise<{ code: string; text: string }> {
  try {
    await fn();
    return { code: 'ok', text: 'ok' };
  } catch (err) {
    return { code: codeOf(err), text: describeError(err) };
  }
}

/** Sends raw bytes as the request of `path` (unary), so malformed messages reach the server. */
function rawUnary(client: Client, path: string, body: Buffer, metadata: Metadata): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      metadata,
      { deadline: Date.now() + DEADLINE_MS },
      (err: ServiceError | null, value?: Buffer) => (err === null ? resolve(value ?? Buffer.alloc(0)) : reject(err)),
    );
  });
}

/** A CA-only TLS view of the fleet: verifies the servers, presents no certificate. */
function caOnly(fleet: LocalFleet): TransportSecurity {
  const security = fleet.security;
  if (security.kind !== 'mtls') return security;
  return { kind: 'mtls', material: { dir: security.material.dir, ca: security.material.ca, caCerts: security.material.caCerts } };
}

function jobs(fleet: LocalFleet, options: CreateClientOptions): JobServiceClient {
  return createClient(JobServiceClient, fleet.coordinatorAddress, options);
}

const VALID_SPEC = {
  apiVersion: 'dinofleet/v1',
  kind: 'TrainingJob',
  metadata: { name: 'fuzz' },
  spec: {
    recipe: { preset: 'dino' },
    data: { manifest: 's3://no-such-bucket/manifest.txt' },
    training: { steps: 10, globalBatchSize: 8 },
    fleet: { workers: 1 },
  },
};

/** A fuzz case: which method, and the request (a message object or raw bytes). */
type FuzzCase =
  | { readonly kind: 'message'; readonly method: 'submitJob' | 'getJob' | 'listJobs' | 'scaleJob' | 'cancelJob'; readonly request: Record<string, unknown> }
  | { readonly kind: 'raw'; readonly path: string; readonly body: Uint8Array };

const JOB_PATHS = ['SubmitJob', 'GetJob', 'ListJobs', 'ScaleJob', 'CancelJob'].map((m) => `/dinofleet.v1.JobService/${m}`);
const WORKER_PATHS = ['/dinofleet.v1.WorkerControl/AcquireLease'];

function fuzzCaseArbitrary(): fc.Arbitrary<FuzzCase> {
  const text = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 80 }), fc.constantFrom('', '../../etc/passwd', 'job-1', '*', '\u0000', 'a'.repeat(300)));
  const specMutation = fc
    .tuple(fc.constantFrom('metadata.name', 'spec.training.steps', 'spec.training.globalBatchSize', 'spec.fleet.workers', 'spec.data.manifest', 'spec.recipe.preset', 'apiVersion', 'spec'), fc.jsonValue({ maxDepth: 3 }))
    .map(([path, value]) => {
      const spec = structuredClone(VALID_SPEC) as Record<string, unknown>;
      const keys = path.split('.');
      let node = spec;
      for (const key of keys.slice(0, -1)) node = node[key] as Record<string, unknown>;
      node[keys[keys.length - 1] ?? ''] = value;
      return JSON.stringify(spec);
    });
  const specText = fc.oneof(specMutation, text, fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)), fc.string({ maxLength: 400 }).map((s) => `apiVersion: dinofleet/v1\n${s}`));
  const u32 = fc.oneof(fc.nat({ max: 5000 }), fc.constantFrom(0, 1, 0xffffffff));
  return fc.oneof(
    fc.record({ kind: fc.constant('message' as const), method: fc.constant('submitJob' as const), request: fc.record({ spec: specText, idempotencyKey: text }) }),
    fc.record({ kind: fc.constant('message' as const), method: fc.constant('getJob' as const), request: fc.record({ jobId: text }) }),
    fc.record({ kind: fc.constant('message' as const), method: fc.constant('listJobs' as const), request: fc.record({ pageSize: u32, pageToken: text, states: fc.array(fc.integer({ min: -1, max: 12 }), { maxLength: 4 }) }) }),
    fc.record({ kind: fc.constant('message' as const), method: fc.constant('scaleJob' as const), request: fc.record({ jobId: text, workers: u32 }) }),
    fc.record({ kind: fc.constant('message' as const), method: fc.constant('cancelJob' as const), request: fc.record({ jobId: text, reason: text }) }),
    fc.record({ kind: fc.constant('raw' as const), path: fc.constantFrom(...JOB_PATHS, ...WORKER_PATHS), body: fc.uint8Array({ maxLength: 512 }) }),
  );
}

/** Whether a fuzz call's outcome is a crash: hung, UNKNOWN, or INTERNAL not from decoding. */
function isCrash(code: string, text: string): boolean {
  if (code === 'deadline_exceeded' || code === 'unknown' || code === 'unavailable') return true;
  if (code === 'internal') return !/deserializ|parse|decode|invalid wire|index out of range|premature|illegal/i.test(text);
  return false;
}

async function alive(fleet: LocalFleet, options: CreateClientOptions): Promise<boolean> {
  const client = jobs(fleet, options);
  try {
    await callUnary(client, 'listJobs', { pageSize: 1, pageToken: '', states: [] }, { deadlineMs: DEADLINE_MS });
    return true;
  } catch {
    return false;
  } finally {
    client.close();
  }
}

/**
 * Runs every probe against `fleet` (which must be secure: started without `insecure`).
 * The fleet keeps running; jobs the fuzz corpus managed to queue are cancelled at the end.
 */
export async function runSecurityProbes(fleet: LocalFleet, options: SecurityProbeOptions): Promise<SecurityProbeResult> {
  const log = options.log ?? (() => undefined);
  const tokens = fleet.tokens;
  if (fleet.security.kind !== 'mtls' || tokens === undefined) throw new Error('runSecurityProbes needs a secure fleet (started without insecure)');
  const probes: ProbeOutcome[] = [];
  const messages: string[] = [];
  const probe = async (name: string, attempts: (() => Promise<unknown>)[], refusedCodes: readonly string[]): Promise<boolean> => {
    const got: string[] = [];
    let refused = true;
    for (const fn of attempts) {
      const { code, text } = await attempt(fn);
      got.push(code);
      messages.push(text);
      if (!refusedCodes.includes(code)) refused = false;
    }
    probes.push({ name, refused, got });
    log(`${name}: ${refused ? 'refused' : 'NOT REFUSED'} (${got.join(', ')})`);
    return refused;
  };
  const list = (client: JobServiceClient) => () => callUnary(client, 'listJobs', { pageSize: 1, pageToken: '', states: [] }, { deadlineMs: DEADLINE_MS });
  const submit = (client: JobServiceClient) => () =>
    callUnary(client, 'submitJob', { spec: JSON.stringify({ ...VALID_SPEC, metadata: { name: 'probe' } }), idempotencyKey: '' }, { deadlineMs: DEADLINE_MS });
  const closers: { close(): void }[] = [];
  const open = <C extends { close(): void }>(client: C): C => {
    closers.push(client);
    return client;
  };

  try {
    // 1. Plaintext to every port that speaks gRPC.
    const plainJobs = open(jobs(fleet, { credentials: grpcCredentials.createInsecure() }));
    const plainTeacher = open(createClient(TeacherSyncClient, fleet.teacherSyncAddress, { credentials: grpcCredentials.createInsecure() }));
    const plaintextRefused = await probe(
      'plaintext',
      [list(plainJobs), () => rawUnary(plainTeacher, '/dinofleet.v1.TeacherSync/GetCenter', Buffer.alloc(0), new Metadata())],
      ['unavailable', 'internal'],
    );

    // 2. No token, an unknown token, a malformed header.
    const anonymous = open(jobs(fleet, { credentials: channelCredentials(caOnly(fleet)) }));
    const unknown = open(jobs(fleet, { credentials: channelCredentials(caOnly(fleet), { token: generateApiToken() }) }));
    const garbage = new Metadata();
    garbage.set('authorization', 'Basic YWRtaW46YWRtaW4=');
    const unauthenticatedRefused = await probe(
      'unauthenticated',
      [list(anonymous), submit(anonymous), list(unknown), () => callUnary(anonymous, 'listJobs', { pageSize: 1, pageToken: '', states: [] }, { deadlineMs: DEADLINE_MS, metadata: garbage })],
      ['unauthenticated'],
    );

    // 3. Valid tokens used beyond their scope.
    const reader = open(jobs(fleet, fleet.clientOptions('read')));
    const submitter = open(jobs(fleet, fleet.clientOptions('submit')));
    const wrongScopeRefused =
      (await probe(
        'wrong scope',
        [
          submit(reader),
          () => callUnary(reader, 'cancelJob', { jobId: 'any', reason: '' }, { deadlineMs: DEADLINE_MS }),
          () => callUnary(submitter, 'cancelJob', { jobId: 'any', reason: '' }, { deadlineMs: DEADLINE_MS }),
          () => callUnary(submitter, 'scaleJob', { jobId: 'any', workers: 2 }, { deadlineMs: DEADLINE_MS }),
        ],
        ['permission_denied'],
      )) && (await attempt(list(reader))).code === 'ok';

    // 4. A rogue fleet member: certificates of another CA (even one that trusts ours).
    const rogueDir = join(options.workDir, 'rogue-tls');
    await createDevCertificates(rogueDir, { caName: 'rogue CA', force: true });
    const rogueOwn: TransportSecurity = { kind: 'mtls', material: loadTlsDir(rogueDir) };
    const rogueTrusting: TransportSecurity = { kind: 'mtls', material: { ...rogueOwn.material, ca: fleet.security.material.ca } };
    const rogueControl = open(createClient(WorkerControlClient, fleet.coordinatorAddress, { credentials: channelCredentials(rogueTrusting) }));
    const rogueTeacher = open(createClient(TeacherSyncClient, fleet.teacherSyncAddress, { credentials: channelCredentials(rogueTrusting) }));
    const rogueJobs = open(jobs(fleet, { credentials: channelCredentials(rogueOwn, { token: tokens.admin }) }));
    const workerAttempts: (() => Promise<unknown>)[] = [
      ...WORKER_PATHS.map((path) => () => rawUnary(rogueControl, path, Buffer.alloc(0), new Metadata())),
      () => rawUnary(rogueTeacher, '/dinofleet.v1.TeacherSync/GetCenter', Buffer.alloc(0), new Metadata()),
      () => rawUnary(rogueTeacher, '/dinofleet.v1.TeacherSync/PushTeacherSums', Buffer.alloc(0), new Metadata()),
      // A rogue that does not trust our CA refuses our server, token or not.
      list(rogueJobs),
    ];
    for (const worker of await fleet.workers()) {
      if (worker.grpcAddress === undefined) continue;
      const peer = open(new Client(worker.grpcAddress, channelCredentials(rogueTrusting), clientChannelOptions()));
      workerAttempts.push(() => rawUnary(peer, '/dinofleet.v1.Collective/OpenDataLink', Buffer.alloc(0), new Metadata()));
    }
    let rogueWorkerRefused = await probe('rogue certificate', workerAttempts, ['unauthenticated', 'unavailable']);
    // Real worker processes with the rogue certificate must never register: one that trusts
    // only its own CA (it refuses the coordinator), and one whose ca.crt bundles ours too (its
    // handshake completes; WorkerControl refuses its certificate).
    const bundleDir = join(options.workDir, 'rogue-tls-trusting');
    await mkdir(bundleDir, { recursive: true });
    await writeFile(join(bundleDir, 'ca.crt'), Buffer.concat([fleet.security.material.ca, Buffer.from('\n'), rogueOwn.material.ca]));
    await copyFile(join(rogueDir, 'tls.crt'), join(bundleDir, 'tls.crt'));
    await copyFile(join(rogueDir, 'tls.key'), join(bundleDir, 'tls.key'));
    const before = await registeredWorkers(fleet);
    const rogues = await Promise.all(
      [rogueDir, bundleDir].map((dir, i) =>
        spawnService('worker', {
          args: ['--coordinator', fleet.coordinatorAddress, '--worker-id', `rogue-worker-${i}`, '--tls-dir', dir],
          env: fleet.s3Env,
          readyTimeoutMs: 60_000,
        }).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    const after = await registeredWorkers(fleet);
    for (const [i, rogue] of rogues.entries()) {
      // A rogue that never got to try proves nothing: it must have started and stayed refused.
      let outcome: string;
      if (rogue instanceof Error) {
        messages.push(String(rogue));
        outcome = `did not start: ${String(rogue).slice(0, 600)}`;
      } else {
        const tail = rogue.logTail();
        messages.push(tail);
        const refusal = tail.split('\n').find((line) => /control stream|certificate|TLS|SSL|handshake|UNAVAILABLE|UNAUTHENTICATED/i.test(line));
        outcome = `${after > before ? 'JOINED' : 'never registered'}; it said: ${(refusal ?? tail.split('\n').filter((l) => l !== '').pop() ?? '').slice(0, 300)}`;
        await rogue.stop();
      }
      const refused = !(rogue instanceof Error) && after <= before;
      probes.push({ name: `rogue worker process ${i}`, refused, got: [outcome] });
      log(`rogue worker process ${i} (${i === 0 ? 'own CA only' : 'trusts the fleet CA'}): ${outcome}`);
      rogueWorkerRefused &&= refused;
    }

    // 5. Oversized: a spec over --max-spec-bytes, a message over the coordinator's limit.
    const admin = open(jobs(fleet, fleet.clientOptions('admin')));
    const maxSpecBytes = options.maxSpecBytes ?? 262_144;
    const bigSpec = JSON.stringify({ ...VALID_SPEC, metadata: { name: 'big', labels: { pad: 'x'.repeat(maxSpecBytes) } } });
    const oversizedRefused =
      (await probe(
        'oversized',
        [
          () => callUnary(admin, 'submitJob', { spec: bigSpec, idempotencyKey: '' }, { deadlineMs: DEADLINE_MS }),
          // Over the coordinator's 16 MiB message limit: refused by grpc-js before any handler.
          () => callUnary(admin, 'submitJob', { spec: 'x'.repeat(17 * 1024 * 1024), idempotencyKey: '' }, { deadlineMs: DEADLINE_MS }),
        ],
        ['invalid_argument', 'resource_exhausted'],
      )) && (await alive(fleet, fleet.clientOptions('read')));

    // 6. The fuzz corpus against the live coordinator, as admin.
    const cases = options.fuzzCases ?? 10_000;
    const corpus = fc.sample(fuzzCaseArbitrary(), { numRuns: cases, seed: options.seed ?? 1 });
    const rawClient = open(new Client(fleet.coordinatorAddress, fleet.clientOptions('admin').credentials ?? channelCredentials(INSECURE), clientChannelOptions()));
    let crashes = 0;
    const crashExamples: string[] = [];
    const codes = new Map<string, number>();
    const internalKinds = new Set<string>();
    const started = Date.now();
    for (const [i, c] of corpus.entries()) {
      const { code, text } = await attempt(() =>
        c.kind === 'raw'
          ? rawUnary(rawClient, c.path, Buffer.from(c.body), new Metadata())
          : callUnary(admin, c.method, c.request as never, { deadlineMs: DEADLINE_MS }),
      );
      codes.set(code, (codes.get(code) ?? 0) + 1);
      if (code === 'internal' && internalKinds.size < 5) internalKinds.add(text.slice(0, 120));
      if (code !== 'ok') messages.push(text);
      if (isCrash(code, text)) {
        crashes += 1;
        if (crashExamples.length < 5) crashExamples.push(`${JSON.stringify(c).slice(0, 300)} -> ${text}`);
      }
      if ((i + 1) % 2000 === 0) log(`fuzz: ${i + 1}/${cases} cases, ${crashes} crashes (${Math.round((Date.now() - started) / 1000)} s)`);
    }
    log(`fuzz outcomes: ${JSON.stringify(Object.fromEntries(codes))}`);
    for (const kind of internalKinds) log(`  internal (request bytes that do not decode): ${kind}`);
    if (!(await alive(fleet, fleet.clientOptions('read')))) {
      crashes += 1;
      crashExamples.push('the coordinator stopped answering after the fuzz corpus');
    }
    await cancelFuzzJobs(admin);

    return { plaintextRefused, unauthenticatedRefused, wrongScopeRefused, rogueWorkerRefused, oversizedRefused, fuzzCases: cases, crashes, probes, crashExamples, messages };
  } finally {
    for (const client of closers) client.close();
  }
}

/** Cancels every job the probes or the fuzz corpus queued (named fuzz/probe/big or not). */
async function cancelFuzzJobs(admin: JobServiceClient): Promise<void> {
  let pageToken = '';
  do {
    const page = await callUnary(admin, 'listJobs', { pageSize: 1000, pageToken, states: [] }, { deadlineMs: DEADLINE_MS });
    for (const job of page.jobs) {
      if (job.finishedAtUnixMs > 0) continue;
      await callUnary(admin, 'cancelJob', { jobId: job.jobId, reason: 'security bench' }, { deadlineMs: DEADLINE_MS }).catch(() => undefined);
    }
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
}

/** `dinofleet_workers_registered` on the coordinator's /metrics. */
async function registeredWorkers(fleet: LocalFleet): Promise<number> {
  const text = await (await fetch(`http://${fleet.coordinator.metricsAddress}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('dinofleet_workers_registered'));
  return Number(line?.split(/\s+/).pop() ?? 0);
}

/** A secret to look for, and what to call it in a report (never the secret). */
export interface Secret {
  readonly label: string;
  readonly value: string;
}

/**
 * The fleet's secrets: its API tokens, the S3 secret key, and a 40-character piece of each
 * private key's body (tls.key, ca.key, and any `*.key` under `extraKeyDirs`).
 */
export async function fleetSecrets(fleet: LocalFleet, extraKeyDirs: readonly string[] = []): Promise<Secret[]> {
  const secrets: Secret[] = [];
  for (const [scope, token] of Object.entries(fleet.tokens ?? {})) secrets.push({ label: `${scope} API token`, value: token });
  const s3Secret = fleet.s3Env['AWS_SECRET_ACCESS_KEY'];
  if (s3Secret !== undefined && s3Secret.length >= 8) secrets.push({ label: 'S3 secret access key', value: s3Secret });
  for (const dir of [...(fleet.tlsDir === undefined ? [] : [fleet.tlsDir]), ...extraKeyDirs]) {
    for (const name of await readdir(dir)) {
      if (!name.endsWith('.key')) continue;
      const body = (await readFile(join(dir, name), 'utf8')).split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
      for (const [i, line] of body.entries()) if (line.length >= 40) secrets.push({ label: `${join(dir, name)} line ${i + 2}`, value: line.slice(0, 40) });
    }
  }
  return secrets;
}

/** One place a secret showed up. */
export interface Leak {
  readonly secret: string;
  readonly where: string;
}

/** Every text a run of `fleet` printed: its log files, every /metrics page, the job records. */
export async function fleetOutputs(fleet: LocalFleet, logDir: string | undefined): Promise<{ where: string; text: string }[]> {
  const outputs: { where: string; text: string }[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.isFile() && !entry.name.endsWith('.key') && !entry.name.endsWith('.crt') && entry.name !== 'api-tokens' && (await stat(path)).size < 256 * 1024 * 1024) {
        outputs.push({ where: path, text: await readFile(path, 'utf8') });
      }
    }
  };
  if (logDir !== undefined) await walk(logDir);
  outputs.push({ where: 'coordinator stdout/stderr', text: fleet.coordinator.logTail() });
  outputs.push({ where: 'teacher-sync stdout/stderr', text: fleet.teacherSync.logTail() });
  for (const target of await fleet.metricsTargets()) {
    const text = await fetch(`http://${target.address}/metrics`).then((r) => r.text(), () => '');
    outputs.push({ where: `${target.component}${target.labels?.['worker_id'] === undefined ? '' : ` ${target.labels['worker_id']}`} /metrics`, text });
  }
  const admin = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions('admin'));
  try {
    const page = await callUnary(admin, 'listJobs', { pageSize: 1000, pageToken: '', states: [] }, { deadlineMs: DEADLINE_MS });
    outputs.push({ where: 'ListJobs', text: JSON.stringify(page) });
  } finally {
    admin.close();
  }
  return outputs;
}

/** Where each secret appears in `outputs`. */
export function findLeaks(secrets: readonly Secret[], outputs: readonly { where: string; text: string }[]): Leak[] {
  const leaks: Leak[] = [];
  for (const { where, text } of outputs) {
    for (const secret of secrets) if (text.includes(secret.value)) leaks.push({ secret: secret.label, where });
  }
  return leaks;
}
