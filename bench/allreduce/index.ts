// `npm run bench -- allreduce [--ranks 2,4] [--sizes 1,16,64,256] [--iters N] [--rounds 2]
//   [--options '{"compression":"bf16"}'] [--no-mpi] [--tls]`
// Our RingAllReduce (@dinofleet/collective) against OpenMPI's MPI_Allreduce over TCP on
// loopback, both float32 sums with one OS process per rank on this machine.
//
// Methodology, identical on both sides (rank.ts and mpi/allreduce.c): for each size
// (MiB), 2 untimed warm-up calls (1 above 16 MiB), then per timed iteration an untimed
// refill of the input, a barrier, and the timed all-reduce. An iteration's time is the
// slowest rank's; a size's time is the median iteration. Per rank count the two sides
// alternate --rounds times (MPI first in odd rounds, ours first in even ones, each a
// fresh launch) and each keeps its best median per size. MPI runs twice a round, stock and
// with glibc's malloc kept off mmap (mpi.ts: stock MPI page-faults a fresh 64 MiB temporary
// into every large call on this VM), and the baseline is the faster: MPI at its best. busbw = bytes / s × 2(n−1)/n
// (nccl-tests), algbw = bytes / s, in GB/s (10^9). One short MPI launch before
// everything absorbs the slow first launch after boot.
// Checks of ours, after each size's last timed call: every rank's result has the same
// sha256 (bit_identical), and sampled elements are within the float32 rounding bound
// (plus the wire compression's, from --options) of the exact float64 sum (within_bound);
// see error-bound.ts. Also measured: one loopback TCP stream between two Node processes
// (raw_socket_gbps), best of two, the ceiling of any Node collective here.
// --tls runs our ring over mutual TLS (gRPC and TCP data links, dev certificates from
// createDevCertificates) to measure what encryption costs; MPI stays plaintext.
// Target (met): 4 ranks, 64 MiB busbw ≥ MPI's, 1 MiB latency ≤ 2× MPI's, all checks pass.
// A failed check exits non-zero after the report.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';
import { log, report } from '../lib/report.ts';
import { compressionOf } from './error-bound.ts';
import type { Compression } from './error-bound.ts';
import { MIB, algBandwidthGBps, busBandwidthGBps, planSizes } from './methodology.ts';
import type { SizePlan, SizeTime } from './methodology.ts';
import { benchMpi, compileMpiBench, ensureOpenMpi, openMpiVersion, warmUpMpi } from './mpi.ts';
import { measureRawSocketGBps } from './raw-socket.ts';
import { benchRing } from './ring-bench.ts';
import type { RingSizeResult } from './ring-bench.ts';

/** The bench's settings, from its flags. */
interface AllReduceBenchConfig {
  readonly ranks: readonly number[];
  readonly sizes: readonly SizePlan[];
  readonly rounds: number;
  readonly options: Readonly<Record<string, unknown>>;
  readonly compression: Compression;
  readonly mpi: boolean;
  /** Our ring over mutual TLS. */
  readonly tls: boolean;
}

/** One (ranks, size) of the result. */
interface TableRow {
  readonly ranks: number;
  readonly sizeMiB: number;
  readonly ring: RingSizeResult;
  readonly mpi: SizeTime | undefined;
}

/** RingAllReduce options the bench sets itself; --options may not replace them. */
const RESERVED_OPTIONS = ['endpoint', 'job', 'generation', 'rank', 'peers'];
const HEADLINE_RANKS = 4;
const HEADLINE_SIZE_MIB = 64;
const LATENCY_SIZE_MIB = 1;

function parseNumberList(flag: string, text: string, integer: boolean): number[] {
  const values = text.split(',').map((part) => Number(part.trim()));
  if (values.length === 0 || values.some((v) => !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v)))) {
    throw new Error(`--${flag} must be a comma-separated list of positive ${integer ? 'integers' : 'numbers'}, got "${text}"`);
  }
  return values;
}

