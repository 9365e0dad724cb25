import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AbortedError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
} from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';
import { inClusterKubeConfig, KubernetesScaler, kubeConfigFromFile } from './kubernetes-scaler.ts';
import type { KubernetesScalerOptions } from './kubernetes-scaler.ts';
import { startFakeKubernetesApi } from './testing/fake-kubernetes-api.ts';
import type { FakeKubernetesApi } from './testing/fake-kubernetes-api.ts';
import { describeScalerConformance } from './testing/scaler-conformance.ts';

const NAMESPACE = 'train';
const STATEFUL_SET = 'df-dinofleet-worker';
const SCALE_PATH = `/apis/apps/v1/namespaces/${NAMESPACE}/statefulsets/${STATEFUL_SET}/scale`;
/** Fast retries: the policy is the repository's, the waits are short for the test. */
const FAST_RETRY = { initialBackoffMs: 5, maxBackoffMs: 20 };

async function connect(api: FakeKubernetesApi, options: Partial<KubernetesScalerOptions> = {}): Promise<KubernetesScaler> {
  return KubernetesScaler.connect({ statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: await api.kubeConfig(), retry: FAST_RETRY, ...options });
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(Error);
  return error as Error;
}

describeScalerConformance('KubernetesScaler against a fake API server', async () => {
  const api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET });
  return {
    scaler: await connect(api),
    count: () => Promise.resolve(api.replicas),
    workerId: (index) => `${STATEFUL_SET}-${index}`,
    close: () => api.close(),
  };
});

