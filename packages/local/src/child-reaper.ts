import type { ChildProcess } from 'node:child_process';

/** Children still running, signalled when this process exits. */
const live = new Set<ChildProcess>();
let installed = false;

/**
 * Sends SIGTERM to `child` if it is still running when this process exits (including
 * `process.exit()` after a second Ctrl-C), so a local fleet does not outlive the command
 * that started it. A coordinator that gets it stops its own workers the same way. Nothing
 * can be done when this process is SIGKILLed.
 */
export function reapOnExit(child: ChildProcess): void {
  if (!installed) {
    installed = true;
    process.on('exit', () => {
      for (const running of live) {
        try {
          running.kill('SIGTERM');
        } catch {
          // already gone
        }
      }
    });
  }
  live.add(child);
  child.once('exit', () => live.delete(child));
  child.once('error', () => live.delete(child));
}
