/**
 * A fake worker as a process, for tests of the local scaler: takes the worker flags the
 * scaler passes (`--ready-file`, `--coordinator`, `--worker-id`, `--backend`, `--tls-dir`
 * or `--insecure`), registers, trains without data, writes its ready file, and exits 0 on
 * SIGTERM after `Leaving`.
 */
import { rename, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { transportSecurityFromFlags } from '@dinofleet/proto';
import { FakeWorker } from './fake-worker.ts';

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    'ready-file': { type: 'string' },
    coordinator: { type: 'string' },
    'worker-id': { type: 'string' },
    backend: { type: 'string' },
    'tls-dir': { type: 'string' },
    insecure: { type: 'boolean' },
  },
});
const coordinator = values.coordinator;
if (coordinator === undefined) {
  process.stderr.write('fake worker: --coordinator is required\n');
  process.exit(2);
}
const security = transportSecurityFromFlags({ tlsDir: values['tls-dir'], insecure: values.insecure });
const worker = new FakeWorker(coordinator, { workerId: values['worker-id'] ?? `fake-${process.pid}`, security }).connect();
process.on('SIGTERM', () => {
  worker.leave('sigterm');
  setTimeout(() => {
    void worker.close().then(() => process.exit(0));
  }, 50);
});
const readyFile = values['ready-file'];
if (readyFile !== undefined) {
  const ready = { service: 'worker', pid: process.pid, grpcAddress: '127.0.0.1:0', metricsAddress: '127.0.0.1:0' };
  await writeFile(`${readyFile}.tmp`, JSON.stringify(ready));
  await rename(`${readyFile}.tmp`, readyFile);
}
