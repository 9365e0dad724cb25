import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthClient, HealthCheckResponse_ServingStatus, callUnary, createClient } from '@dinofleet/proto';
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
  let coordinator: FakeCoordinator;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dinofleet-worker-'));
    coordinator = await startFakeCoordinator(99, {
      jobId: 'never',
      specJson: '{}',
      globalBatch: 1,
      totalSteps: 1,
      teacherSyncAddress: '',
      manifestUri: 's3://b/m',
    });
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

  it('writes the ready file, serves health and /metrics, registers, and on SIGTERM leaves gracefully and exits 0', async () => {
    const readyFile = join(dir, 'ready.json');
    const p = run(['--coordinator', coordinator.address, '--backend', 'cpu', '--worker-id', 'proc-1', '--ready-file', readyFile, '--log-level', 'warn']);
    await expect.poll(() => readFile(readyFile, 'utf8').then(() => true, () => false), { timeout: 60_000, interval: 200 }).toBe(true);
    const ready = JSON.parse(await readFile(readyFile, 'utf8')) as { service: string; pid: number; grpcAddress: string; metricsAddress: string };
    expect(ready).toMatchObject({ service: 'worker', pid: p.child.pid });
    const health = createClient(HealthClient, ready.grpcAddress);
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