describe('KubernetesScaler', () => {
  it('reads the scale subresource at connect, merge-patches spec.replicas with the bearer token, and skips nothing', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, replicas: 2, token: 'sa-token' });
    const scaler = await KubernetesScaler.connect({ statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: await api.kubeConfig('sa-token') });
    expect(scaler.replicas).toBe(2);
    await scaler.scaleTo(5);
    expect(api.replicas).toBe(5);
    expect(api.requests.map((r) => [r.method, r.path])).toEqual([
      ['GET', SCALE_PATH],
      ['PATCH', SCALE_PATH],
    ]);
    const patch = api.requests[1];
    expect(patch?.contentType).toBe('application/merge-patch+json');
    expect(patch?.body).toEqual({ spec: { replicas: 5 } });
    expect(patch?.authorization).toBe('Bearer sa-token');
    expect(scaler.replicas).toBe(5);
    await scaler.close();
  });

  it('release replaces the scale at the resourceVersion it read, and reads again after a conflict', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, replicas: 4 });
    const scaler = await connect(api);
    // Another writer changes the count between our read and our replace: one 409, then it works.
    const version = api.resourceVersion;
    api.fail({ delayMs: 0 }, { before: () => api.setReplicasElsewhere(6) });
    await scaler.release([`${STATEFUL_SET}-3`, `${STATEFUL_SET}-2`, 'other-worker-7', 'df-dinofleet-worker-x']);
    const puts = api.requests.filter((r) => r.method === 'PUT');
    expect(puts.map((r) => (r.body as { metadata: { resourceVersion: string } }).metadata.resourceVersion)).toEqual([String(version), String(version + 1)]);
    expect(api.requests.filter((r) => r.method === 'GET')).toHaveLength(3);
    // 6 (the other writer's count) less the two pods of this StatefulSet named.
    expect(api.replicas).toBe(4);
    await scaler.close();
  });

  it('retries 503, 429 and a refused connection with the shared policy, then succeeds', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET });
    const scaler = await connect(api);
    api.fail({ status: 503 }, { status: 429 });
    await scaler.scaleTo(2);
    expect(api.replicas).toBe(2);
    expect(api.requests.filter((r) => r.method === 'PATCH')).toHaveLength(3);
    await scaler.close();

    const unreachable = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET });
    const config = await unreachable.kubeConfig();
    await unreachable.close();
    const error = await rejection(KubernetesScaler.connect({ statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: config, retry: { ...FAST_RETRY, maxAttempts: 3 } }));
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toContain(`cannot reach the Kubernetes API server to read the scale of StatefulSet ${NAMESPACE}/${STATEFUL_SET}`);
  });

  it('gives every call a deadline', async () => {
    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET });
    const scaler = await connect(api, { callTimeoutMs: 100 });
    api.fail({ delayMs: 2_000 });
    const started = Date.now();
    const error = await rejection(scaler.scaleTo(3));
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(error).toBeInstanceOf(DeadlineExceededError);
    expect(error.message).toContain('did not answer within 100 ms when asked to scale');
    await scaler.close();
  });

  it('says what to fix: RBAC forbidden names the Role the chart creates, a missing StatefulSet the settings, a bad token the mount', async () => {
    await using forbidden = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, allowedVerbs: ['get'] });
    const scaler = await connect(forbidden);
    const denied = await rejection(scaler.scaleTo(3));
    expect(denied).toBeInstanceOf(PermissionDeniedError);
    expect(denied.message).toContain('the Helm chart grants them with the Role df-dinofleet-coordinator');
    expect(denied.message).toContain('cannot patch resource "statefulsets/scale"');
    // Forbidden is not retried: one PATCH.
    expect(forbidden.requests.filter((r) => r.method === 'PATCH')).toHaveLength(1);
    await scaler.close();

    await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET });
    const missing = await rejection(KubernetesScaler.connect({ statefulSet: 'df-dinofleet-workers', namespace: NAMESPACE, kubeConfig: await api.kubeConfig() }));
    expect(missing).toBeInstanceOf(NotFoundError);
    expect(missing.message).toContain(`StatefulSet ${NAMESPACE}/df-dinofleet-workers does not exist`);
    expect(missing.message).toContain('DINOFLEET_K8S_STATEFULSET');

    const badToken = await rejection(KubernetesScaler.connect({ statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: await api.kubeConfig('stale') }));
    expect(badToken).toBeInstanceOf(UnauthenticatedError);
    expect(badToken.message).toContain('automountServiceAccountToken');

    const noRead = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, allowedVerbs: ['patch'] });
    const notReadable = await rejection(connect(noRead));
    await noRead.close();
    expect(notReadable).toBeInstanceOf(PermissionDeniedError);

    await expect(connect(api, { statefulSet: 'Bad_Name' })).rejects.toThrow(InvalidArgumentError);
    const scalerOk = await connect(api);
    await expect(scalerOk.scaleTo(-1)).rejects.toThrow('workers must be an integer >= 0, got -1');
    // A conflict that never settles ends as ABORTED after a few re-reads.
    api.fail({ delayMs: 0 }, { status: 409 }, { delayMs: 0 }, { status: 409 }, { delayMs: 0 }, { status: 409 }, { delayMs: 0 }, { status: 409 }, { delayMs: 0 }, { status: 409 });
    await expect(scalerOk.release([`${STATEFUL_SET}-0`])).rejects.toThrow(AbortedError);
    await scalerOk.close();
  });

  it('needs an in-cluster configuration or a kubeconfig, and says so', async () => {
    const outside = await rejection(inClusterKubeConfig({}));
    expect(outside).toBeInstanceOf(FailedPreconditionError);
    expect(outside.message).toContain('KUBERNETES_SERVICE_HOST');
    expect(outside.message).toContain('--kubeconfig');
    const dir = await mkdtemp(join(tmpdir(), 'dinofleet-k8s-'));
    try {
      const noToken = await rejection(inClusterKubeConfig({ KUBERNETES_SERVICE_HOST: '10.0.0.1', KUBERNETES_SERVICE_PORT: '443' }, `${dir}/var/run/secrets/kubernetes.io/serviceaccount`));
      expect(noToken.message).toContain('automountServiceAccountToken: true');
      await expect(kubeConfigFromFile(join(dir, 'missing.yaml'))).rejects.toThrow(/cannot read the kubeconfig .*missing\.yaml/);

      // A kubeconfig file reaches the server it names.
      await using api = await startFakeKubernetesApi({ namespace: NAMESPACE, statefulSet: STATEFUL_SET, replicas: 1 });
      const file = join(dir, 'kubeconfig.yaml');
      await writeFile(
        file,
        [
          'apiVersion: v1',
          'kind: Config',
          'clusters: [{name: fake, cluster: {server: "' + api.url + '", insecure-skip-tls-verify: true}}]',
          'users: [{name: coordinator, user: {token: test-token}}]',
          'contexts: [{name: fake, context: {cluster: fake, user: coordinator}}]',
          'current-context: fake',
          '',
        ].join('\n'),
      );
      const scaler = await KubernetesScaler.connect({ statefulSet: STATEFUL_SET, namespace: NAMESPACE, kubeConfig: await kubeConfigFromFile(file) });
      expect(scaler.replicas).toBe(1);
      await scaler.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
