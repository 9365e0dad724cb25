// `npm run bench -- equivalence [--workers 2] [--steps 6, 10 with --elastic] [--batch-size 16] [--elastic]
//   [--compression bf16|fp16] [--transport tcp|grpc]`
// A job on a local fleet (Redis, s3rver, coordinator, teacher-sync, N worker processes)
// against the one-process trainer on the same batches: the largest |Δ| over every student
// and teacher weight and the center. Target: max_abs_diff <= 1e-5. `--elastic`: the job is
// scaled up by one worker after step 2 and loses a worker (SIGKILL) after step 4; the
// reference trains on the batches that were committed. `--compression` / `--transport` set
// the job's `spec.collective` (the target applies to uncompressed runs; a compressed run
// reports how far 16-bit gradients on the wire move the weights).
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { log, report } from '../lib/report.ts';
import { runEquivalence, scaleThenKill } from './equivalence.ts';

const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '2' },
    steps: { type: 'string' },
    'batch-size': { type: 'string', default: '16' },
    elastic: { type: 'boolean', default: false },
    compression: { type: 'string' },
    transport: { type: 'string' },
  },
});
const logDir = await mkdtemp(join(tmpdir(), 'dinofleet-equivalence-'));
const result = await runEquivalence({
  workers: Number(values.workers),
  steps: Number(values.steps ?? (values.elastic ? 10 : 6)),
  globalBatchSize: Number(values['batch-size']),
  ...(values.elastic && {
    maxWorkers: Number(values.workers) + 1,
    fleetWorkers: Number(values.workers) + 1,
    during: scaleThenKill({ scaleAfter: 2, scaleTo: Number(values.workers) + 1, killAfter: 4 }),
  }),
  ...((values.compression !== undefined || values.transport !== undefined) && {
    collective: {
      ...(values.compression !== undefined && { compression: values.compression }),
      ...(values.transport !== undefined && { transport: values.transport, ...(values.transport === 'grpc' && { smallMessageBytes: 0 }) }),
    },
  }),
  logDir,
  log,
});
log(`process logs: ${logDir}`);
log(`max |Δ|: student ${result.maxAbsDiffStudent.toExponential(2)}, teacher ${result.maxAbsDiffTeacher.toExponential(2)}, center ${result.maxAbsDiffCenter.toExponential(2)} over ${result.tensorsCompared} tensors`);
report({
  workers: result.workers,
  compression: values.compression ?? 'none',
  transport: values.transport ?? 'tcp',
  steps: result.steps,
  generations: result.generations,
  final_world_size: result.finalWorldSize,
  max_abs_diff: result.maxAbsDiff,
  max_abs_diff_student: result.maxAbsDiffStudent,
  max_abs_diff_teacher: result.maxAbsDiffTeacher,
  max_abs_diff_center: result.maxAbsDiffCenter,
  max_abs_update: result.maxAbsUpdate,
  target: 1e-5,
  met: result.maxAbsDiff <= 1e-5,
  cluster_seconds: Number(result.clusterSeconds.toFixed(1)),
});
