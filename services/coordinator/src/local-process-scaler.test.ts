import { describe, expect, it, vi } from 'vitest';
import { INSECURE } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';
import { LocalProcessScaler } from './local-process-scaler.ts';
import type { SpawnWorker } from './local-process-scaler.ts';
import { NoScaler } from './scaler.ts';
import { describeScalerConformance } from './testing/scaler-conformance.ts';

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

describeScalerConformance('LocalProcessScaler with a fake spawn', () => {
  const scaler = new LocalProcessScaler({ coordinatorAddress: '127.0.0.1:7000', security: INSECURE, spawn: fakeSpawn().spawn });
  return Promise.resolve({
    scaler,
    count: () => Promise.resolve(scaler.size),
    workerId: (index: number) => `local-${index}`,
    close: () => Promise.resolve(),
  });
});

describe('scalers', () => {
  it('LocalProcessScaler gives its workers the coordinator\'s TLS directory, as an absolute path', async () => {
    const { spawn, started } = fakeSpawn();
    // Only the directory name is used; the material itself stays with the coordinator.
    const security = { kind: 'mtls', material: { dir: 'fleet/tls', ca: Buffer.alloc(0), caCerts: [] } } satisfies TransportSecurity;
    const scaler = new LocalProcessScaler({ coordinatorAddress: '127.0.0.1:7000', security, spawn });
    await scaler.scaleTo(1);
    const args = started[0]?.args ?? [];
    expect(args.slice(args.indexOf('--tls-dir'))).toEqual(['--tls-dir', `${process.cwd()}/fleet/tls`]);
    expect(args).not.toContain('--insecure');
    await scaler.close();
  });

  it('NoScaler accepts any count and closes', async () => {
    const scaler = new NoScaler();
    await scaler.scaleTo(3);
    await scaler.close();
  });

  it('LocalProcessScaler starts local-<i> workers with the coordinator flags and stops the newest on scale-down', async () => {
    const { spawn, started, stopped } = fakeSpawn();
    const scaler = new LocalProcessScaler({ coordinatorAddress: '127.0.0.1:7000', security: INSECURE, backend: 'cpu', logDir: '/tmp/logs', spawn });
    await scaler.scaleTo(2);
    expect(started).toEqual([
      { args: ['--coordinator', '127.0.0.1:7000', '--worker-id', 'local-0', '--backend', 'cpu', '--insecure'], logFile: '/tmp/logs/local-0.log' },
      { args: ['--coordinator', '127.0.0.1:7000', '--worker-id', 'local-1', '--backend', 'cpu', '--insecure'], logFile: '/tmp/logs/local-1.log' },
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

  it('LocalProcessScaler stops released workers by id and replaces one that exits on its own', async () => {
    const started: string[] = [];
    const stopped: string[] = [];
    const crash = new Map<string, () => void>();
    const spawn: SpawnWorker = (_service, options) => {
      const id = options.args[options.args.indexOf('--worker-id') + 1] ?? '';
      started.push(id);
      let exit!: () => void;
      const exited = new Promise<void>((resolve) => {
        exit = resolve;
      });
      crash.set(id, exit);
      return Promise.resolve({
        pid: 2000 + started.length,
        exited,
        stop: () => {
          stopped.push(id);
          exit();
          return Promise.resolve();
        },
      });
    };
    const scaler = new LocalProcessScaler({ coordinatorAddress: '127.0.0.1:7000', security: INSECURE, spawn, restartDelayMs: 10 });
    await scaler.scaleTo(3);
    expect(started).toEqual(['local-0', 'local-1', 'local-2']);
    // Scale-down of rank 1's worker, not the highest id.
    await scaler.release(['local-1', 'someone-else']);
    expect(stopped).toEqual(['local-1']);
    expect(scaler.workerIds).toEqual(['local-0', 'local-2']);
    await scaler.scaleTo(2);
    expect(started).toHaveLength(3);
    // local-0 dies: a new id takes its place, keeping 2.
    crash.get('local-0')?.();
    await vi.waitFor(() => expect(scaler.workerIds).toEqual(['local-2', 'local-3']));
    // Below the count it keeps (1 after the scale-down) a crash is replaced; a released
    // worker lowers the count, so its exit is not.
    await scaler.scaleTo(1);
    expect(scaler.workerIds).toEqual(['local-2']);
    crash.get('local-2')?.();
    await vi.waitFor(() => expect(scaler.workerIds).toEqual(['local-4']));
    await scaler.release(['local-4']);
    await new Promise((r) => setTimeout(r, 50));
    expect(scaler.size).toBe(0);
    expect(started).toEqual(['local-0', 'local-1', 'local-2', 'local-3', 'local-4']);
    await scaler.close();
  });

  it('LocalProcessScaler adopts workers an earlier coordinator left running', async () => {
    const { spawn, started } = fakeSpawn();
    const scaler = new LocalProcessScaler({
      coordinatorAddress: '127.0.0.1:7000',
      security: INSECURE,
      spawn,
      findExisting: () => Promise.resolve([{ pid: 999_999_999, workerId: 'local-1' }]),
    });
    await scaler.scaleTo(2);
    expect(scaler.workerIds).toEqual(['local-0', 'local-1']);
    expect(started.map((s) => s.args[3])).toEqual(['local-0']);
    await scaler.close();
  });
});
