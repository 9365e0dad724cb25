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
    expect(() => resolveCoordinatorConfig({ ...base, scaler: 'k8s' }, {})).toThrow('--scaler must be one of none, local, got "k8s"');
    expect(() => resolveCoordinatorConfig({ ...base, listen: 'nope' }, {})).toThrow('--listen must be host:port');
  });
});
