import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { ServiceStartError, serviceEntry, spawnService } from './service-process.ts';

const FAKE = fileURLToPath(new URL('./testing/fake-service.ts', import.meta.url));

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('spawnService', () => {
  it('resolves with the addresses from the ready file and stops on SIGTERM', async () => {
    await using service = await spawnService('worker', {
      entry: FAKE,
      args: ['--greeting', 'hello'],
      env: { FAKE_SERVICE_MARK: 'env-merged' },
    });
    expect(service.name).toBe('worker');
    expect(service.grpcAddress).toBe('127.0.0.1:50051');
    expect(service.metricsAddress).toBe('127.0.0.1:9464');
    expect(isAlive(service.pid)).toBe(true);
    expect(service.logTail()).toContain('greeting hello');
    expect(service.logTail()).toContain('ready (env-merged)');

    await service.stop();
    expect(await service.exited).toEqual({ code: 0, signal: null });
    expect(service.logTail()).toContain('got SIGTERM, draining');
    expect(isAlive(service.pid)).toBe(false);
    await service.stop(); // idempotent
  });

  it('rejects with the exit code and the log tail when the process exits before it is ready', async () => {
    const failure = await spawnService('coordinator', { entry: FAKE, env: { FAKE_SERVICE_MODE: 'exit-early' } }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ServiceStartError);
    const error = failure as ServiceStartError;
    expect(error.exit).toEqual({ code: 3, signal: null });
    expect(error.message).toMatch(/coordinator .* exited with code 3 before it was ready/);
    expect(error.message).toContain('fatal: --redis-url is required');
    expect(error.logTail).toContain('fatal: --redis-url is required');
  });

  it('kills a process that is not ready in time', async () => {
    const failure = await spawnService('teacher-sync', {
      entry: FAKE,
      env: { FAKE_SERVICE_MODE: 'never-ready' },
      readyTimeoutMs: 1_500,
    }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ServiceStartError);
    expect((failure as Error).message).toMatch(/did not write its ready file within 1500 ms; killed it/);
    expect((failure as Error).message).toContain('mode never-ready');
  });

  it('sends SIGKILL when SIGTERM is ignored past the timeout', async () => {
    const service = await spawnService('worker', { entry: FAKE, env: { FAKE_SERVICE_MODE: 'ignore-term' } });
    await service.stop(500);
    expect(await service.exited).toEqual({ code: null, signal: 'SIGKILL' });
    expect(service.logTail()).toContain('ignoring SIGTERM');
  });

  it('appends output to logFile and reads the tail from there', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dinofleet-spawn-test-'));
    try {
      const logFile = join(dir, 'logs', 'worker.log');
      const service = await spawnService('worker', { entry: FAKE, logFile, cwd: dir });
      await service.stop();
      const text = await readFile(logFile, 'utf8');
      expect(text).toContain('ready (no mark)');
      expect(text).toContain('got SIGTERM');
      expect(service.logTail()).toBe(text);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('points at services/<name>/src/main.ts in the repository', () => {
    expect(serviceEntry('teacher-sync')).toMatch(/services\/teacher-sync\/src\/main\.ts$/);
  });
});
