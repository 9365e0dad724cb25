import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServiceStartError, spawnService } from '@dinofleet/local';
import type { ServiceProcess } from '@dinofleet/local';
import {
  callUnary,
  channelCredentials,
  createClient,
  formatApiTokenLine,
  HealthClient,
  HealthCheckResponse_ServingStatus,
  INSECURE_WARNING,
  JobServiceClient,
  JobState,
} from '@dinofleet/proto';
import type { SpawnWorker } from './local-process-scaler.ts';
import { createTestSecurity, jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv, TestSecurity } from './testing/test-env.ts';

const FAKE_WORKER_ENTRY = fileURLToPath(new URL('./testing/fake-worker-process.ts', import.meta.url));

let env: TestEnv;
let tls: TestSecurity;
let dir: string;
let tokensFile: string;
beforeAll(async () => {
  env = await startTestEnv(30);
  tls = await createTestSecurity();
  dir = await mkdtemp(join(tmpdir(), 'coordinator-processes-'));
  tokensFile = join(dir, 'tokens');
  await writeFile(tokensFile, `# test tokens\n${tls.apiTokens.map(formatApiTokenLine).join('\n')}\n`);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await tls.close();
  await env.close();
});

/** How spawning `coordinator` with `args` failed: its exit code and output. */
async function startFailure(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  const started = await spawnService('coordinator', {
    args: ['--redis-url', env.redis.url, '--teacher-sync-address', '127.0.0.1:1', ...args],
    env: { ...env.s3server.env(), DINOFLEET_TLS_DIR: '', DINOFLEET_INSECURE: '', DINOFLEET_API_TOKENS: '', ...extraEnv },
  }).then(
    async (process) => {
      await process.stop();
      return new Error('the coordinator started');
    },
    (err: unknown) => err,
  );
  if (!(started instanceof ServiceStartError)) throw started;
  return { code: started.exit?.code ?? null, output: started.logTail };
}