function resolveAllReduceBenchConfig(argv: readonly string[]): AllReduceBenchConfig {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      ranks: { type: 'string', default: '2,4' },
      sizes: { type: 'string', default: '1,16,64,256' },
      iters: { type: 'string' },
      rounds: { type: 'string', default: '2' },
      options: { type: 'string', default: '{}' },
      'no-mpi': { type: 'boolean', default: false },
      tls: { type: 'boolean', default: false },
    },
  });
  const ranks = parseNumberList('ranks', values.ranks, true);
  if (ranks.some((n) => n < 2)) throw new Error(`--ranks: every rank count must be >= 2, got "${values.ranks}"`);
  const rounds = Number(values.rounds);
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new Error(`--rounds must be an integer >= 1, got "${values.rounds}"`);
  let options: unknown;
  try {
    options = JSON.parse(values.options);
  } catch (err) {
    throw new Error(`--options must be a JSON object: ${(err as Error).message}`, { cause: err });
  }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new Error(`--options must be a JSON object, got ${values.options}`);
  }
  const reserved = Object.keys(options).filter((key) => RESERVED_OPTIONS.includes(key));
  if (reserved.length > 0) throw new Error(`--options may not set ${reserved.join(', ')}: the bench sets them`);
  const checkedOptions = options as Record<string, unknown>;
  return {
    ranks,
    sizes: planSizes(parseNumberList('sizes', values.sizes, false), values.iters === undefined ? undefined : Number(values.iters)),
    rounds,
    options: checkedOptions,
    compression: compressionOf(checkedOptions),
    mpi: !values['no-mpi'],
    tls: values.tls,
  };
}

/** x to 3 significant digits (null stays null). */
function sig3(x: number | null | undefined): number | null {
  return x === null || x === undefined || !Number.isFinite(x) ? null : Number(x.toPrecision(3));
}

function keepBestRing(best: RingSizeResult | undefined, next: RingSizeResult): RingSizeResult {
  if (best === undefined) return next;
  return {
    sizeMiB: next.sizeMiB,
    ms: Math.min(best.ms, next.ms),
    // A check must pass in every round.
    bitIdentical: best.bitIdentical && next.bitIdentical,
    withinBound: best.withinBound && next.withinBound,
    worstExcess: Math.max(best.worstExcess, next.worstExcess),
    maxAbsError: Math.max(best.maxAbsError, next.maxAbsError),
  };
}

function describeTimes(times: readonly SizeTime[], ranks: number): string {
  return times
    .map((t) => `${t.sizeMiB} MiB ${sig3(t.ms)} ms (${sig3(busBandwidthGBps(t.sizeMiB * MIB, t.ms, ranks))} GB/s)`)
    .join(', ');
}

