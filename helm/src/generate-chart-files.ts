/**
 * Writes the chart's generated files (`values.schema.json`, the copies of deploy/'s dashboards
 * and rules): `pnpm --filter @dinofleet/helm-chart generate`. With `--check` it writes nothing
 * and exits 1 when a file is stale.
 */
import { staleChartFiles, writeChartFiles } from './chart-files.ts';

if (process.argv.includes('--check')) {
  const stale = staleChartFiles();
  for (const line of stale) process.stderr.write(`${line}\n`);
  if (stale.length > 0) {
    process.stderr.write('run: pnpm --filter @dinofleet/helm-chart generate\n');
    process.exit(1);
  }
} else {
  const changed = writeChartFiles();
  process.stdout.write(changed.length === 0 ? 'helm/dinofleet: generated files are current\n' : `${changed.map((path) => `wrote ${path}`).join('\n')}\n`);
}
