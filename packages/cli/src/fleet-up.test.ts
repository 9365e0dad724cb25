import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

import type { LocalFleet } from '@dinofleet/local';
import { findRepoRoot } from '@dinofleet/local';
import { describe, expect, it } from 'vitest';

import { fleetFilePath, readFleetFile } from './fleet-file.ts';
import { runFleetUp } from './fleet-up.ts';
import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const servicesExist = ['coordinator', 'teacher-sync'].every((name) => existsSync(`${findRepoRoot()}/services/${name}/src/main.ts`));

describe.skipIf(!servicesExist)('dinofleet up', () => {
  it('starts a secure fleet, records it in .dinofleet/fleet.json so the CLI needs no flags, and on the signal stops everything and removes the file', async () => {
    await using dir = await tempDir();
    const controller = new AbortController();
    const out = new CapturedOutput();
    let fleet: LocalFleet | undefined;
    let recorded: Awaited<ReturnType<typeof readFleetFile>>;
    const cli = { stdout: new CapturedOutput(), stderr: new CapturedOutput(), code: -1 };
    const readOnly = { stdout: new CapturedOutput(), stderr: new CapturedOutput(), code: -1 };
    const code = await runFleetUp({
      workers: 0,
      cwd: dir.path,
      env: {},
      out,
      signal: controller.signal,
      onReady: (started) => {
        fleet = started;
        void (async () => {
          recorded = await readFleetFile(dir.path);
          // Later commands in this directory: TLS and the admin token from the fleet file.
          cli.code = await runCli(['jobs'], { stdout: cli.stdout, stderr: cli.stderr, env: {}, cwd: dir.path });
          // The read token beside it may list, not cancel.
          const env = { DINOFLEET_TOKEN_FILE: '.dinofleet/token.read' };
          readOnly.code = await runCli(['cancel', 'some-job'], { stdout: readOnly.stdout, stderr: readOnly.stderr, env, cwd: dir.path });
        })().finally(() => controller.abort());
      },
    });
    expect(code).toBe(0);
    expect(fleet).toBeDefined();
    const started = fleet!;
    const dotDir = join(dir.path, '.dinofleet');
    expect(recorded).toEqual({
      coordinator: started.coordinatorAddress,
      teacherSync: started.teacherSyncAddress,
      redisUrl: started.redisUrl,
      s3Env: started.s3Env,
      pid: process.pid,
      tlsDir: join(dotDir, 'tls'),
      tokenFile: join(dotDir, 'token'),
    });
    expect(cli.stderr.text).toBe('');
    expect(cli.code).toBe(0);
    expect(cli.stdout.text).toBe('no jobs\n');
    expect(readOnly.code).toBe(1);
    expect(readOnly.stderr.text).toMatch(/^error: PERMISSION_DENIED: .*local-read.*read.*admin/);
    expect(started.security.kind).toBe('mtls');
    expect((await readFile(join(dotDir, 'token'), 'utf8')).trim()).toBe(started.tokens?.admin);
    for (const secret of ['token', 'token.submit', 'token.read', 'api-tokens', 'tls/tls.key', 'tls/ca.key']) {
      expect((await stat(join(dotDir, secret))).mode & 0o777, secret).toBe(0o600);
    }
    // Nothing it printed holds a token.
    for (const token of Object.values(started.tokens ?? {})) expect(out.text + cli.stdout.text).not.toContain(token);
    expect(out.text).toContain(`coordinator   ${started.coordinatorAddress}`);
    expect(out.text).toContain('tls           .dinofleet/tls');
    expect(out.text).toMatch(/dinofleet: fleet stopped\n$/);
    expect(existsSync(fleetFilePath(dir.path))).toBe(false);
    expect(isAlive(started.coordinator.pid)).toBe(false);
    expect(isAlive(started.teacherSync.pid)).toBe(false);
    expect(started.redis).not.toBeNull();
    expect(isAlive(started.redis!.pid)).toBe(false);
    // The credentials stay for the next `up`, which reuses them.
    expect(existsSync(join(dotDir, 'tls', 'ca.crt'))).toBe(true);
  });

  it('with insecure, starts a plaintext fleet that the fleet file marks so, and the CLI follows it', async () => {
    await using dir = await tempDir();
    const controller = new AbortController();
    const out = new CapturedOutput();
    let recorded: Awaited<ReturnType<typeof readFleetFile>>;
    const cli = { stdout: new CapturedOutput(), stderr: new CapturedOutput(), code: -1 };
    const code = await runFleetUp({
      workers: 0,
      insecure: true,
      cwd: dir.path,
      env: {},
      out,
      signal: controller.signal,
      onReady: () => {
        void (async () => {
          recorded = await readFleetFile(dir.path);
          cli.code = await runCli(['jobs'], { stdout: cli.stdout, stderr: cli.stderr, env: {}, cwd: dir.path });
        })().finally(() => controller.abort());
      },
    });
    expect(code).toBe(0);
    expect(recorded?.insecure).toBe(true);
    expect(recorded?.tlsDir).toBeUndefined();
    expect(out.text).toMatch(/warning: --insecure: connections are plaintext and unauthenticated/);
    expect(cli.stderr.text).toBe('');
    expect(cli.code).toBe(0);
    expect(existsSync(join(dir.path, '.dinofleet', 'tls'))).toBe(false);
  });

  it('--prometheus starts Prometheus scraping the fleet with the rules, prints its URL, and stops it with the fleet', async () => {
    await using dir = await tempDir();
    const controller = new AbortController();
    const out = new CapturedOutput();
    let fleet: LocalFleet | undefined;
    let targets: { labels: Record<string, string>; health: string }[] = [];
    let ruleCount = 0;
    const code = await runFleetUp({
      workers: 0,
      prometheus: true,
      cwd: dir.path,
      env: process.env,
      out,
      signal: controller.signal,
      onReady: (started) => {
        fleet = started;
        void (async () => {
          const url = started.prometheus?.url ?? '';
          // Scraped every 5 s: wait for the first scrapes of the coordinator and teacher-sync.
          for (let i = 0; i < 100; i++) {
            const body = (await (await fetch(`${url}/api/v1/targets`)).json()) as { data: { activeTargets: typeof targets } };
            targets = body.data.activeTargets;
            if (targets.length === 2 && targets.every((t) => t.health === 'up')) break;
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
          const rules = (await (await fetch(`${url}/api/v1/rules`)).json()) as { data: { groups: { rules: unknown[] }[] } };
          ruleCount = rules.data.groups.reduce((n, group) => n + group.rules.length, 0);
        })().finally(() => controller.abort());
      },
    });
    expect(code).toBe(0);
    const prometheus = fleet?.prometheus;
    expect(prometheus).toBeDefined();
    expect(out.text).toContain(`prometheus    ${prometheus?.url ?? '?'}`);
    expect(targets.map((t) => [t.labels['component'], t.health]).sort()).toEqual([
      ['coordinator', 'up'],
      ['teacher-sync', 'up'],
    ]);
    expect(ruleCount).toBeGreaterThanOrEqual(6);
    expect(isAlive(prometheus?.pid ?? 0)).toBe(false);
    expect(existsSync(prometheus?.dir ?? '/nonexistent')).toBe(false);
  });
});
