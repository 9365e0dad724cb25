// Secure by default, against real processes (docs/security.md): a local fleet with mutual
// TLS and API tokens trains a job; plaintext, missing or unknown tokens, tokens beyond their
// scope, a rogue worker of another CA and oversized messages are all refused; a fuzz corpus
// of request messages gets clean statuses; and nothing the run printed (log files, every
// /metrics page, the job records, the CLI's output, the messages the attacks got back)
// holds a secret: API tokens, the S3 secret key, private keys.
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { S3Client } from '@aws-sdk/client-s3';
import { findLeaks, fleetOutputs, fleetSecrets, runSecurityProbes } from '@dinofleet/bench/security';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { findRepoRoot, startLocalFleet, uploadFashionMnist, type LocalFleet } from '@dinofleet/local';
import { callUnary, createClient, generateApiToken, JobServiceClient, JobState } from '@dinofleet/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTerminal, smallJobSpec, waitForJob } from './support/cluster.ts';

const run = promisify(execFile);

describe('a secure local fleet', { timeout: 300_000 }, () => {
  let fleet: LocalFleet;
  let s3: S3Client;
  let workDir: string;
  let logDir: string;
  const printed: { where: string; text: string }[] = [];

  beforeAll(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'dinofleet-itest-security-'));
    logDir = join(workDir, 'logs');
    fleet = await startLocalFleet({ workers: 2, backend: 'wasm', logDir });
    s3 = createS3Client(resolveS3Config({}, { ...process.env, ...fleet.s3Env }));
  }, 180_000);

  afterAll(async () => {
    s3?.destroy();
    await fleet?.stop();
  }, 60_000);

  it('trains a job for a caller with a submit token', async () => {
    const { manifestUri } = await uploadFashionMnist(s3, { bucket: 'itest-security', split: 'train', limit: 64 });
    const client = createClient(JobServiceClient, fleet.coordinatorAddress, fleet.clientOptions('submit'));
    try {
      const { jobId } = await callUnary(client, 'submitJob', { spec: JSON.stringify(smallJobSpec(manifestUri, { name: 'secure' })), idempotencyKey: '' }, { deadlineMs: 30_000 });
      const job = await waitForJob(client, jobId, isTerminal);
      expect(JobState[job.state], job.error).toBe('JOB_STATE_SUCCEEDED');
    } finally {
      client.close();
    }
  });

  it('refuses plaintext, missing and wrong tokens, a rogue worker and oversized messages, and survives a fuzz corpus', async () => {
    const result = await runSecurityProbes(fleet, { workDir, fuzzCases: 400, seed: 7 });
    printed.push({ where: 'messages the attacks got back', text: result.messages.join('\n') });
    for (const probe of result.probes) expect(probe.refused, `${probe.name}: ${probe.got.join(', ')}`).toBe(true);
    expect(result.plaintextRefused && result.unauthenticatedRefused && result.wrongScopeRefused && result.rogueWorkerRefused && result.oversizedRefused).toBe(true);
    expect(result.crashes, result.crashExamples.join('\n')).toBe(0);
  });

  it("prints no secret: logs, /metrics, job records, the CLI's output and error messages", async () => {
    // The CLI with a valid token and with an unknown one: neither may echo it.
    const root = findRepoRoot();
    const tsx = pathToFileURL(createRequire(join(root, 'package.json')).resolve('tsx')).href;
    const cli = async (token: string): Promise<string> => {
      const env = { ...process.env, DINOFLEET_TOKEN: token, DINOFLEET_TLS_DIR: fleet.tlsDir ?? '' };
      const result = await run(process.execPath, ['--import', tsx, join(root, 'packages/cli/src/main.ts'), '--coordinator', fleet.coordinatorAddress, 'jobs'], { env, cwd: workDir }).catch(
        (err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? '' }),
      );
      return `${result.stdout}\n${result.stderr}`;
    };
    const listed = await cli(fleet.tokens?.read ?? '');
    expect(listed).toContain('secure');
    const unknownToken = generateApiToken();
    const refused = await cli(unknownToken);
    expect(refused).toMatch(/token/i);
    expect(refused).not.toContain(unknownToken);
    printed.push({ where: 'CLI output', text: `${listed}\n${refused}` });

    const secrets = await fleetSecrets(fleet, [join(workDir, 'rogue-tls')]);
    expect(secrets.length).toBeGreaterThanOrEqual(6);
    const outputs = [...(await fleetOutputs(fleet, logDir)), ...printed];
    // The scan covers the run: every service's log, and every /metrics page.
    expect(outputs.some((o) => o.where.endsWith('coordinator.log') && o.text.length > 0)).toBe(true);
    expect(outputs.filter((o) => o.where.endsWith('/metrics')).length).toBeGreaterThanOrEqual(4);
    expect(findLeaks(secrets, outputs)).toEqual([]);
    // And the scan works: a log line holding a token would be found.
    expect(findLeaks(secrets, [{ where: 'planted', text: `oops ${fleet.tokens?.admin ?? ''}` }])).toHaveLength(1);
  });
});
