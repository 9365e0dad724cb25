import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INSECURE, TlsConfigError } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { WorkerConfigError, resolveWorkerConfig } from './worker-config.ts';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dinofleet-worker-config-'));
  await createDevCertificates(join(root, 'tls'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('resolveWorkerConfig', () => {
  it('applies the defaults of docs/cluster.md', () => {
    expect(resolveWorkerConfig(['--coordinator', '127.0.0.1:7000', '--insecure'], {}, 'host-42')).toEqual({
      coordinator: '127.0.0.1:7000',
      security: INSECURE,
      workerId: 'host-42',
      listen: '127.0.0.1:0',
      dataListen: '127.0.0.1:0',
      advertiseHost: '127.0.0.1',
      backend: 'wasm',
      fetchConcurrency: 16,
      loaderThreads: availableParallelism(),
      prefetchBytes: 512 * 1024 * 1024,
      metricsListen: '127.0.0.1:0',
      readyFile: null,
      logLevel: 'info',
    });
  });

  it('reads every flag from the environment, and the flag wins', () => {
    const env = {
      DINOFLEET_COORDINATOR: 'coord:7000',
      DINOFLEET_WORKER_ID: 'pod-3',
      DINOFLEET_LISTEN: '0.0.0.0:7100',
      DINOFLEET_DATA_LISTEN: '0.0.0.0:7101',
      DINOFLEET_ADVERTISE_HOST: '10.0.0.7',
      DINOFLEET_BACKEND: 'cpu',
      DINOFLEET_FETCH_CONCURRENCY: '4',
      DINOFLEET_LOADER_THREADS: '3',
      DINOFLEET_PREFETCH_MB: '64',
      DINOFLEET_METRICS_LISTEN: '0.0.0.0:9464',
      DINOFLEET_READY_FILE: '/tmp/ready.json',
      DINOFLEET_LOG_LEVEL: 'debug',
      DINOFLEET_INSECURE: '1',
    };
    expect(resolveWorkerConfig([], env)).toEqual({
      coordinator: 'coord:7000',
      security: INSECURE,
      workerId: 'pod-3',
      listen: '0.0.0.0:7100',
      dataListen: '0.0.0.0:7101',
      advertiseHost: '10.0.0.7',
      backend: 'cpu',
      fetchConcurrency: 4,
      loaderThreads: 3,
      prefetchBytes: 64 * 1024 * 1024,
      metricsListen: '0.0.0.0:9464',
      readyFile: '/tmp/ready.json',
      logLevel: 'debug',
    });
    expect(resolveWorkerConfig(['--backend', 'wasm', '--worker-id', 'flag'], env)).toMatchObject({ backend: 'wasm', workerId: 'flag' });
    expect(resolveWorkerConfig(['--data-listen', '10.0.0.7:7200'], env).dataListen).toBe('10.0.0.7:7200');
  });

  it('binds the data listener on the host of --listen, any port, unless --data-listen says otherwise', () => {
    const of = (argv: string[], env: NodeJS.ProcessEnv = {}): string => resolveWorkerConfig(['--coordinator', 'a:1', '--insecure', ...argv], env).dataListen;
    expect(of(['--listen', '0.0.0.0:7100'])).toBe('0.0.0.0:0');
    expect(of(['--listen', '[::]:7100'])).toBe('[::]:0');
    expect(of(['--listen', 'worker-3.dinofleet:7100'])).toBe('worker-3.dinofleet:0');
    expect(of(['--listen', '0.0.0.0:7100', '--data-listen', '0.0.0.0:7101'])).toBe('0.0.0.0:7101');
    // An empty variable is unset, like every other flag's.
    expect(of(['--listen', '0.0.0.0:7100'], { DINOFLEET_DATA_LISTEN: '' })).toBe('0.0.0.0:0');
  });

  it('names the bad flag', () => {
    expect(() => resolveWorkerConfig([], {})).toThrow(/--coordinator .* is required/);
    expect(() => resolveWorkerConfig(['--coordinator', 'nohost'], {})).toThrow(/--coordinator must be host:port/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--backend', 'gpu'], {})).toThrow(/--backend: unknown compute backend 'gpu'/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--fetch-concurrency', '0'], {})).toThrow(/--fetch-concurrency must be an integer in 1..1024/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--log-level', 'loud'], {})).toThrow(/--log-level must be one of/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--loader-threads', '0'], {})).toThrow(/--loader-threads \(or DINOFLEET_LOADER_THREADS\) must be an integer in 1..256, got "0"/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1'], { DINOFLEET_PREFETCH_MB: '1.5' })).toThrow(/--prefetch-mb .* must be an integer in 1..1048576/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--data-listen', '7101'], {})).toThrow(/--data-listen must be host:port with a port in 0..65535, got "7101"/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1'], { DINOFLEET_DATA_LISTEN: 'host:70000' })).toThrow(/--data-listen must be host:port/);
    expect(() => resolveWorkerConfig(['--coordinator', 'a:1', '--bogus'], {})).toThrow(WorkerConfigError);
  });

  it('needs exactly one of --tls-dir and --insecure (or their variables)', () => {
    const base = ['--coordinator', 'a:1'];
    const fail = (argv: string[], env: NodeJS.ProcessEnv = {}): WorkerConfigError => {
      try {
        resolveWorkerConfig([...base, ...argv], env);
      } catch (err) {
        expect(err).toBeInstanceOf(WorkerConfigError);
        return err as WorkerConfigError;
      }
      throw new Error('resolveWorkerConfig did not throw');
    };
    // Neither: the TLS error, which says how to get certificates or run plaintext.
    const neither = fail([]);
    expect(neither.message).toMatch(/no TLS material: pass --tls-dir DIR \(or DINOFLEET_TLS_DIR\).* or --insecure/);
    expect(neither.cause).toBeInstanceOf(TlsConfigError);
    expect(fail([], { DINOFLEET_INSECURE: '0' }).message).toMatch(/no TLS material/);
    // Both, however they are given.
    const tlsDir = join(root, 'tls');
    expect(fail(['--tls-dir', tlsDir, '--insecure']).message).toMatch(/--insecure and --tls-dir exclude each other/);
    expect(fail(['--insecure'], { DINOFLEET_TLS_DIR: tlsDir }).message).toMatch(/exclude each other/);
    expect(fail(['--tls-dir', tlsDir], { DINOFLEET_INSECURE: 'true' }).message).toMatch(/exclude each other/);
    expect(fail([], { DINOFLEET_INSECURE: 'yes' }).message).toMatch(/DINOFLEET_INSECURE must be "1", "true", "0" or "false", got "yes"/);
    // A directory without the files names the missing one.
    expect(fail(['--tls-dir', join(root, 'missing')]).message).toMatch(/CA certificate .*missing\/ca\.crt does not exist/);
  });

  it('loads --tls-dir (or DINOFLEET_TLS_DIR) at start, and takes --insecure (or DINOFLEET_INSECURE=1/true)', () => {
    const tlsDir = join(root, 'tls');
    for (const [argv, env] of [
      [['--tls-dir', tlsDir], {}],
      [[], { DINOFLEET_TLS_DIR: tlsDir }],
    ] as const) {
      const { security } = resolveWorkerConfig(['--coordinator', 'a:1', ...argv], env);
      expect(security.kind).toBe('mtls');
      if (security.kind === 'mtls') {
        expect(security.material.dir).toBe(tlsDir);
        expect(security.material.cert).toBeDefined();
        expect(security.material.key).toBeDefined();
      }
    }
    expect(resolveWorkerConfig(['--coordinator', 'a:1', '--insecure'], {}).security).toBe(INSECURE);
    expect(resolveWorkerConfig(['--coordinator', 'a:1'], { DINOFLEET_INSECURE: 'TRUE' }).security).toBe(INSECURE);
    expect(resolveWorkerConfig(['--coordinator', 'a:1'], { DINOFLEET_INSECURE: '1' }).security).toBe(INSECURE);
  });
});
