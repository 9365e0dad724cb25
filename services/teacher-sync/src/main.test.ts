import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import {
  callUnary,
  channelCredentials,
  createClient,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  INSECURE_WARNING,
  transportSecurityFromFlags,
} from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { afterEach, describe, expect, it } from 'vitest';

const REPO_ROOT = resolve(import.meta.dirname, '../../..');
const MAIN = 'services/teacher-sync/src/main.ts';

interface Spawned {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

const children: ChildProcess[] = [];

afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

function spawnMain(args: readonly string[], env: NodeJS.ProcessEnv = {}): Spawned {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, DINOFLEET_LISTEN: '', DINOFLEET_METRICS_LISTEN: '', DINOFLEET_READY_FILE: '', DINOFLEET_TLS_DIR: '', DINOFLEET_INSECURE: '', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => {
    child.on('exit', (code, signal) => done({ code, signal }));
  });
  return { child, exited, stderr: () => stderr };
}

async function waitForFile(path: string, spawned: Spawned, timeoutMs: number): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await readFile(path, 'utf8');
    } catch {
      if (spawned.child.exitCode !== null) throw new Error(`teacher-sync exited ${spawned.child.exitCode}: ${spawned.stderr()}`);
      if (Date.now() > until) throw new Error(`no ready file after ${timeoutMs} ms: ${spawned.stderr()}`);
      await new Promise((done) => setTimeout(done, 50));
    }
  }
}

describe('teacher-sync process', () => {
  it('writes the ready file, serves health over mutual TLS and /metrics, and exits 0 on SIGTERM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'teacher-sync-main-'));
    try {
      const tlsDir = join(dir, 'tls');
      await createDevCertificates(tlsDir);
      const readyFile = join(dir, 'ready.json');
      const spawned = spawnMain(['--ready-file', readyFile, '--log-level', 'info', '--metrics-listen', '127.0.0.1:0'], { DINOFLEET_TLS_DIR: tlsDir });
      const ready = JSON.parse(await waitForFile(readyFile, spawned, 60_000)) as Record<string, unknown>;
      expect(Object.keys(ready).sort()).toEqual(['grpcAddress', 'metricsAddress', 'pid', 'service']);
      expect(ready.service).toBe('teacher-sync');
      expect(ready.pid).toBe(spawned.child.pid);
      expect(ready.grpcAddress).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(ready.metricsAddress).toMatch(/^127\.0\.0\.1:\d+$/);

      const health = createClient(HealthClient, ready.grpcAddress as string, { credentials: channelCredentials(transportSecurityFromFlags({ tlsDir })) });
      try {
        for (const service of ['', 'dinofleet.v1.TeacherSync']) {
          expect((await callUnary(health, 'check', { service }, { deadlineMs: 5000 })).status).toBe(ServingStatus.SERVING);
        }
      } finally {
        health.close();
      }
      const metrics = await (await fetch(`http://${ready.metricsAddress as string}/metrics`)).text();
      expect(metrics).toContain('dinofleet_teacher_sync_pushes_total 0');
      expect(metrics).toContain('dinofleet_teacher_sync_snapshot_bytes');

      spawned.child.kill('SIGTERM');
      expect(await spawned.exited).toEqual({ code: 0, signal: null });
      // Node's own warnings (the AWS SDK's Node version notice) are not JSON; the logs are.
      const lines = spawned
        .stderr()
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as { msg: string; name: string });
      expect(new Set(lines.map((line) => line.name))).toEqual(new Set(['teacher-sync']));
      expect(lines.map((line) => line.msg)).toEqual(expect.arrayContaining(['serving', 'draining', 'stopped']));
      expect(lines.map((line) => line.msg)).not.toContain(INSECURE_WARNING);
      // The key is read, never printed.
      const key = await readFile(join(tlsDir, 'tls.key'), 'utf8');
      expect(spawned.stderr()).not.toContain(key.split('\n')[1]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('with --insecure serves plaintext and warns at start', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'teacher-sync-main-'));
    try {
      const readyFile = join(dir, 'ready.json');
      const spawned = spawnMain(['--ready-file', readyFile, '--insecure', '--log-level', 'warn']);
      const ready = JSON.parse(await waitForFile(readyFile, spawned, 60_000)) as { grpcAddress: string };
      const health = createClient(HealthClient, ready.grpcAddress);
      try {
        expect((await callUnary(health, 'check', { service: '' }, { deadlineMs: 5000 })).status).toBe(ServingStatus.SERVING);
      } finally {
        health.close();
      }
      spawned.child.kill('SIGTERM');
      expect((await spawned.exited).code).toBe(0);
      const warnings = spawned
        .stderr()
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as { level: string; msg: string });
      expect(warnings).toContainEqual(expect.objectContaining({ level: 'warn', msg: INSECURE_WARNING }));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 naming the flag and the fix without TLS material, with both choices, or with a missing directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'teacher-sync-main-'));
    try {
      const none = spawnMain([]);
      const both = spawnMain(['--insecure', '--tls-dir', dir]);
      const missing = spawnMain(['--tls-dir', join(dir, 'nowhere')]);
      expect((await none.exited).code).toBe(2);
      expect(none.stderr()).toMatch(/^teacher-sync: no TLS material: pass --tls-dir DIR .* or --insecure for plaintext without authentication; usage: teacher-sync/);
      expect((await both.exited).code).toBe(2);
      expect(both.stderr()).toContain('--insecure and --tls-dir exclude each other: pick one');
      expect((await missing.exited).code).toBe(2);
      expect(missing.stderr()).toMatch(/^teacher-sync: TLS: CA certificate .*nowhere\/ca\.crt does not exist; create development certificates with `dinofleet certs --out <dir>`/);
      expect(missing.stderr().trim().split('\n')).toHaveLength(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 with a usage line for an unknown flag or a bad value', async () => {
    const unknown = spawnMain(['--nope']);
    expect((await unknown.exited).code).toBe(2);
    expect(unknown.stderr()).toMatch(/^teacher-sync: .*--nope.*; usage: teacher-sync \(--tls-dir dir \| --insecure\) \[--listen host:port\]/);
    expect(unknown.stderr().trim().split('\n')).toHaveLength(1);

    const badLevel = spawnMain(['--insecure'], { DINOFLEET_LOG_LEVEL: 'loud' });
    expect((await badLevel.exited).code).toBe(2);
    expect(badLevel.stderr()).toMatch(/--log-level must be one of debug, info, warn, error, silent, got "loud"/);
  });
});
