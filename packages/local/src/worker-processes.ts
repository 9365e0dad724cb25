/**
 * Finds the worker processes of one fleet by their command line (`--coordinator <addr>`),
 * from /proc: a coordinator that was killed cannot report the workers it started, and the
 * chaos benchmark needs their pids to kill them.
 */
import { readdir, readFile } from 'node:fs/promises';

import type { ServiceReadyFile } from '@dinofleet/proto';

/** A worker process of a local fleet. */
export interface WorkerProcess {
  /** OS process id. */
  readonly pid: number;
  /** Its `--worker-id`. */
  readonly workerId: string;
  /**
   * `host:port` of its `/metrics`, from the ready file named by its `--ready-file` (written
   * once it serves); undefined before that or when it has none.
   */
  readonly metricsAddress?: string;
  /**
   * `host:port` of its gRPC server (Collective, state transfer), from the same ready file;
   * undefined before it serves.
   */
  readonly grpcAddress?: string;
}

/** The addresses in a ready file, none when it is not (yet) there. */
async function readyAddresses(path: string | undefined): Promise<{ metricsAddress?: string; grpcAddress?: string }> {
  if (path === undefined) return {};
  try {
    const ready = JSON.parse(await readFile(path, 'utf8')) as Partial<ServiceReadyFile>;
    return {
      ...(typeof ready.metricsAddress === 'string' && { metricsAddress: ready.metricsAddress }),
      ...(typeof ready.grpcAddress === 'string' && { grpcAddress: ready.grpcAddress }),
    };
  } catch {
    return {};
  }
}

/** The value after `flag` in an argv list, if any. */
function flagValue(argv: readonly string[], flag: string): string | undefined {
  const at = argv.indexOf(flag);
  return at < 0 ? undefined : argv[at + 1];
}

/**
 * Worker processes (`services/worker/src/main.ts`) whose `--coordinator` is
 * `coordinatorAddress`, sorted by worker id. Linux only (reads /proc); elsewhere empty.
 */
export async function listWorkerProcesses(coordinatorAddress: string): Promise<WorkerProcess[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const found: WorkerProcess[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
    } catch {
      continue; // exited meanwhile
    }
    if (!argv.some((arg) => arg.endsWith('services/worker/src/main.ts'))) continue;
    if (flagValue(argv, '--coordinator') !== coordinatorAddress) continue;
    const addresses = await readyAddresses(flagValue(argv, '--ready-file'));
    found.push({ pid: Number(entry), workerId: flagValue(argv, '--worker-id') ?? '', ...addresses });
  }
  return found.sort((a, b) => a.workerId.localeCompare(b.workerId, 'en', { numeric: true }));
}
