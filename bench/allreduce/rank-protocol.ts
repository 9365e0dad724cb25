/**
 * What the bench parent and its ring ranks (rank.ts) tell each other: the parent passes
 * a {@link RankPlan} as the rank's one argument; the rank prints {@link RANK_READY_LINE}
 * once its endpoint listens, and waits for {@link RANK_GO_LINE} on stdin, which the parent
 * sends when every rank is listening (a rank's first call connects to its right
 * neighbour, and a refused connection fails the ring); then the rank prints one
 * {@link RankSizeReport} JSON line on stdout per size, in plan order. Plan and reports
 * are checked on arrival, since they cross a process boundary.
 */
import type { SizePlan } from './methodology.ts';

/** A rank's stdout line: its endpoint listens. */
export const RANK_READY_LINE = '{"ready":true}';
/** The parent's stdin line to every rank: all endpoints listen, start. */
export const RANK_GO_LINE = 'go';

/** One rank's instructions. */
export interface RankPlan {
  /** This rank. */
  readonly rank: number;
  /** Every rank's "127.0.0.1:port", in rank order. */
  readonly peers: readonly string[];
  /** Sizes to measure, in order. */
  readonly sizes: readonly SizePlan[];
  /** Extra RingAllReduce options (the bench's `--options`). */
  readonly options: Readonly<Record<string, unknown>>;
  /** A TLS directory: the ring runs over mutual TLS (the bench's `--tls`). @default plaintext */
  readonly tlsDir?: string;
}

/** One rank's figures for one size. */
export interface RankSizeReport {
  /** The reporting rank. */
  readonly rank: number;
  /** The size, in MiB. */
  readonly sizeMiB: number;
  /** Wall time of each timed call, in ms. */
  readonly timesMs: readonly number[];
  /** sha256 (hex) of the result bytes after the last timed call. */
  readonly sha256: string;
  /** Elements checked against the float64 reference. */
  readonly sampled: number;
  /** max |result − ref| over the sampled elements. */
  readonly maxAbsError: number;
  /** max (|result − ref| − bound): ≤ 0 passes. */
  readonly worstExcess: number;
}

function fail(what: string, raw: string): never {
  throw new Error(`${what} is malformed: ${raw.slice(0, 200)}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isIndex(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

function isSizePlan(value: unknown): value is SizePlan {
  return (
    isObject(value) &&
    typeof value['sizeMiB'] === 'number' &&
    isIndex(value['elements']) &&
    isIndex(value['warmups']) &&
    isIndex(value['iterations'])
  );
}

/** Parses and checks the rank's argument. */
export function parseRankPlan(raw: string): RankPlan {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    fail('rank plan', raw);
  }
  if (
    !isObject(value) ||
    !isIndex(value['rank']) ||
    !Array.isArray(value['peers']) ||
    !value['peers'].every((peer) => typeof peer === 'string') ||
    value['rank'] >= value['peers'].length ||
    !Array.isArray(value['sizes']) ||
    !value['sizes'].every(isSizePlan) ||
    !isObject(value['options']) ||
    (value['tlsDir'] !== undefined && typeof value['tlsDir'] !== 'string')
  ) {
    fail('rank plan', raw);
  }
  return value as unknown as RankPlan;
}

/** Parses and checks one line of a rank's stdout. */
export function parseRankSizeReport(line: string): RankSizeReport {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    fail('rank report', line);
  }
  if (
    !isObject(value) ||
    !isIndex(value['rank']) ||
    typeof value['sizeMiB'] !== 'number' ||
    !Array.isArray(value['timesMs']) ||
    !value['timesMs'].every((t) => typeof t === 'number' && Number.isFinite(t)) ||
    typeof value['sha256'] !== 'string' ||
    !isIndex(value['sampled']) ||
    typeof value['maxAbsError'] !== 'number' ||
    typeof value['worstExcess'] !== 'number'
  ) {
    fail('rank report', line);
  }
  return value as unknown as RankSizeReport;
}

/**
 * The JSON line of a report. JSON has no Infinity, so an unbounded error (a non-finite
 * result) travels as the largest double, which still fails the check.
 */
export function formatRankSizeReport(report: RankSizeReport): string {
  const finite = (x: number): number =>
    Number.isFinite(x) ? x : x === Number.NEGATIVE_INFINITY ? -Number.MAX_VALUE : Number.MAX_VALUE;
  return JSON.stringify({ ...report, maxAbsError: finite(report.maxAbsError), worstExcess: finite(report.worstExcess) });
}
