// `npm run bench -- manifest [--entries 1000000,10000000] [--seed 1] [--workers 1] [--plan-runs 5]`
// Generates ImageNet-like manifests of each size into a local S3 endpoint (s3rver in its
// own process, as S3 would be), plans each the way the coordinator does at submit
// (HeadObject, shard count, shard ranges, and the total-steps estimate from the first MiB)
// and times that and its RSS growth, then streams one split and every split in order in
// this one process (readSplitRecordBatches or readSplitRecords + parseManifestRecord) and
// checks that the splits' records tile the manifest (count, sum of offsets, characters).
// Targets: plan_ms <= 1000 and plan_rss_growth_mb <= 50 at every size (planning reads at
// most 1 MiB whatever the entry count), and >= 2 M entries/s streaming on one core.
// `entries_per_s` is the `read-ahead` mode (the next split's first GET overlaps this
// split's parsing, so the rate is the reader's, not s3rver's per-GET latency);
// `entries_per_s_batches` reads strictly one split after the other; `entries_per_cpu_s`
// is entries per second of this process's CPU time.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { S3Client } from '@aws-sdk/client-s3';
import { resolveJobSpec } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { planShards, shardCount, totalStepsOf } from '@dinofleet/coordinator';
import type { PlannedShard } from '@dinofleet/coordinator';
import { parseManifestRecord, readSplitRecordBatches, readSplitRecords, statManifest } from '@dinofleet/data';
import type { ManifestRecord, ManifestSplit, ReadSplitOptions } from '@dinofleet/data';
import { s3ClientFromEnv } from '@dinofleet/local';
import { log, median, report } from '../lib/report.ts';
import { uploadImagenetManifest } from './imagenet-manifest.ts';
import type { GeneratedManifest } from './imagenet-manifest.ts';
import { startS3rverProcess } from './s3rver-process.ts';

const { values } = parseArgs({
  options: {
    entries: { type: 'string', default: '1000000,10000000' },
    seed: { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
    'plan-runs': { type: 'string', default: '5' },
  },
});
const sizes = values.entries.split(',').map(Number);
if (sizes.length === 0 || sizes.some((n) => !Number.isSafeInteger(n) || n < 1)) throw new Error(`--entries must list positive integers, got ${values.entries}`);
const seed = Number(values.seed);
const workers = Number(values.workers);
const planRuns = Number(values['plan-runs']);
const PLAN_MS_TARGET = 1000;
const PLAN_RSS_TARGET_MB = 50;
const ENTRIES_PER_S_TARGET = 2_000_000;
const GLOBAL_BATCH = 64;
/** The read mode whose rate is `entries_per_s`. */
const HEADLINE_MODE: ReadMode = 'read-ahead';
const MB = 1e6;

// `npm run bench` starts node without --expose-gc; the flag can still be turned on here.
let gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) {
  setFlagsFromString('--expose-gc');
  gc = runInNewContext('gc') as () => void;
}
const collect = gc;

/** User + system CPU seconds of process `pid` so far (Linux /proc). */
function processCpuS(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  // utime and stime are fields 14 and 15 of stat, 12 and 13 after "pid (comm) ".
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function jobSpec(bucket: string, key: string): JobSpec {
  return resolveJobSpec({
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: 'bench-manifest' },
    spec: {
      data: { manifest: `s3://${bucket}/${key}` },
      training: { epochs: 1, globalBatchSize: GLOBAL_BATCH },
      fleet: { workers, minWorkers: 1, maxWorkers: Math.max(workers, 1) },
    },
  });
}

interface PlanRun {
  readonly ms: number;
  readonly rssGrowthMb: number;
  readonly shards: PlannedShard[];
  readonly totalSteps: number;
  readonly etag: string | undefined;
}

