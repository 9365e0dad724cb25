// The coordinator with `scaler: 'kubernetes'` against a fake API server: a job's workers,
// ScaleJob and the end of the job move the StatefulSet's replicas through the scale
// subresource, with the job runner's elastic logic unchanged.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INSECURE, JobState } from '@dinofleet/proto';
import { startFakeKubernetesApi } from './testing/fake-kubernetes-api.ts';
import { jobSpec, startTestCoordinator, startTestEnv } from './testing/test-env.ts';
import type { TestEnv } from './testing/test-env.ts';
import { startCoordinator } from './coordinator.ts';

const NAMESPACE = 'train';
const STATEFUL_SET = 'df-dinofleet-worker';

let env: TestEnv;
beforeAll(async () => {
  env = await startTestEnv(30);
});
afterAll(async () => {
  await env.close();
});

describe('the coordinator with the kubernetes scaler', () => {
  it('sizes the worker StatefulSet for a job, lowers it on ScaleJob, and scales it to 0 when the job ends', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, replicas: 0 });
    await using c = await startTestCoordinator(env, {
      scaler: 'kubernetes',
      kubernetes: { statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: await api.kubeConfig(), retry: { initialBackoffMs: 5, maxBackoffMs: 20 } },
    });
    const spec = jobSpec(env, { name: 'k8s', steps: 40, workers: 3, minWorkers: 1, maxWorkers: 3, batch: 6 });
    const { jobId } = await c.call('submitJob', { spec, idempotencyKey: '' });
    // The job asks the scaler for its workers: the StatefulSet goes to 3 pods, which
    // register under their pod names, as the chart's workers do.
    await expect.poll(() => api.replicas, { timeout: 10_000 }).toBe(3);
    const pods = [0, 1, 2].map((ordinal) => c.worker({ workerId: `${STATEFUL_SET}-${ordinal}`, stepDelayMs: 15 }));
    await c.waitForJob(jobId, (j) => j.committedStep >= 2);

    await c.call('scaleJob', { jobId, workers: 1 });
    expect(await pods[2]?.waitForStop()).toBe('scale-down');
    // release() of the two stopped ranks (a replace at the read resourceVersion), then the total.
    await expect.poll(() => api.replicas, { timeout: 10_000 }).toBe(1);
    expect(api.requests.some((r) => r.method === 'PUT' && (r.body as { spec: { replicas: number } }).spec.replicas === 1)).toBe(true);

    const job = await c.waitForJob(jobId, (j) => j.state === JobState.JOB_STATE_SUCCEEDED, 30_000);
    expect(job.progress?.worldSize).toBe(1);
    await expect.poll(() => api.replicas, { timeout: 10_000 }).toBe(0);
    expect(new Set(api.requests.map((r) => r.path))).toEqual(new Set([`/apis/apps/v1/namespaces/${NAMESPACE}/statefulsets/${STATEFUL_SET}/scale`]));
  });

  it('does not start when the StatefulSet is missing or its Role does not allow reading the scale', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, allowedVerbs: ['patch'] });
    const start = async (statefulSet: string): Promise<unknown> =>
      startCoordinator({
        security: INSECURE,
        redisUrl: env.redis.url,
        redisPrefix: `k8s-${statefulSet}`,
        teacherSyncAddress: '127.0.0.1:1',
        env: env.s3server.env(),
        scaler: 'kubernetes',
        kubernetes: { statefulSet, namespace: NAMESPACE, kubeConfig: await api.kubeConfig() },
        logger: (await import('@dinofleet/telemetry')).createLogger({ name: 'coordinator', level: 'silent' }),
        closeGraceMs: 100,
      }).then(
        async (coordinator) => {
          await coordinator.close();
          return undefined;
        },
        (err: unknown) => err,
      );
    expect(String(await start(STATEFUL_SET))).toContain('the Helm chart grants them with the Role df-dinofleet-coordinator');
    expect(String(await start('df-dinofleet-workers'))).toContain('may not read the scale of StatefulSet train/df-dinofleet-workers');
  });
});
