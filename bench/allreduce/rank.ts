/**
 * One rank of the all-reduce bench, run by ring-bench.ts as
 * `node --import tsx rank.ts '<RankPlan JSON>'`: its own CollectiveEndpoint and
 * RingAllReduce, timed exactly as mpi/allreduce.c times MPI_Allreduce (see index.ts),
 * one RankSizeReport line on stdout per size (protocol: rank-protocol.ts). Any error:
 * message on stderr, exit 1.
 */
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { CollectiveEndpoint, RingAllReduce } from '@dinofleet/collective';
import type { AllReduceTag } from '@dinofleet/collective';
import { INSECURE, transportSecurityFromFlags } from '@dinofleet/proto';
import { checkAccuracy, compressionOf, errorBound } from './error-bound.ts';
import { fillRankInput } from './rank-input.ts';
import { RANK_GO_LINE, RANK_READY_LINE, formatRankSizeReport, parseRankPlan } from './rank-protocol.ts';
import type { RankPlan } from './rank-protocol.ts';

async function runRank(plan: RankPlan): Promise<void> {
  const { rank, peers } = plan;
  const bound = errorBound(peers.length, compressionOf(plan.options));
  const address = peers[rank];
  if (address === undefined) throw new Error(`rank ${rank} has no address in peers`);
  const security = plan.tlsDir === undefined ? INSECURE : transportSecurityFromFlags({ tlsDir: plan.tlsDir });
  const endpoint = new CollectiveEndpoint({ address, security });
  await endpoint.start();
  process.stdout.write(`${RANK_READY_LINE}\n`);
  await allListening;
  const ring = new RingAllReduce({
    endpoint,
    job: 'bench',
    generation: 1,
    rank,
    peers,
    timeoutMs: 600_000,
    stallTimeoutMs: 600_000,
    ...plan.options,
  });
  // Every call on every rank, barriers included, takes the next op: the ranks must agree.
  let op = 0;
  const nextTag = (): AllReduceTag => ({ step: 0, op: op++ });
  const barrier = (): Promise<Float32Array> => ring.allReduceSum(new Float32Array(1), nextTag());

  await barrier();
  for (const size of plan.sizes) {
    const input = new Float32Array(size.elements);
    fillRankInput(rank, input);
    const work = new Float32Array(size.elements);
    const inputBytes = Buffer.from(input.buffer);
    const workBytes = Buffer.from(work.buffer);
    for (let w = 0; w < size.warmups; w++) {
      inputBytes.copy(workBytes);
      await ring.allReduceSumInPlace(work, nextTag());
    }
    const timesMs: number[] = [];
    for (let it = 0; it < size.iterations; it++) {
      // Untimed: the in-place call overwrites its input (MPI reads a separate send buffer).
      inputBytes.copy(workBytes);
      await barrier();
      const t0 = performance.now();
      await ring.allReduceSumInPlace(work, nextTag());
      timesMs.push(performance.now() - t0);
    }
    const sha256 = createHash('sha256').update(workBytes).digest('hex');
    const accuracy = checkAccuracy(work, peers.length, bound);
    process.stdout.write(`${formatRankSizeReport({ rank, sizeMiB: size.sizeMiB, timesMs, sha256, ...accuracy })}\n`);
  }
  await barrier();
  await ring.close();
  await endpoint.close();
}

function die(err: unknown): never {
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`rank failed: ${message}\n`);
  process.exit(1);
}

process.on('unhandledRejection', die);
process.on('uncaughtException', die);
const parentLines = createInterface({ input: process.stdin });
/** Resolves when the parent says every rank's endpoint listens. */
const allListening = new Promise<void>((resolve) => {
  parentLines.on('line', (line) => {
    if (line === RANK_GO_LINE) resolve();
  });
});
// The parent holds our stdin open; if it dies without killing us, do not linger.
parentLines.on('close', () => die(new Error('bench parent went away (stdin closed)')));

try {
  await runRank(parseRankPlan(process.argv[2] ?? ''));
  process.exit(0);
} catch (err) {
  die(err);
}
