import { describe, expect, it } from 'vitest';

import { resolveTeacherSyncConfig } from './teacher-sync-config.ts';

describe('resolveTeacherSyncConfig', () => {
  it('takes a flag over its environment variable, and defaults the rest', () => {
    const config = resolveTeacherSyncConfig(
      { listen: '0.0.0.0:7003' },
      {
        DINOFLEET_LISTEN: '127.0.0.1:1',
        DINOFLEET_METRICS_LISTEN: '[::1]:9464',
        DINOFLEET_READY_FILE: '/tmp/r.json',
        DINOFLEET_LOG_LEVEL: 'debug',
        DINOFLEET_TLS_DIR: '/etc/dinofleet/tls',
      },
    );
    expect(config).toEqual({
      listen: '0.0.0.0:7003',
      metricsListen: '[::1]:9464',
      readyFile: '/tmp/r.json',
      logLevel: 'debug',
      maxSnapshotBytes: 1024 ** 3,
      tlsDir: '/etc/dinofleet/tls',
      insecure: false,
    });
    expect(resolveTeacherSyncConfig({ insecure: true }, {})).toEqual({
      listen: '127.0.0.1:0',
      metricsListen: '127.0.0.1:0',
      logLevel: 'info',
      maxSnapshotBytes: 1024 ** 3,
      insecure: true,
    });
  });

  it('takes exactly one of --tls-dir and --insecure, from flags or the environment, without reading the directory', () => {
    // The directory need not exist here: main.ts reads it, so a chart's flags resolve anywhere.
    expect(resolveTeacherSyncConfig({ 'tls-dir': '/nowhere' }, {})).toMatchObject({ tlsDir: '/nowhere', insecure: false });
    for (const on of ['1', 'true']) expect(resolveTeacherSyncConfig({}, { DINOFLEET_INSECURE: on })).toMatchObject({ insecure: true });
    expect(resolveTeacherSyncConfig({ 'tls-dir': '/tls' }, { DINOFLEET_INSECURE: '0' })).toMatchObject({ tlsDir: '/tls', insecure: false });
    expect(() => resolveTeacherSyncConfig({}, {})).toThrow(/^no TLS material: pass --tls-dir DIR \(or DINOFLEET_TLS_DIR\) with ca\.crt, tls\.crt and tls\.key .*, or --insecure/);
    expect(() => resolveTeacherSyncConfig({ insecure: true }, { DINOFLEET_TLS_DIR: '/tls' })).toThrow('--insecure and --tls-dir exclude each other: pick one');
    expect(() => resolveTeacherSyncConfig({ 'tls-dir': '/tls' }, { DINOFLEET_INSECURE: 'true' })).toThrow('--insecure and --tls-dir exclude each other: pick one');
    expect(() => resolveTeacherSyncConfig({}, { DINOFLEET_INSECURE: 'on' })).toThrow('DINOFLEET_INSECURE must be 1, true, 0 or false, got "on"');
  });

  it('names the flag and the allowed values when one is bad', () => {
    expect(() => resolveTeacherSyncConfig({ listen: 'nowhere', insecure: true }, {})).toThrow(/--listen must be host:port/);
    expect(() => resolveTeacherSyncConfig({ 'max-snapshot-bytes': '1e9', insecure: true }, {})).toThrow(/--max-snapshot-bytes must be an integer in \[1, 4294967296\], got "1e9"/);
  });
});
