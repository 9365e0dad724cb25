// The coordinator's port over real mutual TLS (certificates of a test CA from
// createDevCertificates, and a rogue CA): bearer tokens and scopes on JobService, the
// per-caller queue limit, the spec size limit, and WorkerControl for fleet members only.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JOB_SPEC_LIMITS } from '@dinofleet/config';
import { callUnary, ControlRequest, generateApiToken, INSECURE, JobState } from '@dinofleet/proto';
import type { JobServiceClient, UnaryMethodName, UnaryRequest, UnaryResponse, WatchJobResponse } from '@dinofleet/proto';
import { coordinatorMaxMessageBytes, startCoordinator } from './coordinator.ts';
import { DEFAULT_MAX_SPEC_BYTES } from './coordinator-config.ts';
import { createTestSecurity, jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv, TestSecurity } from './testing/test-env.ts';

let env: TestEnv;
let tls: TestSecurity<'ops' | 'alice' | 'bob' | 'reader'>;
beforeAll(async () => {
  env = await startTestEnv(30);
  tls = await createTestSecurity({ ops: 'admin', alice: 'submit', bob: 'submit', reader: 'read' });
});
afterAll(async () => {
  await tls.close();
  await env.close();
});

function call<M extends UnaryMethodName<JobServiceClient>>(
  client: JobServiceClient,
  method: M,
  request: UnaryRequest<JobServiceClient, M>,
): Promise<UnaryResponse<JobServiceClient, M>> {
  return callUnary(client, method, request, { deadlineMs: 10_000 });
}

/** The first WatchJob message, or the error the stream ended with. */
function firstWatchMessage(client: JobServiceClient, jobId: string): Promise<WatchJobResponse> {
  return new Promise((resolve, reject) => {
    const stream = client.watchJob({ jobId, sinceStep: 0 }, { deadline: new Date(Date.now() + 10_000) });
    stream.on('data', (message: WatchJobResponse) => {
      resolve(message);
      stream.cancel();
    });
    stream.on('error', reject);
  });
}

