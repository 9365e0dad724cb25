/**
 * The bench's S3 endpoint: `s3rver-child.ts` run with the same node and tsx loader as the
 * bench, in its own process.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** A running s3rver child. */
export interface S3rverProcess {
  /** `DINOFLEET_S3_ENDPOINT`, credentials and region for `s3ClientFromEnv`. */
  readonly env: Record<string, string>;
  /** Process id of the child (for its CPU time). */
  readonly pid: number;
  /** Ends the child's stdin (it stops s3rver and removes its directory), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const START_TIMEOUT_MS = 30_000;

/** Starts s3rver with `bucket` in a child process and waits for its endpoint. */
export async function startS3rverProcess(bucket: string): Promise<S3rverProcess> {
  const entry = fileURLToPath(new URL('./s3rver-child.ts', import.meta.url));
  // Under tsx, execArgv carries its loader, so the child runs TypeScript the same way.
  const child = spawn(process.execPath, [...process.execArgv, entry, bucket], { stdio: ['pipe', 'pipe', 'inherit'] });
  // SIGTERM, not SIGKILL: the child still removes its directory (it also stops when its
  // stdin closes, which covers this process being killed).
  const killOnExit = (): void => {
    child.kill('SIGTERM');
  };
  process.once('exit', killOnExit);
  const exited = once(child, 'exit');
  const lines = createInterface({ input: child.stdout });
  const timer = setTimeout(() => child.kill('SIGKILL'), START_TIMEOUT_MS);
  let env: Record<string, string>;
  try {
    // The first line that is a JSON object (node flags such as --trace-gc print too).
    const ready = new Promise<string>((resolve) => {
      const onLine = (line: string): void => {
        if (!line.startsWith('{')) return;
        lines.off('line', onLine);
        resolve(line);
      };
      lines.on('line', onLine);
    });
    const line = await Promise.race([
      ready,
      exited.then(([code, signal]) => {
        throw new Error(`s3rver child exited before it was ready (code ${String(code)}, signal ${String(signal)})`);
      }),
    ]);
    env = JSON.parse(line) as Record<string, string>;
  } finally {
    clearTimeout(timer);
  }
  let stopping: Promise<void> | undefined;
  const stop = (graceMs = 10_000): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
        child.stdin.end();
        await exited;
        clearTimeout(kill);
      }
      process.removeListener('exit', killOnExit);
      lines.close();
    })();
    return stopping;
  };
  if (child.pid === undefined) throw new Error('s3rver child has no pid');
  return { env, pid: child.pid, stop };
}