function formatTable(rows: readonly TableRow[]): string {
  const header = ['ranks', 'size MiB', 'ours ms', 'ours busbw GB/s', 'MPI ms', 'MPI busbw GB/s', 'ratio', 'bit-identical', 'within bound'];
  const cell = (x: number | null): string => (x === null ? '-' : String(x));
  const body = rows.map((row) => {
    const bytes = row.sizeMiB * MIB;
    const busbw = busBandwidthGBps(bytes, row.ring.ms, row.ranks);
    const mpiBusbw = row.mpi === undefined ? null : busBandwidthGBps(bytes, row.mpi.ms, row.ranks);
    return [
      String(row.ranks),
      String(row.sizeMiB),
      cell(sig3(row.ring.ms)),
      cell(sig3(busbw)),
      cell(sig3(row.mpi?.ms)),
      cell(sig3(mpiBusbw)),
      cell(mpiBusbw === null ? null : sig3(busbw / mpiBusbw)),
      row.ring.bitIdentical ? 'yes' : 'NO',
      row.ring.withinBound ? 'yes' : `NO (+${row.ring.worstExcess.toExponential(2)})`,
    ];
  });
  const widths = header.map((title, c) => Math.max(title.length, ...body.map((cells) => (cells[c] as string).length)));
  const line = (cells: readonly string[]): string => cells.map((text, c) => text.padStart(widths[c] as number)).join(' | ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('-+-'), ...body.map(line)].join('\n');
}

/** The size in `sizes` closest to `target` MiB (the larger one on a tie). */
function closestSize(sizes: readonly SizePlan[], target: number): number {
  let best = (sizes[0] as SizePlan).sizeMiB;
  for (const { sizeMiB } of sizes) {
    const d = Math.abs(sizeMiB - target) - Math.abs(best - target);
    if (d < 0 || (d === 0 && sizeMiB > best)) best = sizeMiB;
  }
  return best;
}

async function main(): Promise<void> {
  const config = resolveAllReduceBenchConfig(process.argv.slice(2));
  log(
    `allreduce: ranks ${config.ranks.join(',')}, sizes ${config.sizes.map((s) => `${s.sizeMiB} MiB×${s.iterations}`).join(', ')}, ` +
      `${config.rounds} round(s), options ${JSON.stringify(config.options)}${config.mpi ? '' : ', no MPI'}${config.tls ? ', our ring over mutual TLS' : ''}`,
  );
  const tlsDir = config.tls ? join(await mkdtemp(join(tmpdir(), 'dinofleet-allreduce-tls-')), 'tls') : undefined;
  if (tlsDir !== undefined) await createDevCertificates(tlsDir);

  let mpiBinary: string | undefined;
  let mpiVersion: string | null = null;
  if (config.mpi) {
    ensureOpenMpi(log);
    mpiBinary = compileMpiBench(log);
    mpiVersion = openMpiVersion();
    log(`MPI: ${mpiVersion}; untimed warm-up launch`);
    await warmUpMpi(mpiBinary, config.ranks[0] as number);
  }

  const rawSocketGBps = await measureRawSocketGBps();
  log(`raw socket (one loopback TCP stream, Node to Node): ${sig3(rawSocketGBps)} GB/s`);

  const rows: TableRow[] = [];
  /** Stock MPI's best median per "ranks/sizeMiB", reported beside the baseline. */
  const stockMpi = new Map<string, number>();
  for (const ranks of config.ranks) {
    const bestRing = new Map<number, RingSizeResult>();
    const bestMpi = new Map<number, SizeTime>();
    for (let round = 0; round < config.rounds; round++) {
      // Alternate which side goes first, so slow drift of the machine favours neither.
      const mpiFirst = round % 2 === 0;
      for (const side of mpiFirst ? (['mpi', 'ring'] as const) : (['ring', 'mpi'] as const)) {
        const label = `ranks ${ranks}, round ${round + 1}/${config.rounds}`;
        if (side === 'mpi') {
          if (mpiBinary === undefined) continue;
          // Stock, and with glibc's malloc kept off mmap (mpi.ts): the baseline is MPI's best.
          for (const tunedMalloc of [false, true]) {
            const times = await benchMpi(mpiBinary, ranks, config.sizes, tunedMalloc);
            log(`${label}, MPI (${tunedMalloc ? 'malloc tuned' : 'stock'}): ${describeTimes(times, ranks)}`);
            for (const t of times) {
              const best = bestMpi.get(t.sizeMiB);
              if (best === undefined || t.ms < best.ms) bestMpi.set(t.sizeMiB, t);
              if (!tunedMalloc) stockMpi.set(`${ranks}/${t.sizeMiB}`, Math.min(t.ms, stockMpi.get(`${ranks}/${t.sizeMiB}`) ?? Infinity));
            }
          }
        } else {
          const results = await benchRing(ranks, config.sizes, config.options, tlsDir);
          log(`${label}, ours: ${describeTimes(results, ranks)}`);
          for (const r of results) {
            if (!r.bitIdentical) log(`  ${r.sizeMiB} MiB: ranks' results differ`);
            if (!r.withinBound) log(`  ${r.sizeMiB} MiB: error exceeds the bound by ${r.worstExcess} (max |err| ${r.maxAbsError})`);
            bestRing.set(r.sizeMiB, keepBestRing(bestRing.get(r.sizeMiB), r));
          }
        }
      }
    }
    for (const { sizeMiB } of config.sizes) {
      rows.push({ ranks, sizeMiB, ring: bestRing.get(sizeMiB) as RingSizeResult, mpi: bestMpi.get(sizeMiB) });
    }
  }

  log('');
  log(formatTable(rows));
  log(`raw socket: ${sig3(rawSocketGBps)} GB/s; options: ${JSON.stringify(config.options)} (compression ${config.compression}); MPI: ${mpiVersion ?? 'not run'}`);

  const headRanks = config.ranks.includes(HEADLINE_RANKS) ? HEADLINE_RANKS : Math.max(...config.ranks);
  const headSize = closestSize(config.sizes, HEADLINE_SIZE_MIB);
  const head = rows.find((row) => row.ranks === headRanks && row.sizeMiB === headSize) as TableRow;
  const latency = rows.find((row) => row.ranks === headRanks && row.sizeMiB === LATENCY_SIZE_MIB);
  const busbw = busBandwidthGBps(headSize * MIB, head.ring.ms, headRanks);
  const mpiBusbw = head.mpi === undefined ? null : busBandwidthGBps(headSize * MIB, head.mpi.ms, headRanks);
  const ratio = mpiBusbw === null ? null : busbw / mpiBusbw;
  const latencyMs = latency?.ring.ms ?? null;
  const mpiLatencyMs = latency?.mpi?.ms ?? null;
  const latencyRatio = latencyMs === null || mpiLatencyMs === null ? null : latencyMs / mpiLatencyMs;
  const bitIdentical = rows.every((row) => row.ring.bitIdentical);
  const withinBound = rows.every((row) => row.ring.withinBound);
  const met = ratio !== null && ratio >= 1 && latencyRatio !== null && latencyRatio <= 2 && bitIdentical && withinBound;

  report({
    ranks: headRanks,
    size_mib: headSize,
    busbw_gbps: sig3(busbw),
    mpi_tcp_busbw_gbps: sig3(mpiBusbw),
    ratio_vs_mpi_tcp: sig3(ratio),
    mpi_stock_busbw_gbps: stockMpi.has(`${headRanks}/${headSize}`) ? sig3(busBandwidthGBps(headSize * MIB, stockMpi.get(`${headRanks}/${headSize}`) as number, headRanks)) : null,
    latency_1mib_ms: sig3(latencyMs),
    mpi_latency_1mib_ms: sig3(mpiLatencyMs),
    latency_ratio_vs_mpi: sig3(latencyRatio),
    met,
    raw_socket_gbps: sig3(rawSocketGBps),
    bit_identical: bitIdentical,
    within_bound: withinBound,
    options: config.options,
    transport_security: config.tls ? 'mtls' : 'plaintext',
    mpi_version: mpiVersion,
    table: rows.map((row) => {
      const bytes = row.sizeMiB * MIB;
      const rowBusbw = busBandwidthGBps(bytes, row.ring.ms, row.ranks);
      const rowMpiBusbw = row.mpi === undefined ? null : busBandwidthGBps(bytes, row.mpi.ms, row.ranks);
      return {
        ranks: row.ranks,
        size_mib: row.sizeMiB,
        ms: sig3(row.ring.ms),
        busbw_gbps: sig3(rowBusbw),
        algbw_gbps: sig3(algBandwidthGBps(bytes, row.ring.ms)),
        mpi_ms: sig3(row.mpi?.ms),
        mpi_stock_ms: sig3(stockMpi.get(`${row.ranks}/${row.sizeMiB}`)),
        mpi_busbw_gbps: sig3(rowMpiBusbw),
        ratio: rowMpiBusbw === null ? null : sig3(rowBusbw / rowMpiBusbw),
        bit_identical: row.ring.bitIdentical,
        within_bound: row.ring.withinBound,
        max_abs_error: sig3(row.ring.maxAbsError),
      };
    }),
  });
  if (!bitIdentical || !withinBound) {
    log('FAILED: a correctness check did not pass (see the table)');
    process.exitCode = 1;
  }
}

try {
  await main();
} catch (err) {
  log(`allreduce bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
