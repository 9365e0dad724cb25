import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthClient, HealthCheckResponse_ServingStatus, INSECURE_WARNING, callUnary, channelCredentials, createClient, transportSecurityFromFlags } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { startFakeCoordinator } from './testing/fake-coordinator.ts';
import type { FakeCoordinator } from './testing/fake-coordinator.ts';

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    env: { ...process.env, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, stderr: () => stderr };
}

describe('the worker process', () => {
  let dir: string;
  let tlsDir: string;
  let security: TransportSecurity;
  let coordinator: FakeCoordinator;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dinofleet-worker-'));
    tlsDir = join(dir, 'tls');
    await createDevCertificates(tlsDir);
    security = transportSecurityFromFlags({ tlsDir });
    coordinator = await startFakeCoordinator(
      99,
      {
        jobId: 'never',
        specJson: '{}',
        globalBatch: 1,
        totalSteps: 1,
        teacherSyncAddress: '',
        manifestUri: 's3://b/m',
      },
      { security },
    );
  });

  afterAll(async () => {
    await coordinator?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('exits 2 with a usage line for an unknown flag', async () => {
    const p = run(['--coordinator', '127.0.0.1:1', '--frobnicate']);
    expect(await p.exited).toBe(2);
    expect(p.stderr()).toMatch(/usage: worker --coordinator/);
  });

  it('exits 2 with the TLS message without --tls-dir or --insecure, or with both', async () => {
    const neither = run(['--coordinator', '127.0.0.1:1']);
    const both = run(['--coordinator', '127.0.0.1:1', '--insecure'], { DINOFLEET_TLS_DIR: tlsDir });
    const broken = run(['--coordinator', '127.0.0.1:1', '--tls-dir', join(dir, 'no-such-dir')]);
    expect(await Promise.all([neither.exited, both.exited, broken.exited])).toEqual([2, 2, 2]);
    expect(neither.stderr()).toMatch(/worker: no TLS material: pass --tls-dir DIR \(or DINOFLEET_TLS_DIR\).* or --insecure/);
    expect(neither.stderr()).toMatch(/usage: worker --coordinator host:port \(--tls-dir dir \| --insecure\)/);
    expect(both.stderr()).toMatch(/worker: --insecure and --tls-dir exclude each other/);
    expect(broken.stderr()).toMatch(/worker: TLS: CA certificate .*no-such-dir\/ca\.crt does not exist/);
  }, 60_000);

  it('warns at start that --insecure is plaintext and unauthenticated', async () => {
    const p = run(['--coordinator', '127.0.0.1:1', '--backend', 'cpu', '--insecure', '--log-level', 'warn']);
    try {
      await expect.poll(() => p.stderr(), { timeout: 60_000, interval: 200 }).toContain(INSECURE_WARNING);
      const line = JSON.parse(p.stderr().split('\n').find((l) => l.includes(INSECURE_WARNING)) as string) as { level: string };
      expect(line.level).toBe('warn');
    } finally {
      p.child.kill('SIGKILL');
      await p.exited;
    }
  }, 90_000);

  it('writes the ready file, serves health and /metrics, registers, and on SIGTERM leaves gracefully and exits 0', async () => {
    const readyFile = join(dir, 'ready.json');
    const p = run(['--coordinator', coordinator.address, '--tls-dir', tlsDir, '--backend', 'cpu', '--worker-id', 'proc-1', '--ready-file', readyFile, '--log-level', 'warn']);
    await expect.poll(() => readFile(readyFile, 'utf8').then(() => true, () => false), { timeout: 60_000, interval: 200 }).toBe(true);
    const ready = JSON.parse(await readFile(readyFile, 'utf8')) as { service: string; pid: number; grpcAddress: string; metricsAddress: string };
    expect(ready).toMatchObject({ service: 'worker', pid: p.child.pid });
    // Over mTLS: the worker's server admits fleet members only, and the worker registered
    // with a coordinator that checks its certificate.
    const health = createClient(HealthClient, ready.grpcAddress, { credentials: channelCredentials(security) });
    const status = await callUnary(health, 'check', { service: 'dinofleet.v1.Collective' }, { deadlineMs: 5_000 });
    expect(status.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    // Joining ranks fetch the state from the same server.
    const transfer = await callUnary(health, 'check', { service: 'dinofleet.v1.StateTransfer' }, { deadlineMs: 5_000 });
    expect(transfer.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();
    const metrics = await fetch(`http://${ready.metricsAddress}/metrics`);
    expect(metrics.status).toBe(200);
    await expect.poll(() => coordinator.registers.map((r) => r.workerId), { timeout: 10_000 }).toContain('proc-1');
    expect(coordinator.registers.find((r) => r.workerId === 'proc-1')?.collectiveAddress).toBe(ready.grpcAddress);
    // In no job, it has nothing to wait for: it leaves at once.
    const killed = Date.now();
    p.child.kill('SIGTERM');
    expect(await p.exited).toBe(0);
    expect(Date.now() - killed).toBeLessThan(15_000);
    expect(coordinator.leavings.filter((l) => l.workerId === 'proc-1')).toEqual([{ workerId: 'proc-1', reason: 'sigterm', graceful: true }]);
  }, 90_000);
});
