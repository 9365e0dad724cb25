/**
 * Benchmark output: human-readable lines go to stderr as they happen; the result is one
 * JSON object printed as the last line of stdout, so `npm run bench -- x | tail -1 | jq`
 * always works.
 */
export function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** Prints the benchmark's result as the last line of stdout. */
export function report(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
