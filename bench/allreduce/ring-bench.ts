/**
 * Our side of the all-reduce bench: one OS process per rank (rank.ts), each with its own
 * CollectiveEndpoint on a free loopback port, all sizes in one launch. Collects every
 * rank's per-size report and turns them into a time and the two checks.
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { awaitChildren, startChild } from './child-run.ts';
import type { ChildRun } from './child-run.ts';
import { iterationTimeMs } from './methodology.ts';
import type { SizePlan, SizeTime } from './methodology.ts';
import { RANK_GO_LINE, RANK_READY_LINE, parseRankSizeReport } from './rank-protocol.ts';
import type { RankPlan, RankSizeReport } from './rank-protocol.ts';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RANK_SCRIPT = fileURLToPath(new URL('rank.ts', import.meta.url));

/**
 * Slowest bus bandwidth the deadline allows for, in bytes/s: ten times below today's
 * ring, so only a stuck or dead ring hits it.
 */
const SLOWEST_BUSBW_BYTES_PER_S = 10e6;
/** Deadline allowance for start-up, and per size for filling and checking buffers, in ms. */
const STARTUP_ALLOWANCE_MS = 120_000;
const PER_SIZE_ALLOWANCE_MS = 60_000;

/** Our ring's result for one size. */
export interface RingSizeResult extends SizeTime {
  /** Every rank's result had the same sha256. */
  readonly bitIdentical: boolean;
  /** Every rank's worst (|result − ref| − bound) was ≤ 0. */
  readonly withinBound: boolean;
  /** The largest (|result − ref| − bound) over ranks. */
  readonly worstExcess: number;
  /** The largest |result − ref| over ranks. */
  readonly maxAbsError: number;
}

/** `count` distinct free loopback ports (held together while picked, then released). */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const server = createServer();
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((server) => (server.address() as AddressInfo).port);
  await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  return ports;
}

/** Generous deadline of one launch over `sizes`, in ms. */
function launchTimeoutMs(ranks: number, sizes: readonly SizePlan[]): number {
  let ms = STARTUP_ALLOWANCE_MS;
  for (const size of sizes) {
    const busBytes = (size.elements * 4 * 2 * (ranks - 1)) / ranks;
    ms += PER_SIZE_ALLOWANCE_MS + ((size.warmups + size.iterations) * busBytes * 1000) / SLOWEST_BUSBW_BYTES_PER_S;
  }
  return ms;
}

function summarize(size: SizePlan, reports: readonly RankSizeReport[]): RingSizeResult {
  const hashes = new Set(reports.map((report) => report.sha256));
  const worstExcess = Math.max(...reports.map((report) => report.worstExcess));
  return {
    sizeMiB: size.sizeMiB,
    ms: iterationTimeMs(reports.map((report) => report.timesMs)),
    bitIdentical: hashes.size === 1,
    withinBound: worstExcess <= 0,
    worstExcess,
    maxAbsError: Math.max(...reports.map((report) => report.maxAbsError)),
  };
}

/**
 * Runs every size on a fresh ring of `ranks` processes with the extra RingAllReduce
 * `options` (over mutual TLS with the certificates in `tlsDir` when given). Rejects with the
 * first failing rank's error (all ranks are then killed).
 */
export async function benchRing(
  ranks: number,
  sizes: readonly SizePlan[],
  options: Readonly<Record<string, unknown>>,
  tlsDir?: string,
): Promise<RingSizeResult[]> {
  const peers = (await freePorts(ranks)).map((port) => `127.0.0.1:${port}`);
  const reportsBySize: RankSizeReport[][] = sizes.map(() => []);
  let listening = 0;
  const runs: ChildRun[] = peers.map((_, rank) => {
    const plan: RankPlan = { rank, peers, sizes, options, ...(tlsDir !== undefined && { tlsDir }) };
    let next = 0;
    return startChild(`rank ${rank}`, process.execPath, ['--import', 'tsx', RANK_SCRIPT, JSON.stringify(plan)], {
      cwd: REPO_ROOT,
      onStdoutLine(line) {
        if (line === RANK_READY_LINE) {
          listening++;
          if (listening === ranks) for (const run of runs) run.send(RANK_GO_LINE);
          return;
        }
        // Only JSON lines are reports; anything else (a stray console.log) is passed on.
        if (!line.startsWith('{')) {
          process.stderr.write(`[rank ${rank} stdout] ${line}\n`);
          return;
        }
        const report = parseRankSizeReport(line);
        const size = sizes[next];
        if (size === undefined || report.rank !== rank || report.sizeMiB !== size.sizeMiB) {
          throw new Error(`unexpected report ${line.slice(0, 200)}`);
        }
        if (report.timesMs.length !== size.iterations) {
          throw new Error(`reported ${report.timesMs.length} iterations for ${size.sizeMiB} MiB, expected ${size.iterations}`);
        }
        (reportsBySize[next] as RankSizeReport[]).push(report);
        next++;
      },
    });
  });
  await awaitChildren(runs, launchTimeoutMs(ranks, sizes), `the ring of ${ranks} ranks`);
  return sizes.map((size, k) => {
    const reports = reportsBySize[k] as RankSizeReport[];
    if (reports.length !== ranks) {
      throw new Error(`${reports.length} of ${ranks} ranks reported ${size.sizeMiB} MiB (${size.elements * 4} bytes)`);
    }
    return summarize(size, reports);
  });
}
