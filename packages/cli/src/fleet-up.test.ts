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
});
