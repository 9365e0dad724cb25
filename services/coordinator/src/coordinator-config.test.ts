import { describe, expect, it } from 'vitest';
import { resolveCoordinatorConfig } from './coordinator-config.ts';

/** The transport flags every other case needs: plaintext. */
const INSECURE_FLAGS = { insecure: true } as const;

describe('resolveCoordinatorConfig', () => {
  it('applies defaults, reads the environment, and lets flags win', () => {
    const config = resolveCoordinatorConfig(
      { 'teacher-sync-address': '127.0.0.1:7001', 'redis-prefix': 'flag' },
      { DINOFLEET_REDIS_URL: 'redis://127.0.0.1:6379', DINOFLEET_REDIS_PREFIX: 'env', DINOFLEET_SCALER: 'local', DINOFLEET_INSECURE: '1' },
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
      tlsDir: undefined,
      insecure: true,
      apiTokensFile: undefined,
      maxSpecBytes: 262_144,
      maxQueuedJobsPerCaller: 32,
    });
  });

  it('names the flag and what is allowed', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2', ...INSECURE_FLAGS };
    expect(() => resolveCoordinatorConfig({ 'teacher-sync-address': 'h:2' }, {})).toThrow('--redis-url (or DINOFLEET_REDIS_URL) is required');
    expect(() => resolveCoordinatorConfig({ ...base, 'max-running-jobs': '0' }, {})).toThrow('--max-running-jobs must be an integer in [1, 1000], got "0"');
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'k8s' }, {})).toThrow('--scaler must be one of none, local, kubernetes, got "k8s"');
    expect(() => resolveCoordinatorConfig({ ...base, listen: 'nope' }, {})).toThrow('--listen must be host:port');
  });

  it('accepts the kubernetes scaler with the StatefulSet and namespace the Helm chart sets, and says what is missing', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2', ...INSECURE_FLAGS };
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

  it('takes --tls-dir with --api-tokens, or --insecure alone, from flags or the environment, without reading the files', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2' };
    // The files need not exist here (main.ts reads them), so a chart's flags resolve anywhere.
    expect(resolveCoordinatorConfig({ ...base, 'tls-dir': '/etc/dinofleet/tls', 'api-tokens': '/etc/dinofleet/tokens/tokens' }, {})).toMatchObject({
      tlsDir: '/etc/dinofleet/tls',
      insecure: false,
      apiTokensFile: '/etc/dinofleet/tokens/tokens',
    });
    expect(resolveCoordinatorConfig(base, { DINOFLEET_TLS_DIR: '/tls', DINOFLEET_API_TOKENS: '/tokens' })).toMatchObject({ tlsDir: '/tls', insecure: false, apiTokensFile: '/tokens' });
    for (const on of ['1', 'true', 'TRUE']) expect(resolveCoordinatorConfig(base, { DINOFLEET_INSECURE: on }).insecure).toBe(true);
    expect(resolveCoordinatorConfig({ ...base, insecure: true }, { DINOFLEET_INSECURE: '0' })).toMatchObject({ insecure: true, tlsDir: undefined, apiTokensFile: undefined });
  });

  it('refuses a missing or doubled transport choice and tokens that cannot apply, saying what to do', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2' };
    expect(() => resolveCoordinatorConfig(base, {})).toThrow(/^no TLS material: pass --tls-dir DIR \(or DINOFLEET_TLS_DIR\) with ca\.crt, tls\.crt and tls\.key .*, or --insecure for plaintext/);
    expect(() => resolveCoordinatorConfig(base, { DINOFLEET_INSECURE: 'false' })).toThrow(/^no TLS material/);
    expect(() => resolveCoordinatorConfig({ ...base, insecure: true, 'tls-dir': '/tls' }, {})).toThrow('--insecure and --tls-dir exclude each other: pick one');
    expect(() => resolveCoordinatorConfig({ ...base, 'tls-dir': '/tls' }, { DINOFLEET_INSECURE: '1' })).toThrow('--insecure and --tls-dir exclude each other: pick one');
    expect(() => resolveCoordinatorConfig({ ...base, 'tls-dir': '/tls' }, {})).toThrow(
      /^--api-tokens FILE \(or DINOFLEET_API_TOKENS\) is required with --tls-dir: .*create one with `dinofleet token create`$/,
    );
    expect(() => resolveCoordinatorConfig({ ...base, insecure: true, 'api-tokens': '/tokens' }, {})).toThrow(
      '--api-tokens has no effect with --insecure (plaintext carries no authentication); drop one',
    );
    expect(() => resolveCoordinatorConfig({ ...base, insecure: true }, { DINOFLEET_API_TOKENS: '/tokens' })).toThrow('--api-tokens has no effect with --insecure');
    expect(() => resolveCoordinatorConfig(base, { DINOFLEET_INSECURE: 'yes' })).toThrow('DINOFLEET_INSECURE must be 1, true, 0 or false, got "yes"');
  });

  it('bounds --max-spec-bytes and --max-queued-jobs-per-caller', () => {
    const base = { 'redis-url': 'redis://h:1', 'teacher-sync-address': 'h:2', ...INSECURE_FLAGS };
    expect(resolveCoordinatorConfig({ ...base, 'max-spec-bytes': '1024', 'max-queued-jobs-per-caller': '100000' }, {})).toMatchObject({
      maxSpecBytes: 1024,
      maxQueuedJobsPerCaller: 100_000,
    });
    expect(resolveCoordinatorConfig(base, { DINOFLEET_MAX_SPEC_BYTES: '16777216', DINOFLEET_MAX_QUEUED_JOBS_PER_CALLER: '1' })).toMatchObject({
      maxSpecBytes: 16_777_216,
      maxQueuedJobsPerCaller: 1,
    });
    expect(() => resolveCoordinatorConfig({ ...base, 'max-spec-bytes': '1023' }, {})).toThrow('--max-spec-bytes must be an integer in [1024, 16777216], got "1023"');
    expect(() => resolveCoordinatorConfig({ ...base, 'max-spec-bytes': '16777217' }, {})).toThrow('--max-spec-bytes must be an integer in [1024, 16777216]');
    expect(() => resolveCoordinatorConfig({ ...base, 'max-queued-jobs-per-caller': '0' }, {})).toThrow(
      '--max-queued-jobs-per-caller must be an integer in [1, 100000], got "0"',
    );
    expect(() => resolveCoordinatorConfig(base, { DINOFLEET_MAX_QUEUED_JOBS_PER_CALLER: '2.5' })).toThrow('--max-queued-jobs-per-caller must be an integer in [1, 100000], got "2.5"');
  });
});
