/**
 * Entry point of the `dinofleet` command: `node --import tsx packages/cli/src/main.ts …`
 * (or `pnpm dinofleet …`). SIGINT/SIGTERM abort the running command once; a second one
 * exits at once with 130.
 */
import { runCli } from './program.ts';

const controller = new AbortController();
let firstSignalAt: number | undefined;
const onSignal = (): void => {
  // One Ctrl-C can arrive twice (the terminal signals the whole process group, and a
  // wrapper such as tsx relays it again), so only a signal a second after the first
  // means "stop now".
  const now = Date.now();
  if (firstSignalAt !== undefined && now - firstSignalAt > 1000) process.exit(130);
  firstSignalAt ??= now;
  controller.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const code = await runCli(process.argv.slice(2), { signal: controller.signal });
process.off('SIGINT', onSignal);
process.off('SIGTERM', onSignal);
process.exitCode = code;
// gRPC channels and tfjs may keep handles open; the command is done.
setTimeout(() => process.exit(code), 200).unref();
