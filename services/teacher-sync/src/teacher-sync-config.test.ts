import { describe, expect, it } from 'vitest';

import { resolveTeacherSyncConfig } from './teacher-sync-config.ts';

describe('resolveTeacherSyncConfig', () => {
  it('takes a flag over its environment variable, and defaults the rest', () => {
    const config = resolveTeacherSyncConfig(
      { listen: '0.0.0.0:7003' },
      { DINOFLEET_LISTEN: '127.0.0.1:1', DINOFLEET_METRICS_LISTEN: '[::1]:9464', DINOFLEET_READY_FILE: '/tmp/r.json', DINOFLEET_LOG_LEVEL: 'debug' },
    );
    expect(config).toEqual({
      listen: '0.0.0.0:7003',
      metricsListen: '[::1]:9464',
      readyFile: '/tmp/r.json',
      logLevel: 'debug',
      maxSnapshotBytes: 1024 ** 3,
    });
    expect(resolveTeacherSyncConfig({}, {})).toEqual({ listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', logLevel: 'info', maxSnapshotBytes: 1024 ** 3 });
  });

  it('names the flag and the allowed values when one is bad', () => {
    expect(() => resolveTeacherSyncConfig({ listen: 'nowhere' }, {})).toThrow(/--listen must be host:port/);
    expect(() => resolveTeacherSyncConfig({ 'max-snapshot-bytes': '1e9' }, {})).toThrow(/--max-snapshot-bytes must be an integer in \[1, 4294967296\], got "1e9"/);
  });
});
