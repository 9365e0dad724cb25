// `npm run bench -- chaos [--seed 1] [--images 3072] [--batch-size 24] [--workers 3] [--kills 10]`
// One job over one epoch of a Fashion-MNIST manifest while a seeded schedule SIGKILLs
// workers, scales up and down, and kills the coordinator and teacher-sync. Targets:
// samples_lost = 0, samples_duplicated = 0, recovery_p50_s <= 3, join_p50_s <= 10,
// longest_stall_s <= 30, job_state "succeeded".
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { log, median, report } from '../lib/report.ts';
import { runChaos } from './chaos.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    images: { type: 'string', default: '3072' },
    'batch-size': { type: 'string', default: '24' },
    workers: { type: 'string', default: '3' },
    kills: { type: 'string', default: '10' },
  },
});
const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-chaos-'));
log(`process logs: ${logDir}`);
const result = await runChaos({
  seed: Number(values.seed),
  images: Number(values.images),
  globalBatchSize: Number(values['batch-size']),
  workers: Number(values.workers),
  kills: Number(values.kills),
  logDir,
  log,
});
const round = (x: number): number => Number(x.toFixed(2));
const p50 = (xs: readonly number[]): number => (xs.length === 0 ? Number.NaN : round(median(xs)));
log(`recoveries (s): ${result.recoveriesS.map(round).join(', ')}`);
log(`joins (s): ${result.joinsS.map(round).join(', ')}; service recoveries (s): ${JSON.stringify(result.serviceRecoveriesS)}`);
const met =
  result.samplesLost === 0 &&
  result.samplesDuplicated === 0 &&
  p50(result.recoveriesS) <= 3 &&
  p50(result.joinsS) <= 10 &&
  result.longestStallS <= 30 &&
  result.jobState === 'succeeded' &&
  result.kills >= 10 &&
  result.epochs >= 1;
report({
  kills: result.kills,
  scale_events: result.scaleEvents,
  service_kills: result.serviceKills,
  recovery_p50_s: p50(result.recoveriesS),
  recovery_max_s: result.recoveriesS.length === 0 ? Number.NaN : round(Math.max(...result.recoveriesS)),
  join_p50_s: p50(result.joinsS),
  coordinator_recovery_s: round(result.serviceRecoveriesS['coordinator'] ?? Number.NaN),
  teacher_sync_recovery_s: round(result.serviceRecoveriesS['teacher-sync'] ?? Number.NaN),
  samples_lost: result.samplesLost,
  samples_duplicated: result.samplesDuplicated,
  samples_committed: result.samplesCommitted,
  epochs_complete: result.epochs,
  longest_stall_s: round(result.longestStallS),
  steps: result.steps,
  generations: result.generations,
  seconds: round(result.seconds),
  job_state: result.jobState,
  ...(result.error !== '' && { error: result.error }),
  met,
});