/** What the coordinator does at submit (job-runner `#plan`), timed, with RSS before and after. */
async function planOnce(s3: S3Client, bucket: string, key: string, collectFirst: boolean): Promise<PlanRun> {
  const spec = jobSpec(bucket, key);
  if (collectFirst) collect();
  const rssBefore = process.memoryUsage.rss();
  const t0 = performance.now();
  const manifest = await statManifest(s3, bucket, key);
  const shards = planShards(manifest.sizeBytes, shardCount(spec, manifest.sizeBytes, workers));
  const totalSteps = await totalStepsOf(spec, { s3, bucket, key, ...manifest });
  const ms = performance.now() - t0;
  // No collection before this reading: garbage the plan made counts, as it would in the coordinator.
  const rssGrowthMb = (process.memoryUsage.rss() - rssBefore) / MB;
  return { ms, rssGrowthMb, shards, totalSteps, etag: manifest.etag };
}

interface Streamed {
  readonly entries: number;
  readonly offsetSum: number;
  readonly charSum: number;
  readonly seconds: number;
  readonly cpuS: number;
  readonly serverCpuS: number;
}

/**
 * How the splits are read, all in this one process, in plan order:
 * - `batches`: readSplitRecordBatches, one split after the other;
 * - `read-ahead`: the same, but split i+1's first GET is sent before split i is consumed
 *   (a reader that knows its next split, as a worker holding its next lease would);
 * - `records`: readSplitRecords (one record per iteration), one split after the other.
 */
type ReadMode = 'batches' | 'read-ahead' | 'records';

interface Tally {
  entries: number;
  offsetSum: number;
  charSum: number;
}

function count(tally: Tally, record: ManifestRecord): void {
  const entry = parseManifestRecord(record);
  tally.entries++;
  tally.offsetSum += entry.offset;
  tally.charSum += entry.key.length + (entry.label?.length ?? 0);
}