describe('JobService over mutual TLS', () => {
  it('refuses a call without a token or with a token it does not know, without echoing the token', async () => {
    await using c = await startTestCoordinator(env, { secure: tls, token: tls.tokens.ops });
    const anonymous = c.client(undefined);
    await expect(call(anonymous, 'listJobs', { pageSize: 0, pageToken: '', states: [] })).rejects.toMatchObject({
      code: 'UNAUTHENTICATED',
      message: expect.stringMatching(/^no API token: send "authorization: Bearer <token>"/) as unknown,
    });
    await expect(call(anonymous, 'submitJob', { spec: jobSpec(env), idempotencyKey: '' })).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(firstWatchMessage(anonymous, 'any')).rejects.toMatchObject({ code: 16 }); // grpc status UNAUTHENTICATED

    const stranger = generateApiToken();
    const unknown = c.client(stranger);
    const refused = await call(unknown, 'getJob', { jobId: 'any' }).then(
      () => new Error('served'),
      (err: unknown) => err as Error,
    );
    expect(refused).toMatchObject({ code: 'UNAUTHENTICATED', message: expect.stringContaining("is not one of this coordinator's API tokens") as unknown });
    expect(refused.message).not.toContain(stranger);
    expect(await c.coordinator.store.listIds()).toEqual([]);
  });

  it('lets read tokens read, submit tokens submit, and only admin tokens scale and cancel', async () => {
    await using c = await startTestCoordinator(env, { secure: tls, token: tls.tokens.ops });
    const reader = c.client(tls.tokens.reader);
    const alice = c.client(tls.tokens.alice);
    const spec = jobSpec(env, { name: 'scoped', workers: 2, minWorkers: 1, maxWorkers: 3 });

    await expect(call(reader, 'submitJob', { spec, idempotencyKey: '' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
      message: 'token reader has scope read, but SubmitJob needs submit; ask for a token with scope submit',
    });
    const { jobId, created } = await call(alice, 'submitJob', { spec, idempotencyKey: '' });
    expect(created).toBe(true);

    // Read scope: every read method.
    expect((await call(reader, 'getJob', { jobId })).job?.jobId).toBe(jobId);
    expect((await call(reader, 'listJobs', { pageSize: 0, pageToken: '', states: [] })).jobs.map((j) => j.jobId)).toEqual([jobId]);
    expect((await firstWatchMessage(reader, jobId)).update?.$case).toBe('state');

    // Submit scope: not the admin methods.
    await expect(call(alice, 'cancelJob', { jobId, reason: '' })).rejects.toMatchObject({
      code: 'PERMISSION_DENIED',
      message: 'token alice has scope submit, but CancelJob needs admin; ask for a token with scope admin',
    });
    await expect(call(alice, 'scaleJob', { jobId, workers: 3 })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(call(reader, 'cancelJob', { jobId, reason: '' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });

    // Admin: both.
    expect(await c.call('scaleJob', { jobId, workers: 3 })).toMatchObject({ jobId, workersDesired: 3 });
    expect(await c.call('cancelJob', { jobId, reason: 'test over' })).toMatchObject({ jobId, state: JobState.JOB_STATE_CANCELLED });

    // Who did what is on the record.
    expect((await c.coordinator.store.get(jobId))?.submittedBy).toBe('alice');
    const messages = (await c.coordinator.store.events(jobId)).map((e) => e.message);
    expect(messages).toEqual(
      expect.arrayContaining([
        `job ${jobId} queued (2 workers) by alice`,
        expect.stringMatching(/^scale from 2 to 3 workers requested by ops/),
        'cancelled: test over (by ops)',
      ]),
    );
  });

  it('limits the jobs one caller has waiting, counts a resubmission once, and leaves other callers alone', async () => {
    await using c = await startTestCoordinator(env, { secure: tls, token: tls.tokens.ops, maxQueuedJobsPerCaller: 2 });
    const alice = c.client(tls.tokens.alice);
    const bob = c.client(tls.tokens.bob);
    const submit = (client: JobServiceClient, name: string, idempotencyKey = ''): ReturnType<typeof call<'submitJob'>> =>
      call(client, 'submitJob', { spec: jobSpec(env, { name }), idempotencyKey });

    // No workers: the first job waits STARTING, the second QUEUED; both count.
    const first = await submit(alice, 'a1', 'alice-first');
    await submit(alice, 'a2');
    const again = await submit(alice, 'a1', 'alice-first');
    expect(again).toMatchObject({ jobId: first.jobId, created: false });
    await expect(submit(alice, 'a3')).rejects.toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message:
        'token alice already has 2 jobs queued or starting, the most this coordinator accepts per caller (--max-queued-jobs-per-caller 2); wait for some to finish or cancel them',
    });
    expect((await submit(bob, 'b1')).created).toBe(true);

    // A terminal job no longer counts.
    await c.call('cancelJob', { jobId: first.jobId, reason: '' });
    expect((await submit(alice, 'a3')).created).toBe(true);
    const records = await c.coordinator.store.getMany(await c.coordinator.store.listIds());
    expect(records.map((r) => `${r.name}:${r.submittedBy}`).sort()).toEqual(['a1:alice', 'a2:alice', 'a3:alice', 'b1:bob']);
  });

  it('refuses a spec over --max-spec-bytes before parsing it, and stores nothing', async () => {
    await using c = await startTestCoordinator(env, { secure: tls, token: tls.tokens.ops, maxSpecBytes: 1024 });
    // A valid spec made long by a YAML comment; 'é' is 2 bytes of UTF-8, so bytes are counted, not characters.
    const spec = `${jobSpec(env, { name: 'big' })}# ${'é'.repeat(400)}\n`;
    const bytes = Buffer.byteLength(spec, 'utf8');
    expect(spec.length).toBeLessThan(1400);
    await expect(c.call('submitJob', { spec, idempotencyKey: 'big' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: `spec is ${bytes} bytes; this coordinator accepts at most 1024 (--max-spec-bytes)`,
    });
    // Not even parsed: garbage of the same size gets the same answer.
    await expect(c.call('submitJob', { spec: '{'.repeat(2000), idempotencyKey: '' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: 'spec is 2000 bytes; this coordinator accepts at most 1024 (--max-spec-bytes)',
    });
    expect(await c.coordinator.store.listIds()).toEqual([]);
    for (const pattern of ['job:*', 'idem:*', 'caller:*']) expect(await c.coordinator.store.redis.keys(`${c.prefix}:${pattern}`)).toEqual([]);
    // The limit is on the spec, not the API: one that fits is taken.
    expect((await c.call('submitJob', { spec: jobSpec(env, { name: 'small' }), idempotencyKey: '' })).created).toBe(true);
  });

  it('refuses plaintext and clients that do not trust its CA, token or not', async () => {
    await using c = await startTestCoordinator(env, { secure: tls, token: tls.tokens.ops });
    const list = (client: JobServiceClient): Promise<unknown> => call(client, 'listJobs', { pageSize: 0, pageToken: '', states: [] });
    await expect(list(c.client(tls.tokens.ops, INSECURE))).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(list(c.client(tls.tokens.ops, tls.rogue))).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    // A fleet member's certificate is no token: the job API still asks for one.
    await expect(list(c.client(undefined, tls.fleet))).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(list(c.client(tls.tokens.reader, tls.fleet))).resolves.toMatchObject({ jobs: [] });
  });

  it('with --insecure serves every caller as an anonymous admin', async () => {
    await using c = await startTestCoordinator(env);
    const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'open' }), idempotencyKey: '' });
    expect((await c.coordinator.store.get(jobId))?.submittedBy).toBe('anonymous');
    expect(await c.call('cancelJob', { jobId, reason: '' })).toMatchObject({ state: JobState.JOB_STATE_CANCELLED });
  });

  it('does not start with mutual TLS and no tokens, or with tokens and --insecure', async () => {
    const base = { redisUrl: env.redis.url, teacherSyncAddress: '127.0.0.1:1', env: env.s3server.env() };
    await expect(startCoordinator({ ...base, security: tls.fleet })).rejects.toThrow(/apiTokens \(--api-tokens\) is required with mutual TLS/);
    await expect(startCoordinator({ ...base, security: INSECURE, apiTokens: tls.apiTokens })).rejects.toThrow(
      '--api-tokens has no effect with --insecure (plaintext carries no authentication); drop one',
    );
    // A directory with only the CA cannot serve TLS.
    await expect(startCoordinator({ ...base, security: tls.caOnly, apiTokens: tls.apiTokens })).rejects.toThrow(/holds only ca\.crt, but a server needs tls\.crt and tls\.key too/);
  });
});

