/**
 * One rank of a test ring in a process of its own, for tests that kill a rank
 * (tcp-allreduce.test.ts). Not exported from index.ts.
 *
 * Protocol, one JSON object per line:
 * - stdout: `{"address": "127.0.0.1:port"}` once its endpoint listens;
 * - stdin: `{"rank": r, "peers": [...], "elements": n, "options": {...}}` ({@link TestRankSetup});
 * - stdout: `{"entered": k}` before and `{"done": k}` after each all-reduce of a vector of
 *   `elements` float32 (16 MiB in the test), in a loop until one fails; then
 *   `{"failed": message}` and exit code 1.
 *
 * Run with `node --import tsx test-rank-process.ts`.
 */
import { createInterface } from 'node:readline';
import { CollectiveEndpoint } from './collective-endpoint.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import type { TestRingOptions } from './test-ring.ts';

/** What the parent writes on stdin (import it with `import type` only: this module runs on import). */
export interface TestRankSetup {
  /** This process's rank. */
  readonly rank: number;
  /** Every rank's endpoint address, this one's included. */
  readonly peers: readonly string[];
  /** Float32 elements per all-reduce (4 Mi for 16 MiB); every rank must use the same. */
  readonly elements: number;
  /** Ring settings every rank shares. */
  readonly options: TestRingOptions;
}

/** Longest life of the process, in ms: it never outlives a test that forgot it. */
const MAX_LIFETIME_MS = 60_000;

function report(message: object): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function main(): Promise<void> {
  setTimeout(() => process.exit(2), MAX_LIFETIME_MS).unref();
  const endpoint = new CollectiveEndpoint({ unclaimedStreamTimeoutMs: 5_000 });
  const { address } = await endpoint.start();
  report({ address });
  const lines = createInterface({ input: process.stdin });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    lines.once('close', () => reject(new Error('stdin closed before the setup line')));
  });
  lines.close();
  const setup = JSON.parse(first) as TestRankSetup;
  const ring = new RingAllReduce({ job: 'test-job', generation: 1, ...setup.options, endpoint, rank: setup.rank, peers: setup.peers });
  const values = new Float32Array(setup.elements);
  try {
    for (let k = 0; ; k++) {
      // Reset each time so repeated in-place sums stay finite.
      values.fill(setup.rank + 1);
      report({ entered: k });
      await ring.allReduceSumInPlace(values, { step: k, op: 0 });
      report({ done: k });
    }
  } catch (err) {
    report({ failed: (err as Error).message });
    process.exitCode = 1;
  } finally {
    await ring.close();
    await endpoint.close();
  }
}

main().catch((err: unknown) => {
  report({ failed: String(err) });
  process.exit(1);
});
