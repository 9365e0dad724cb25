/**
 * The MPI baseline of the all-reduce bench: OpenMPI's MPI_Allreduce over TCP on
 * loopback (mpi/allreduce.c), the same sizes, iterations and timing as our ring.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { awaitChildren, startChild } from './child-run.ts';
import type { SizePlan, SizeTime } from './methodology.ts';
import { median } from '../lib/report.ts';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SOURCE = fileURLToPath(new URL('mpi/allreduce.c', import.meta.url));
/** Where the compiled baseline is kept, one binary per source hash. */
const CACHE_DIR = join(REPO_ROOT, '.cache', 'bench-allreduce');
/** Slowest bus bandwidth the deadline allows for, in bytes/s (only a hung run hits it). */
const SLOWEST_BUSBW_BYTES_PER_S = 10e6;
const LAUNCH_ALLOWANCE_MS = 120_000;

/**
 * OpenMPI over TCP on loopback only (no shared memory, no other transports), so it moves
 * bytes the way our gRPC ring does; --oversubscribe because there are more ranks than cores.
 */
const MPIRUN_FLAGS = [
  '--allow-run-as-root',
  '--oversubscribe',
  '--mca', 'pml', 'ob1',
  '--mca', 'btl', 'tcp,self',
  '--mca', 'btl_tcp_if_include', 'lo',
];

