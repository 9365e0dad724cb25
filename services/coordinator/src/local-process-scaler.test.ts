import { describe, expect, it } from 'vitest';
import { LocalProcessScaler } from './local-process-scaler.ts';
import type { SpawnWorker } from './local-process-scaler.ts';
import { NoScaler } from './scaler.ts';

function fakeSpawn(): { spawn: SpawnWorker; started: { args: string[]; logFile?: string }[]; stopped: number[] } {
  const started: { args: string[]; logFile?: string }[] = [];
  const stopped: number[] = [];
  const spawn: SpawnWorker = (_service, options) => {
    const pid = 1000 + started.length;
    started.push({ args: options.args, ...(options.logFile !== undefined && { logFile: options.logFile }) });
    return Promise.resolve({
      pid,
      stop: () => {
        stopped.push(pid);
        return Promise.resolve();
      },
    });
  };
  return { spawn, started, stopped };
}

describe('scalers', () => {
  it('NoScaler accepts any count and closes', async () => {
    const scaler = new NoScaler();
    await scaler.scaleTo(3);
    await scaler.close();
  });

  it('LocalProcessScaler starts local-<i> workers with the coordinator flags and stops the newest on scale-down', async () => {
    const { spawn, started, stopped } = fakeSpawn();
    const scaler = new LocalProcessScaler({ coordinatorAddress: '127.0.0.1:7000', backend: 'cpu', logDir: '/tmp/logs', spawn });
    await scaler.scaleTo(2);
    expect(started).toEqual([
      { args: ['--coordinator', '127.0.0.1:7000', '--worker-id', 'local-0', '--backend', 'cpu'], logFile: '/tmp/logs/local-0.log' },
      { args: ['--coordinator', '127.0.0.1:7000', '--worker-id', 'local-1', '--backend', 'cpu'], logFile: '/tmp/logs/local-1.log' },
    ]);
    await scaler.scaleTo(2);
    expect(started).toHaveLength(2);
    await scaler.scaleTo(1);
    expect(stopped).toEqual([1001]);
    await scaler.scaleTo(2);
    expect(started[2]?.args).toContain('local-1');
    await scaler.close();
    expect(stopped.sort()).toEqual([1000, 1001, 1002]);
    expect(scaler.size).toBe(0);
    await scaler.scaleTo(5);
    expect(started).toHaveLength(3);
  });
});