describe('processes', () => {
  it('the local scaler starts worker processes with its TLS directory, and they register and train', async () => {
    const spawned: ServiceProcess[] = [];
    const spawn: SpawnWorker = async (service, options) => {
      const worker = await spawnService(service, { ...options, entry: FAKE_WORKER_ENTRY });
      spawned.push(worker);
      return worker;
    };
    // Secure: the workers only register if the scaler handed them the coordinator's --tls-dir.
    const c = await startTestCoordinator(env, { scaler: 'local', spawnWorker: spawn, workerWaitSeconds: 60, secure: tls });
    try {
      const { jobId } = await c.call('submitJob', { spec: jobSpec(env, { name: 'local', steps: 3, workers: 2 }), idempotencyKey: '' });
      const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED, 60_000);
      expect(job.committedStep).toBe(3);
      expect(spawned).toHaveLength(2);
    } finally {
      await c.close();
    }
    const exits = await Promise.all(spawned.map((w) => w.exited));
    expect(exits.map((e) => e.code)).toEqual([0, 0]);
  });

  it('main.ts serves health over TLS, writes its ready file and exits 0 on SIGTERM', async () => {
    const coordinator = await spawnService('coordinator', {
      args: [
        '--redis-url', env.redis.url,
        '--redis-prefix', 'main-test',
        '--teacher-sync-address', '127.0.0.1:1',
        '--log-level', 'warn',
        '--tls-dir', tls.tlsDir,
        '--api-tokens', tokensFile,
        '--max-spec-bytes', '2048',
      ],
      env: env.s3server.env(),
    });
    try {
      const health = createClient(HealthClient, coordinator.grpcAddress, { credentials: channelCredentials(tls.caOnly) });
      const check = async (service: string): Promise<HealthCheckResponse_ServingStatus> =>
        (await callUnary(health, 'check', { service }, { deadlineMs: 5_000 })).status;
      expect(await check('')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      expect(await check('dinofleet.v1.JobService')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      expect(await check('dinofleet.v1.WorkerControl')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      health.close();
      // The tokens file took effect: a reader lists, and the spec limit is the flag's.
      const reader = createClient(JobServiceClient, coordinator.grpcAddress, { credentials: channelCredentials(tls.caOnly, { token: tls.tokens.reader }) });
      const submitter = createClient(JobServiceClient, coordinator.grpcAddress, { credentials: channelCredentials(tls.caOnly, { token: tls.tokens.submitter }) });
      try {
        expect((await callUnary(reader, 'listJobs', { pageSize: 0, pageToken: '', states: [] }, { deadlineMs: 5_000 })).jobs).toEqual([]);
        await expect(callUnary(submitter, 'submitJob', { spec: 'x'.repeat(3000), idempotencyKey: '' }, { deadlineMs: 5_000 })).rejects.toMatchObject({
          code: 'INVALID_ARGUMENT',
          message: 'spec is 3000 bytes; this coordinator accepts at most 2048 (--max-spec-bytes)',
        });
      } finally {
        reader.close();
        submitter.close();
      }
      const metrics = await (await fetch(`http://${coordinator.metricsAddress}/metrics`)).text();
      expect(metrics).toContain('dinofleet_workers_registered 0');
    } finally {
      await coordinator.stop();
    }
    expect((await coordinator.exited).code).toBe(0);
    const log = coordinator.logTail();
    for (const token of Object.values(tls.tokens)) expect(log).not.toContain(token);
    expect(log).not.toContain('sha256:');
  });

  it('main.ts with --insecure warns at start', async () => {
    const coordinator = await spawnService('coordinator', {
      args: ['--redis-url', env.redis.url, '--redis-prefix', 'main-insecure', '--teacher-sync-address', '127.0.0.1:1', '--log-level', 'warn', '--insecure'],
      env: env.s3server.env(),
    });
    await coordinator.stop();
    const lines = coordinator
      .logTail()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { level: string; msg: string });
    expect(lines).toContainEqual(expect.objectContaining({ level: 'warn', msg: INSECURE_WARNING }));
  });

  it('main.ts exits 2 naming the flag and the fix when TLS or tokens are missing, doubled or unreadable', async () => {
    const leaked = join(dir, 'leaked-tokens');
    await writeFile(leaked, `ci submit ${tls.tokens.admin}\n`);
    // Started together: each is a few seconds of tsx start-up before it refuses.
    const [none, noTokens, both, missingDir, missingTokens, raw] = await Promise.all([
      startFailure([]),
      startFailure(['--tls-dir', tls.tlsDir]),
      startFailure(['--insecure', '--api-tokens', tokensFile]),
      startFailure(['--tls-dir', join(dir, 'nowhere'), '--api-tokens', tokensFile]),
      startFailure(['--tls-dir', tls.tlsDir, '--api-tokens', join(dir, 'no-tokens')]),
      // A raw token in the file is refused without being printed.
      startFailure(['--tls-dir', tls.tlsDir, '--api-tokens', leaked]),
    ]);
    expect(none.code).toBe(2);
    expect(none.output).toMatch(/^coordinator: no TLS material: pass --tls-dir DIR .* or --insecure for plaintext without authentication; usage: coordinator/m);

    expect(noTokens.code).toBe(2);
    expect(noTokens.output).toContain('--api-tokens FILE (or DINOFLEET_API_TOKENS) is required with --tls-dir');

    expect(both).toMatchObject({ code: 2, output: expect.stringContaining('--api-tokens has no effect with --insecure (plaintext carries no authentication); drop one') as unknown });

    expect(missingDir.code).toBe(2);
    expect(missingDir.output).toMatch(/ca\.crt does not exist; create development certificates with `dinofleet certs --out <dir>`/);

    expect(missingTokens.code).toBe(2);
    expect(missingTokens.output).toMatch(/--api-tokens .*no-tokens cannot be read \(ENOENT\); create one with `dinofleet token create`/);

    expect(raw.code).toBe(2);
    expect(raw.output).toContain('holds a token itself; store its hash instead');
    expect(raw.output).not.toContain(tls.tokens.admin);
  });
});
