import { InvalidArgumentError } from '@dinofleet/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';
import { fakeJob, JobState, startFakeJobService } from './testing/fake-job-service.ts';
import type { FakeJobServiceScript } from './testing/fake-job-service.ts';
import { createFleetSecurity } from './testing/fleet-security.ts';
import type { FleetSecurityFixture } from './testing/fleet-security.ts';

let fleet: FleetSecurityFixture;
beforeAll(async () => {
  fleet = await createFleetSecurity();
});
afterAll(async () => {
  await fleet[Symbol.asyncDispose]();
});

/** A fake coordinator as the real one: TLS, tokens, scopes. */
function startSecureFake(script: FakeJobServiceScript): ReturnType<typeof startFakeJobService> {
  return startFakeJobService(script, { security: fleet.security, tokens: fleet.entries });
}

/** `dinofleet <argv>` with the fleet's CA and the admin token. */
async function run(argv: string[], address: string): Promise<{ code: number; stdout: string; stderr: string }> {
  await using dir = await tempDir();
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const env = { DINOFLEET_TOKEN: fleet.tokens.admin };
  const code = await runCli([...argv, '--coordinator', address, '--tls-dir', fleet.caOnlyDir], { stdout, stderr, env, cwd: dir.path });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

describe('dinofleet jobs / cancel / scale', () => {
  it('lists every page of jobs as a table, filtered by state', async () => {
    const now = Date.now();
    await using server = await startSecureFake({
      list: (request) =>
        request.pageToken === ''
          ? {
              jobs: [fakeJob({ jobId: 'b-job', state: JobState.JOB_STATE_RUNNING, committedStep: 5, totalSteps: 100, workersActive: 2, workersDesired: 2, createdAtUnixMs: now - 65_000 })],
              nextPageToken: 'page-2',
            }
          : { jobs: [fakeJob({ jobId: 'a-job', state: JobState.JOB_STATE_FAILED, error: 'worker lost', createdAtUnixMs: now - 3_725_000 })], nextPageToken: '' },
    });
    const result = await run(['jobs', '--state', 'running,failed'], server.address);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(
      ['ID     STATE    STEP   WORKERS  AGE    ERROR', 'b-job  RUNNING  5/100  2/2      1m05s', 'a-job  FAILED   0/3    0/1      1h02m  worker lost', ''].join('\n'),
    );
  });

  it('cancels with a reason and prints the state', async () => {
    const requests: unknown[] = [];
    await using server = await startSecureFake({
      cancel: (request) => {
        requests.push(request);
        return { jobId: request.jobId, state: JobState.JOB_STATE_CANCELLED };
      },
    });
    const result = await run(['cancel', 'job-1', '--reason', 'wrong lr'], server.address);
    expect(result.code).toBe(0);
    expect(requests).toEqual([{ jobId: 'job-1', reason: 'wrong lr' }]);
    expect(result.stdout).toBe('job job-1: CANCELLED\n');
  });

  it('scales and maps INVALID_ARGUMENT to exit 2', async () => {
    await using server = await startSecureFake({
      scale: (request) => {
        if (request.workers > 8) {
          throw new InvalidArgumentError(`workers must be <= spec.fleet.maxWorkers (8), got ${request.workers}`);
        }
        return { jobId: request.jobId, workersDesired: request.workers, generation: 3 };
      },
    });
    const ok = await run(['scale', 'job-1', '4'], server.address);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe('job job-1: 4 workers desired (current generation 3; the fleet changes when the job forms its next generation)\n');
    const refused = await run(['scale', 'job-1', '9'], server.address);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe('error: INVALID_ARGUMENT: workers must be <= spec.fleet.maxWorkers (8), got 9\n');
  });
});
