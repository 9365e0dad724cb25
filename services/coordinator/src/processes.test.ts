import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnService } from '@dinofleet/local';
import type { ServiceProcess } from '@dinofleet/local';
import { callUnary, createClient, HealthClient, HealthCheckResponse_ServingStatus, JobState } from '@dinofleet/proto';
import type { SpawnWorker } from './local-process-scaler.ts';
import { jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv } from './testing/test-env.ts';

const FAKE_WORKER_ENTRY = fileURLToPath(new URL('./testing/fake-worker-process.ts', import.meta.url));

let env: TestEnv;
beforeAll(async () => {
  env = await startTestEnv(30);
});
afterAll(async () => {
  await env.close();
});

describe('processes', () => {
  it('the local scaler starts worker processes for a job and stops them on close', async () => {
    const spawned: ServiceProcess[] = [];
    const spawn: SpawnWorker = async (service, options) => {
      const worker = await spawnService(service, { ...options, entry: FAKE_WORKER_ENTRY });
      spawned.push(worker);
      return worker;
    };
    const c = await startTestCoordinator(env, { scaler: 'local', spawnWorker: spawn, workerWaitSeconds: 60 });
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

  it('main.ts serves health, writes its ready file and exits 0 on SIGTERM', async () => {
    const coordinator = await spawnService('coordinator', {
      args: ['--redis-url', env.redis.url, '--redis-prefix', 'main-test', '--teacher-sync-address', '127.0.0.1:1', '--log-level', 'warn'],
      env: env.s3server.env(),
    });
    try {
      const health = createClient(HealthClient, coordinator.grpcAddress);
      const check = async (service: string): Promise<HealthCheckResponse_ServingStatus> =>
        (await callUnary(health, 'check', { service }, { deadlineMs: 5_000 })).status;
      expect(await check('')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      expect(await check('dinofleet.v1.JobService')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      expect(await check('dinofleet.v1.WorkerControl')).toBe(HealthCheckResponse_ServingStatus.SERVING);
      health.close();
      const metrics = await (await fetch(`http://${coordinator.metricsAddress}/metrics`)).text();
      expect(metrics).toContain('dinofleet_workers_registered 0');
    } finally {
      await coordinator.stop();
    }
    expect((await coordinator.exited).code).toBe(0);
  });
});