function onPath(command: string): boolean {
  return (process.env['PATH'] ?? '').split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** Runs a command to completion with its output on our stderr (stdout is the report's). */
function runQuietly(command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): boolean {
  const result = spawnSync(command, args, { stdio: ['ignore', 2, 2], env });
  return result.status === 0;
}

/**
 * Makes sure `mpicc` and `mpirun` exist: installs OpenMPI with apt-get when running as
 * root on a Debian-like system, otherwise fails saying what to install.
 */
export function ensureOpenMpi(log: (message: string) => void): void {
  if (onPath('mpicc') && onPath('mpirun')) return;
  const hint = 'install OpenMPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or run with --no-mpi';
  if (process.getuid?.() !== 0 || !onPath('apt-get')) {
    throw new Error(`mpicc/mpirun not found: ${hint}`);
  }
  log('mpicc/mpirun not found: installing openmpi-bin libopenmpi-dev with apt-get');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = (): boolean => runQuietly('apt-get', ['install', '-y', '-qq', 'openmpi-bin', 'libopenmpi-dev'], env);
  // Update the package lists only when needed: it is slow and usually unnecessary.
  const installed = install() || (runQuietly('apt-get', ['update', '-qq'], env) && install());
  if (!installed || !onPath('mpicc') || !onPath('mpirun')) {
    throw new Error(`installing OpenMPI with apt-get failed: ${hint}`);
  }
}

/** First line of `mpirun --version`, e.g. "mpirun (Open MPI) 4.1.4". */
export function openMpiVersion(): string {
  const result = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`mpirun --version failed: ${result.stderr}`);
  return result.stdout.split('\n')[0]?.trim() ?? '';
}

/** Compiles mpi/allreduce.c with `mpicc -O2` once per source and compiler; returns the binary. */
export function compileMpiBench(log: (message: string) => void): string {
  const compiler = spawnSync('mpicc', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  const key = createHash('sha256').update(readFileSync(SOURCE)).update(compiler).digest('hex').slice(0, 16);
  const binary = join(CACHE_DIR, `allreduce-${key}`);
  if (existsExecutable(binary)) return binary;
  mkdirSync(CACHE_DIR, { recursive: true });
  const partial = `${binary}.${process.pid}.tmp`;
  log(`compiling ${SOURCE} -> ${binary}`);
  if (!runQuietly('mpicc', ['-O2', '-o', partial, SOURCE])) throw new Error(`mpicc -O2 ${SOURCE} failed`);
  // Rename so that a concurrent or interrupted build never leaves a half-written binary.
  renameSync(partial, binary);
  return binary;
}

function existsExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

interface MpiSizeLine {
  readonly elements: number;
  readonly times_ms: readonly number[];
}

function parseMpiLine(line: string): MpiSizeLine {
  const value: unknown = JSON.parse(line);
  const ok =
    typeof value === 'object' &&
    value !== null &&
    Number.isSafeInteger((value as Record<string, unknown>)['elements']) &&
    Array.isArray((value as Record<string, unknown>)['times_ms']) &&
    ((value as Record<string, unknown>)['times_ms'] as unknown[]).every((t) => typeof t === 'number');
  if (!ok) throw new Error(`malformed line from allreduce: ${line.slice(0, 200)}`);
  return value as MpiSizeLine;
}

/** One mpirun launch over `sizes`; the per-iteration max times of each size, in ms. */
/**
 * glibc settings that keep MPI's large temporary buffers off fresh mmap()s: by default a
 * free() of a block above 32 MiB unmaps it, so every MPI_Allreduce of 64 MiB or more
 * page-faults a new temporary in, which on this VM costs MPI up to 8x (44 ms tuned vs
 * ~350 ms stock at 2 ranks, 64 MiB). The bench runs MPI both ways and keeps the faster,
 * so the baseline is the best MPI does here, not an artefact of the allocator.
 */
export const MPI_MALLOC_TUNED_ENV = ['-x', 'MALLOC_MMAP_THRESHOLD_=4294967296', '-x', 'MALLOC_TRIM_THRESHOLD_=4294967296'] as const;

async function launch(binary: string, ranks: number, sizes: readonly SizePlan[], tunedMalloc = false): Promise<number[][]> {
  const args = [...MPIRUN_FLAGS, ...(tunedMalloc ? MPI_MALLOC_TUNED_ENV : []), '-np', String(ranks), binary];
  for (const size of sizes) args.push(String(size.elements), String(size.warmups), String(size.iterations));
  const times: number[][] = [];
  const run = startChild(`mpirun -np ${ranks}`, 'mpirun', args, {
    cwd: REPO_ROOT,
    onStdoutLine(line) {
      if (!line.startsWith('{')) {
        process.stderr.write(`[mpirun stdout] ${line}\n`);
        return;
      }
      const parsed = parseMpiLine(line);
      const size = sizes[times.length];
      if (size === undefined || parsed.elements !== size.elements || parsed.times_ms.length !== size.iterations) {
        throw new Error(`unexpected line from allreduce: ${line.slice(0, 200)}`);
      }
      times.push([...parsed.times_ms]);
    },
  });
  let timeoutMs = LAUNCH_ALLOWANCE_MS;
  for (const size of sizes) {
    const busBytes = (size.elements * 4 * 2 * (ranks - 1)) / ranks;
    timeoutMs += ((size.warmups + size.iterations) * busBytes * 1000) / SLOWEST_BUSBW_BYTES_PER_S;
  }
  await awaitChildren([run], timeoutMs, `mpirun -np ${ranks}`);
  if (times.length !== sizes.length) throw new Error(`mpirun -np ${ranks} reported ${times.length} of ${sizes.length} sizes`);
  return times;
}

/**
 * One short untimed launch: the first MPI launch after boot can be several times slower
 * (cold page cache for the OpenMPI libraries and plugins).
 */
export async function warmUpMpi(binary: string, ranks: number): Promise<void> {
  await launch(binary, ranks, [{ sizeMiB: 0.25, elements: 65_536, warmups: 1, iterations: 2 }]);
}

/**
 * The MPI baseline's time of every size with `ranks` ranks (one launch for all sizes),
 * stock or with {@link MPI_MALLOC_TUNED_ENV}.
 */
export async function benchMpi(binary: string, ranks: number, sizes: readonly SizePlan[], tunedMalloc = false): Promise<SizeTime[]> {
  const times = await launch(binary, ranks, sizes, tunedMalloc);
  return sizes.map((size, k) => ({ sizeMiB: size.sizeMiB, ms: median(times[k] as number[]) }));
}
