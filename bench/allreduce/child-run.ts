/**
 * Child processes of the all-reduce bench (ring ranks, mpirun, the raw-socket sink):
 * stdout read as lines, stderr passed through with a label and its tail kept for the
 * error, and a group of children that fails as a whole — the first failure or the
 * deadline ends every member, so a stuck ring never outlives the bench.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Settings for {@link startChild}. */
export interface StartChildOptions {
  /** Working directory. */
  readonly cwd: string;
  /** Called with every stdout line; a throw fails the child. */
  readonly onStdoutLine: (line: string) => void;
}

/** A running child. */
export interface ChildRun {
  /** Name used in messages, e.g. "rank 2". */
  readonly label: string;
  /** Resolves when the child exits 0; rejects naming its exit status and last stderr lines. */
  readonly exited: Promise<void>;
  /** Writes `line` and a newline to the child's stdin. */
  send(line: string): void;
  /** SIGTERM (so mpirun can take its ranks down), then SIGKILL after a grace period. */
  kill(): void;
}

const STDERR_TAIL_LINES = 20;
const KILL_GRACE_MS = 3_000;
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Starts `command args`; its stdin stays open (a rank exits when the bench goes away). */
export function startChild(label: string, command: string, args: readonly string[], options: StartChildOptions): ChildRun {
  const child = spawn(command, args, { cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(child);
  const stderrTail: string[] = [];
  let lineError: Error | undefined;

  const kill = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, KILL_GRACE_MS).unref();
  };

  createInterface({ input: child.stdout }).on('line', (line) => {
    if (lineError !== undefined) return;
    try {
      options.onStdoutLine(line);
    } catch (err) {
      lineError = err instanceof Error ? err : new Error(String(err));
      kill();
    }
  });
  createInterface({ input: child.stderr }).on('line', (line) => {
    process.stderr.write(`[${label}] ${line}\n`);
    stderrTail.push(line);
    if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift();
  });

  const exited = new Promise<void>((resolve, reject) => {
    child.once('error', (err) => {
      live.delete(child);
      reject(new Error(`${label}: could not run ${command}: ${err.message}`, { cause: err }));
    });
    // 'close' (not 'exit') so every stdout line has been handled first.
    child.once('close', (code, signal) => {
      live.delete(child);
      if (lineError !== undefined) {
        reject(new Error(`${label}: ${lineError.message}`, { cause: lineError }));
      } else if (code === 0) {
        resolve();
      } else {
        const status = signal !== null ? `signal ${signal}` : `exit code ${code}`;
        const tail = stderrTail.filter((line) => line.trim() !== '').join('\n  ');
        reject(new Error(`${label} failed (${status})${tail === '' ? '' : `:\n  ${tail}`}`));
      }
    });
  });
  // The group handles the rejection; this keeps an early one from being "unhandled".
  exited.catch(() => undefined);
  // A child that exits early closes its stdin: the failure is reported by `exited`.
  child.stdin.on('error', () => undefined);
  const send = (line: string): void => {
    child.stdin.write(`${line}\n`);
  };
  return { label, exited, send, kill };
}

/**
 * Waits until every child has exited 0. On the first failure, or when `timeoutMs` passes,
 * kills them all and rejects with that failure (the others' "killed" errors are noise).
 */
export async function awaitChildren(runs: readonly ChildRun[], timeoutMs: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
  });
  try {
    await Promise.race([Promise.all(runs.map((run) => run.exited)), deadline]);
  } catch (err) {
    for (const run of runs) run.kill();
    await Promise.allSettled(runs.map((run) => run.exited));
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
