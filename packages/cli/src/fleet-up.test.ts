import { existsSync } from 'node:fs';

import type { LocalFleet } from '@dinofleet/local';
import { findRepoRoot } from '@dinofleet/local';
import { describe, expect, it } from 'vitest';

import { fleetFilePath, readFleetFile } from './fleet-file.ts';
import { runFleetUp } from './fleet-up.ts';
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
  it('starts the fleet, records it in .dinofleet/fleet.json, and on the signal stops everything and removes the file', async () => {
    await using dir = await tempDir();
    const controller = new AbortController();
    const out = new CapturedOutput();
    let fleet: LocalFleet | undefined;
    let recorded: Awaited<ReturnType<typeof readFleetFile>>;
    const code = await runFleetUp({
      workers: 0,
      cwd: dir.path,
      env: {},
      out,
      signal: controller.signal,
      onReady: (started) => {
        fleet = started;
        void readFleetFile(dir.path).then((record) => {
          recorded = record;
          controller.abort();
        });
      },
    });
    expect(code).toBe(0);
    expect(fleet).toBeDefined();
    const started = fleet!;
    expect(recorded).toEqual({
      coordinator: started.coordinatorAddress,
      teacherSync: started.teacherSyncAddress,
      redisUrl: started.redisUrl,
      s3Env: started.s3Env,
      pid: process.pid,
    });
    expect(out.text).toContain(`coordinator   ${started.coordinatorAddress}`);
    expect(out.text).toMatch(/dinofleet: fleet stopped\n$/);
    expect(existsSync(fleetFilePath(dir.path))).toBe(false);
    expect(isAlive(started.coordinator.pid)).toBe(false);
    expect(isAlive(started.teacherSync.pid)).toBe(false);
    expect(started.redis).not.toBeNull();
    expect(isAlive(started.redis!.pid)).toBe(false);
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
