/**
 * The sample ledger of verification mode (`spec.data.recordSamples`, docs/cluster.md
 * "Sample ledger"): hash `{p}:job:{id}:samples`, field `<step>` = JSON
 * `{"ids":[…],"epochs":[…]}` in rank order (a sample id is the record's manifest byte
 * offset). Written in each step's commit transaction; entries after a restored
 * checkpoint's step are deleted with the steps they belonged to.
 */
import type { Redis } from 'ioredis';

/** The ledger's key: `{prefix}:job:{jobId}:samples`. */
export function sampleLedgerKey(prefix: string, jobId: string): string {
  return `${prefix}:job:${jobId}:samples`;
}

/** One committed step's samples. */
export interface SampleLedgerEntry {
  /** Sample ids (manifest byte offsets), in rank order. */
  readonly ids: number[];
  /** The epoch of each id (same length). */
  readonly epochs: number[];
}

/** What {@link verifySampleLedger} found. */
export interface SampleLedgerReport {
  /** Records of epoch 0 never trained, once the job went past epoch 0 (else 0). */
  readonly lost: number;
  /** (epoch, sample id) pairs trained more than once. */
  readonly duplicated: number;
  /** Epochs in which every manifest record was trained. */
  readonly epochsComplete: number;
  /** Samples in the ledger (every committed step's). */
  readonly samplesCommitted: number;
}

/** The JSON of one ledger field. */
export function encodeLedgerEntry(entry: SampleLedgerEntry): string {
  return JSON.stringify({ ids: entry.ids, epochs: entry.epochs });
}

function parseLedgerEntry(text: string): SampleLedgerEntry {
  const value = JSON.parse(text) as unknown;
  // Issue 3 stored a bare id list (no epochs).
  if (Array.isArray(value)) return { ids: value as number[], epochs: value.map(() => 0) };
  const entry = value as Partial<SampleLedgerEntry>;
  const ids = entry.ids ?? [];
  return { ids, epochs: ids.map((_, i) => entry.epochs?.[i] ?? 0) };
}

/** The whole ledger under `key`: step → entry. */
export async function readSampleLedger(redis: Redis, key: string): Promise<Map<number, SampleLedgerEntry>> {
  const raw = await redis.hgetall(key);
  return new Map(Object.entries(raw).map(([step, text]) => [Number(step), parseLedgerEntry(text)]));
}

/** Deletes the ledger entries of steps after `step` (a checkpoint restore dropped them). */
export async function truncateSampleLedger(redis: Redis, key: string, step: number): Promise<number> {
  const later = (await redis.hkeys(key)).filter((field) => Number(field) > step);
  if (later.length === 0) return 0;
  return redis.hdel(key, ...later);
}

/**
 * Checks a job's sample ledger against its manifest: for each epoch that is complete (every
 * record offset appeared), and for every epoch the job finished (every epoch before the
 * newest two, and any epoch that holds an epoch's worth of samples) how many records were
 * never trained in it (`lost`); `duplicated` counts (epoch, id) pairs trained more than once.
 *
 * @param manifestRecordOffsets byte offsets of the manifest's records (its sample ids).
 */
export async function verifySampleLedger(redis: Redis, prefix: string, jobId: string, manifestRecordOffsets: readonly number[]): Promise<SampleLedgerReport> {
  const ledger = await readSampleLedger(redis, sampleLedgerKey(prefix, jobId));
  const seen = new Map<number, Map<number, number>>();
  let samplesCommitted = 0;
  for (const entry of ledger.values()) {
    entry.ids.forEach((id, i) => {
      const epoch = entry.epochs[i] ?? 0;
      const counts = seen.get(epoch) ?? new Map<number, number>();
      counts.set(id, (counts.get(id) ?? 0) + 1);
      seen.set(epoch, counts);
      samplesCommitted += 1;
    });
  }
  let duplicated = 0;
  let epochsComplete = 0;
  for (const counts of seen.values()) {
    for (const count of counts.values()) if (count > 1) duplicated += 1;
    if (manifestRecordOffsets.length > 0 && manifestRecordOffsets.every((offset) => counts.has(offset))) epochsComplete += 1;
  }
  // Epochs overlap at their boundary (a rank whose lease runs out takes one of the next
  // epoch while others still read this one's), so when the job stops, the newest two
  // epochs may be partial. Older epochs must be whole; so must any epoch that holds an
  // epoch's worth of samples.
  const newest = Math.max(0, ...seen.keys());
  let lost = 0;
  for (let epoch = 0; epoch <= newest; epoch++) {
    const counts = seen.get(epoch) ?? new Map<number, number>();
    let trained = 0;
    for (const count of counts.values()) trained += count;
    if (epoch < newest - 1 || trained >= manifestRecordOffsets.length) {
      lost += manifestRecordOffsets.filter((offset) => !counts.has(offset)).length;
    }
  }
  return { lost, duplicated, epochsComplete, samplesCommitted };
}
