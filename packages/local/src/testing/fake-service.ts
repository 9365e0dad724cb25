/**
 * A stand-in for a dinofleet service in spawnService's tests. Behaviour by
 * `FAKE_SERVICE_MODE`: `ready` (default) writes the ready file like a real service and
 * exits 0 on SIGTERM; `exit-early` prints an error and exits 3 without being ready;
 * `never-ready` just waits; `ignore-term` is ready but ignores SIGTERM.
 */
import { rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { 'ready-file': { type: 'string' }, greeting: { type: 'string' } }, strict: true });
const mode = process.env['FAKE_SERVICE_MODE'] ?? 'ready';
const keepAlive = setInterval(() => undefined, 1_000);

process.stderr.write(`fake service starting in mode ${mode}, greeting ${values.greeting ?? '-'}\n`);
if (mode === 'exit-early') {
  process.stderr.write('fatal: --redis-url is required\n');
  process.exit(3);
}
if (mode === 'ignore-term') {
  process.on('SIGTERM', () => process.stderr.write('ignoring SIGTERM\n'));
} else {
  process.on('SIGTERM', () => {
    process.stderr.write('got SIGTERM, draining\n');
    clearInterval(keepAlive);
    process.exitCode = 0;
  });
}
if (mode !== 'never-ready') {
  const readyFile = values['ready-file'];
  if (readyFile === undefined) throw new Error('--ready-file is required');
  const ready = { service: 'fake', pid: process.pid, grpcAddress: '127.0.0.1:50051', metricsAddress: '127.0.0.1:9464' };
  await writeFile(`${readyFile}.tmp`, JSON.stringify(ready));
  await rename(`${readyFile}.tmp`, readyFile);
  process.stderr.write(`ready (${process.env['FAKE_SERVICE_MARK'] ?? 'no mark'})\n`);
}
