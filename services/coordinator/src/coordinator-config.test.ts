import { describe, expect, it } from 'vitest';
import { resolveCoordinatorConfig } from './coordinator-config.ts';

describe('resolveCoordinatorConfig', () => {
  it('applies defaults, reads the environment, and lets flags win', () => {
    const config = resolveCoordinatorConfig(
      { 'teacher-sync-address': '127.0.0.1:7001', 'redis-prefix': 'flag' },
      { DINOFLEET_REDIS_URL: 'redis://127.0.0.1:6379', DINOFLEET_REDIS_PREFIX: 'env', DINOFLEET_SCALER: 'local' },
    );
    expect(config).toEqual({
      redisUrl: 'redis://127.0.0.1:6379',
      redisPrefix: 'flag',
      teacherSyncAddress: '127.0.0.1:7001',
      listen: '127.0.0.1:0',
      metricsListen: '127.0.0.1:0',
      readyFile: undefined,
      logLevel: 'info',
      maxRunningJobs: 1,
      scaler: 'local',
      kubernetes: undefined,
      initialWorkers: 0,
      workerBackend: 'wasm',
      workerLogDir: undefined,
      workerWaitSeconds: 300,
      heartbeatTimeoutSeconds: 10,
    });
  });

  it('names the flag and what is allowed', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2' };
    expect(() => resolveCoordinatorConfig({ 'teacher-sync-address': 'h:2' }, {})).toThrow('--redis-url (or DINOFLEET_REDIS_URL) is required');
    expect(() => resolveCoordinatorConfig({ ...base, 'max-running-jobs': '0' }, {})).toThrow('--max-running-jobs must be an integer in [1, 1000], got "0"');
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'k8s' }, {})).toThrow('--scaler must be one of none, local, kubernetes, got "k8s"');
    expect(() => resolveCoordinatorConfig({ ...base, listen: 'nope' }, {})).toThrow('--listen must be host:port');
  });

  it('accepts the kubernetes scaler with the StatefulSet and namespace the Helm chart sets, and says what is missing', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2' };
    const chartEnv = { DINOFLEET_SCALER: 'kubernetes', DINOFLEET_K8S_STATEFULSET: 'df-dinofleet-worker', DINOFLEET_K8S_NAMESPACE: 'train' };
    expect(resolveCoordinatorConfig(base, chartEnv)).toMatchObject({
      scaler: 'kubernetes',
      kubernetes: { statefulSet: 'df-dinofleet-worker', namespace: 'train', kubeconfigPath: undefined },
    });
    expect(resolveCoordinatorConfig({ ...base, kubeconfig: '/etc/kube/config', 'k8s-namespace': 'other' }, chartEnv).kubernetes).toEqual({
      statefulSet: 'df-dinofleet-worker',
      namespace: 'other',
      kubeconfigPath: '/etc/kube/config',
    });
    // The chart sets the K8S variables whatever the scaler: they mean nothing to the others.
    expect(resolveCoordinatorConfig(base, { ...chartEnv, DINOFLEET_SCALER: 'none' })).toMatchObject({ scaler: 'none', kubernetes: undefined });
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'kubernetes' }, {})).toThrow(
      "--k8s-statefulset (or DINOFLEET_K8S_STATEFULSET) is required with --scaler kubernetes: the worker StatefulSet's name",
    );
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'kubernetes', 'k8s-statefulset': 'w' }, {})).toThrow(
      '--k8s-namespace (or DINOFLEET_K8S_NAMESPACE) is required with --scaler kubernetes',
    );
    expect(() => resolveCoordinatorConfig({ ...base, 'k8s-statefulset': 'Workers_1' }, chartEnv)).toThrow('--k8s-statefulset must be a StatefulSet name');
    expect(() => resolveCoordinatorConfig({ ...base, 'k8s-namespace': 'a.b' }, chartEnv)).toThrow('--k8s-namespace must be a namespace name');
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'local', kubeconfig: '/k' }, {})).toThrow('--kubeconfig is for --scaler kubernetes, got --scaler local');
  });
});
