// `npm run bench -- security [--fuzz-cases 10000] [--seed 1]`
// Starts a secure local fleet (mutual TLS, API tokens), trains a short job on it, then
// attacks it from outside: plaintext connections, no token and unknown tokens, tokens used
// beyond their scope, a rogue worker with a certificate of another CA (as a client of every
// port and as a real worker process), oversized messages, and a fuzz corpus of request
// messages (typed and raw bytes) against the live coordinator. Finally it scans everything
// the fleet printed (log files, every /metrics page, the job records, the messages the
// attacks got back) for the fleet's secrets: API tokens, the S3 secret key, private keys.
// Target: every attack refused, crashes 0, secrets_leaked 0.
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { startLocalFleet, uploadFashionMnist } from '@dinofleet/local';
import { callUnary, createClient, JobServiceClient, JobState } from '@dinofleet/proto';
import { log, report } from '../lib/report.ts';
import { findLeaks, fleetOutputs, fleetSecrets, runSecurityProbes } from './security.ts';

const { values } = parseArgs({
  options: {
    'fuzz-cases': { type: 'string', default: '10000' },
    seed: { type: 'string', default: '1' },
  },
});
const workDir = await mkdtemp(join(tmpdir(), 'dinofleet-security-'));
const logDir = join(workDir, 'logs');
log(`work directory: ${workDir}`);
const started = Date.now();
const fleet = await startLocalFleet({ workers: 2, backend: 'wasm', logDir });
try {
  // A short real job first, so the logs hold a run's worth of output.
  const s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
  const { manifestUri } = await uploadFashionMnist(s3, { bucket: 'security-bench', split: 'train', limit: 64 });
  s3.destroy();
  const jobs = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions('submit'));
  const spec = {
    apiVersion: 'dinofleet/v1',
    kind: 'TrainingJob',
    metadata: { name: 'security-bench' },
    spec: {
      recipe: { preset: 'dino', overrides: { crops: { nLocal: 1 } } },
      data: { manifest: manifestUri },
      training: { steps: 4, globalBatchSize: 8 },
      fleet: { workers: 2 },
    },
  };
  const { jobId } = await callUnary(jobs, 'submitJob', { spec: JSON.stringify(spec), idempotencyKey: '' }, { deadlineMs: 30_000 });
  let job = (await callUnary(jobs, 'getJob', { jobId }, { deadlineMs: 10_000 })).job;
  while (job !== undefined && job.finishedAtUnixMs === 0 && Date.now() - started < 300_000) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    job = (await callUnary(jobs, 'getJob', { jobId }, { deadlineMs: 10_000 })).job;
  }
  jobs.close();
  const trained = job === undefined ? 'missing' : JobState[job.state];
  log(`training job ${jobId}: ${trained}${job?.error ? ` (${job.error})` : ''}`);

  const result = await runSecurityProbes(fleet, { workDir, fuzzCases: Number(values['fuzz-cases']), seed: Number(values.seed), log });
  const secrets = await fleetSecrets(fleet, [join(workDir, 'rogue-tls')]);
  const outputs = [...(await fleetOutputs(fleet, logDir)), { where: 'messages the attacks got back', text: result.messages.join('\n') }];
  const leaks = findLeaks(secrets, outputs);
  for (const leak of leaks) log(`LEAK: ${leak.secret} in ${leak.where}`);
  for (const example of result.crashExamples) log(`crash: ${example}`);
  log(`scanned ${outputs.length} outputs (${Math.round(outputs.reduce((n, o) => n + o.text.length, 0) / 1024)} KiB) for ${secrets.length} secrets`);
  const met =
    result.plaintextRefused &&
    result.unauthenticatedRefused &&
    result.wrongScopeRefused &&
    result.rogueWorkerRefused &&
    result.oversizedRefused &&
    result.crashes === 0 &&
    leaks.length === 0 &&
    trained === 'JOB_STATE_SUCCEEDED';
  report({
    plaintext_refused: result.plaintextRefused,
    unauthenticated_refused: result.unauthenticatedRefused,
    wrong_scope_refused: result.wrongScopeRefused,
    rogue_worker_refused: result.rogueWorkerRefused,
    oversized_refused: result.oversizedRefused,
    fuzz_cases: result.fuzzCases,
    crashes: result.crashes,
    secrets_leaked: leaks.length,
    secrets_checked: secrets.length,
    outputs_scanned: outputs.length,
    training_job: trained.replace('JOB_STATE_', '').toLowerCase(),
    seconds: Math.round((Date.now() - started) / 1000),
    met,
  });
} finally {
  await fleet.stop();
}
