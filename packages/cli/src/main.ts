/**
 * Entry point of the `dinofleet` command: `node --import tsx packages/cli/src/main.ts …`
 * (or `pnpm dinofleet …`). SIGINT/SIGTERM abort the running command once; a second one
 * exits at once with 130.
 */
import { runCli } from './program.ts';

const controller = new AbortController();
let signals = 0;
const onSignal = (): void => {
  signals++;
  if (signals > 1) process.exit(130);
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