describe('message size', () => {
  it('lets the largest CommitStep the spec schema allows through, and any spec --max-spec-bytes allows', () => {
    const limit = coordinatorMaxMessageBytes(DEFAULT_MAX_SPEC_BYTES);
    expect(limit).toBe(16 * 1024 * 1024);
    // One worker, the largest global batch: every sample id a full-width varint.
    const batch = JOB_SPEC_LIMITS.maxGlobalBatchSize;
    const commit = ControlRequest.encode({
      message: {
        $case: 'commitStep',
        commitStep: {
          generation: 2 ** 40,
          step: 2 ** 40,
          stateHash: Buffer.alloc(32),
          dataCursors: [],
          sampleCount: batch,
          lossParts: { total: 1, dino: 1, ibot: 1, koleo: 1 },
          sampleIds: new Array<number>(batch).fill(Number.MAX_SAFE_INTEGER),
          skipped: [],
          imagesPerSecond: 1,
          lr: 1,
          checkpointUri: `s3://${'b'.repeat(63)}/${'k'.repeat(1024)}`,
          nonfinite: false,
          sampleEpochs: new Array<number>(batch).fill(JOB_SPEC_LIMITS.maxEpochs - 1),
          checkpointFiles: [],
        },
      },
    }).finish();
    expect(commit.length).toBeGreaterThan(4 * 1024 * 1024);
    expect(commit.length).toBeLessThan(limit);
    expect(coordinatorMaxMessageBytes(16 * 1024 * 1024)).toBe(17 * 1024 * 1024);
  });
});

describe('WorkerControl over mutual TLS', () => {
  it('registers a fleet member and refuses a rogue CA, a CA-only client and plaintext, none of which ever registers', async () => {
    await using c = await startTestCoordinator(env, { secure: tls });
    const member = c.worker({ workerId: 'member' });
    await expect.poll(() => c.coordinator.registry.get('member') !== undefined, { timeout: 10_000 }).toBe(true);

    const attempts = {
      // Trusts our CA, so the handshake passes, but its certificate is another CA's.
      'rogue-trusting': c.worker({ workerId: 'rogue-trusting', security: tls.rogueTrustingFleet }),
      // Presents no certificate at all.
      'ca-only': c.worker({ workerId: 'ca-only', security: tls.caOnly }),
      // Trusts only its own CA: refuses our server.
      rogue: c.worker({ workerId: 'rogue', security: tls.rogue }),
      plaintext: c.worker({ workerId: 'plaintext', security: INSECURE }),
    };
    for (const worker of Object.values(attempts)) await expect.poll(() => worker.streamEnded, { timeout: 10_000 }).toBe(true);
    expect(Object.fromEntries(Object.entries(attempts).map(([name, w]) => [name, w.streamError?.code]))).toEqual({
      'rogue-trusting': 'UNAUTHENTICATED',
      'ca-only': 'UNAUTHENTICATED',
      rogue: 'UNAVAILABLE',
      plaintext: 'UNAVAILABLE',
    });
    expect(attempts['ca-only'].streamError?.message).toBe('WorkerControl is for fleet members only: connect with a certificate issued by the fleet CA (--tls-dir)');
    // AcquireLease too.
    await expect(attempts['rogue-trusting'].acquireLease({ jobId: 'any', generation: 1, rank: 0 })).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(attempts['ca-only'].acquireLease({ jobId: 'any', generation: 1, rank: 0 })).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    // A fleet member reaches the handler (which has no such job running).
    await expect(member.acquireLease({ jobId: 'any', generation: 1, rank: 0 })).rejects.toMatchObject({ code: 'NOT_FOUND' });

    expect(c.coordinator.registry.all().map((s) => s.workerId)).toEqual(['member']);
    expect(member.streamEnded).toBe(false);
  });
});