/** Reads `splits` in order, parsing every record into an entry; times it. */
async function stream(
  s3: S3Client,
  bucket: string,
  key: string,
  splits: readonly ManifestSplit[],
  options: ReadSplitOptions,
  mode: ReadMode,
  serverPid: number,
): Promise<Streamed> {
  const tally: Tally = { entries: 0, offsetSum: 0, charSum: 0 };
  const serverCpu0 = processCpuS(serverPid);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  if (mode === 'records') {
    for (const split of splits) {
      for await (const record of readSplitRecords(s3, bucket, key, split, options)) count(tally, record);
    }
  } else {
    const open = (split: ManifestSplit): AsyncGenerator<ManifestRecord[], void, undefined> => readSplitRecordBatches(s3, bucket, key, split, options);
    let current = splits.length > 0 ? open(splits[0] as ManifestSplit) : undefined;
    for (let i = 0; current !== undefined; i++) {
      const following = i + 1 < splits.length ? open(splits[i + 1] as ManifestSplit) : undefined;
      // next() runs the generator up to its first GET; the batch is awaited after this split.
      const followingFirst = mode === 'read-ahead' ? following?.next() : undefined;
      void followingFirst?.catch(() => undefined);
      for await (const batch of current) for (const record of batch) count(tally, record);
      if (followingFirst !== undefined && following !== undefined) {
        const first = await followingFirst;
        if (first.done !== true) for (const record of first.value) count(tally, record);
      }
      current = following;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { ...tally, seconds, cpuS: (cpu.user + cpu.system) / 1e6, serverCpuS: processCpuS(serverPid) - serverCpu0 };
}

function checkTiling(streamed: Streamed, manifest: GeneratedManifest): void {
  const problems: string[] = [];
  if (streamed.entries !== manifest.entries) problems.push(`${streamed.entries} entries, expected ${manifest.entries}`);
  if (streamed.offsetSum !== manifest.offsetSum) problems.push(`offset sum ${streamed.offsetSum}, expected ${manifest.offsetSum}`);
  if (streamed.charSum !== manifest.charSum) problems.push(`key+label characters ${streamed.charSum}, expected ${manifest.charSum}`);
  if (problems.length > 0) throw new Error(`s3://…/${manifest.key}: the splits do not tile the manifest: ${problems.join('; ')}`);
}

interface SizeResult {
  readonly entries: number;
  readonly sizeBytes: number;
  readonly splits: number;
  readonly planMs: number;
  readonly planMsMax: number;
  readonly planRssGrowthMb: number;
  readonly totalSteps: number;
  readonly oneSplit: { readonly entries: number; readonly ms: number };
  readonly streamed: Record<ReadMode, Streamed>;
}

const fmt = (x: number, digits = 1): string => x.toFixed(digits);
const round = (x: number, digits = 1): number => Number(x.toFixed(digits));
const perS = (s: Streamed): number => s.entries / s.seconds;
const MODES: readonly ReadMode[] = ['batches', 'read-ahead', 'records'];

const bucket = `bench-manifest-${randomUUID().slice(0, 8)}`;
const server = await startS3rverProcess(bucket);
const s3 = s3ClientFromEnv(server.env);
const results: SizeResult[] = [];
try {
  const uploaded: { manifest: GeneratedManifest; splits: ManifestSplit[]; totalSteps: number; oneSplit: SizeResult['oneSplit']; streamed: Record<ReadMode, Streamed> }[] = [];
  for (const [i, entries] of sizes.entries()) {
    const key = `imagenet-${entries}.txt`;
    const tUpload = performance.now();
    const manifest = await uploadImagenetManifest(s3, bucket, key, entries, seed + i);
    const uploadS = (performance.now() - tUpload) / 1000;
    log(`${entries} entries: generated and uploaded ${fmt(manifest.sizeBytes / MB)} MB in ${fmt(uploadS)} s (${fmt(manifest.sizeBytes / MB / uploadS)} MB/s)`);

    // What a worker knows of its shard: the range, and the ETag and size from planning.
    const plan = await planOnce(s3, bucket, key, false);
    const splits: ManifestSplit[] = plan.shards.map((shard, index) => ({ index, start: shard.begin, end: shard.end }));
    const options: ReadSplitOptions = { objectSizeBytes: manifest.sizeBytes, ...(plan.etag !== undefined && { etag: plan.etag }) };
    const middle = splits.slice(splits.length >> 1, (splits.length >> 1) + 1);
    const oneRuns: Streamed[] = [];
    for (let run = 0; run < 3; run++) oneRuns.push(await stream(s3, bucket, key, middle, options, 'batches', server.pid));
    const oneSplit = { entries: oneRuns[0]?.entries ?? 0, ms: median(oneRuns.map((r) => r.seconds * 1000)) };
    log(`  one split [${middle[0]?.start}, ${middle[0]?.end}): ${oneSplit.entries} entries in ${fmt(oneSplit.ms)} ms (median of 3)`);
    const streamed = {} as Record<ReadMode, Streamed>;
    for (const mode of MODES) {
      const result = await stream(s3, bucket, key, splits, options, mode, server.pid);
      checkTiling(result, manifest);
      streamed[mode] = result;
      log(
        `  all ${splits.length} splits, ${mode}: ${fmt(result.seconds, 2)} s, ${fmt(perS(result) / 1e6, 2)} M entries/s, ` +
          `${fmt(manifest.sizeBytes / MB / result.seconds)} MB/s; CPU: bench ${fmt(result.cpuS, 2)} s, s3rver ${fmt(result.serverCpuS, 2)} s`,
      );
    }
    uploaded.push({ manifest, splits, totalSteps: plan.totalSteps, oneSplit, streamed });
  }

  // Planning is measured after all streaming: the forced collection before each run
  // shrinks V8's young generation, which slowed the streaming after it by about 1.5x.
  for (const { manifest, splits, totalSteps, oneSplit, streamed } of uploaded) {
    // One unmeasured plan first: the first HeadObject and ranged GET of a key pay for code
    // paths and connections a running coordinator has warm.
    await planOnce(s3, bucket, manifest.key, true);
    const runs: PlanRun[] = [];
    for (let run = 0; run < planRuns; run++) runs.push(await planOnce(s3, bucket, manifest.key, true));
    const planMs = median(runs.map((r) => r.ms));
    const planMsMax = Math.max(...runs.map((r) => r.ms));
    const planRssGrowthMb = Math.max(...runs.map((r) => r.rssGrowthMb));
    log(
      `${manifest.entries} entries: plan ${splits.length} shards, median ${fmt(planMs)} ms (max ${fmt(planMsMax)} ms) over ${planRuns} runs, ` +
        `RSS growth <= ${fmt(planRssGrowthMb)} MB; total_steps ${totalSteps} (exact ${Math.ceil(manifest.entries / GLOBAL_BATCH)})`,
    );
    results.push({ entries: manifest.entries, sizeBytes: manifest.sizeBytes, splits: splits.length, planMs, planMsMax, planRssGrowthMb, totalSteps, oneSplit, streamed });
  }
} finally {
  s3.destroy();
  await server.stop();
}

log('');
log('| entries | MB | splits | plan ms (median / max) | plan RSS growth MB | one split (entries, ms) | M entries/s (MB/s): batches / read-ahead / records | bench CPU s per M entries |');
log('|---|---|---|---|---|---|---|---|');
for (const r of results) {
  const rates = MODES.map((mode) => `${fmt(perS(r.streamed[mode]) / 1e6, 2)} (${fmt(r.sizeBytes / MB / r.streamed[mode].seconds)})`).join(' / ');
  log(
    `| ${r.entries} | ${fmt(r.sizeBytes / MB)} | ${r.splits} | ${fmt(r.planMs)} / ${fmt(r.planMsMax)} | ${fmt(r.planRssGrowthMb)} | ` +
      `${r.oneSplit.entries}, ${fmt(r.oneSplit.ms)} | ${rates} | ${fmt((r.streamed.batches.cpuS / r.entries) * 1e6, 2)} |`,
  );
}

const main = results[results.length - 1] as SizeResult;
const small = results.length > 1 ? (results[0] as SizeResult) : undefined;
const headline = main.streamed[HEADLINE_MODE];
report({
  entries: main.entries,
  splits: main.splits,
  plan_ms: round(main.planMs),
  plan_rss_growth_mb: round(main.planRssGrowthMb),
  entries_per_s: Math.round(perS(headline)),
  mb_per_s: round(main.sizeBytes / MB / headline.seconds),
  read_mode: HEADLINE_MODE,
  manifest_mb: round(main.sizeBytes / MB),
  stream_s: round(headline.seconds, 2),
  stream_cpu_s: round(headline.cpuS, 2),
  entries_per_cpu_s: Math.round(headline.entries / headline.cpuS),
  s3rver_cpu_s: round(headline.serverCpuS, 2),
  entries_per_s_batches: Math.round(perS(main.streamed.batches)),
  entries_per_s_read_ahead: Math.round(perS(main.streamed['read-ahead'])),
  entries_per_s_records: Math.round(perS(main.streamed.records)),
  one_split_entries: main.oneSplit.entries,
  one_split_ms: round(main.oneSplit.ms),
  total_steps: main.totalSteps,
  ...(small !== undefined && {
    entries_1m: small.entries,
    splits_1m: small.splits,
    plan_ms_1m: round(small.planMs),
    plan_rss_growth_mb_1m: round(small.planRssGrowthMb),
    entries_per_s_1m: Math.round(perS(small.streamed[HEADLINE_MODE])),
  }),
  verified: true,
  met: {
    plan_ms: results.every((r) => r.planMs <= PLAN_MS_TARGET),
    plan_rss_growth_mb: results.every((r) => r.planRssGrowthMb <= PLAN_RSS_TARGET_MB),
    entries_per_s: perS(headline) >= ENTRIES_PER_S_TARGET,
    entries_per_cpu_s: headline.entries / headline.cpuS >= ENTRIES_PER_S_TARGET,
  },
});
