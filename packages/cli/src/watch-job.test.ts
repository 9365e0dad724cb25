import { createClient, JobEvent_Severity, JobServiceClient } from '@dinofleet/proto';
import type { WatchJobResponse } from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';

import { CliError } from './cli-error.ts';
import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';
import { fakeJob, fakeProgress, JobState, progressMessage, startFakeJobService, stateMessage } from './testing/fake-job-service.ts';
import { formatDuration, formatProgressLine, watchJob } from './watch-job.ts';

const { JOB_STATE_UNSPECIFIED: NONE, JOB_STATE_RUNNING: RUNNING, JOB_STATE_SUCCEEDED, JOB_STATE_FAILED, JOB_STATE_CANCELLED } = JobState;

function endingIn(final: JobState, reason = ''): () => AsyncIterable<WatchJobResponse> {
  return async function* () {
    yield stateMessage(NONE, RUNNING);
    for (let step = 1; step <= 2; step++) yield progressMessage(fakeProgress(step, 3));
    yield {
      update: {
        $case: 'event',
        event: { atUnixMs: 0, severity: JobEvent_Severity.SEVERITY_INFO, kind: 'checkpoint_written', message: 'checkpoint at step 2', generation: 1, step: 2 },
      },
    };
    await Promise.resolve();
    yield stateMessage(RUNNING, final, reason);
  };
}

async function watchCli(address: string, jobId: string): Promise<{ code: number; stdout: string; stderr: string }> {
  await using dir = await tempDir();
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const code = await runCli(['watch', jobId, '--coordinator', address, '--insecure'], { stdout, stderr, env: {}, cwd: dir.path });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

describe('dinofleet watch', () => {
  it('prints progress and exits 0 when the job succeeds', async () => {
    await using server = await startFakeJobService({
      watch: endingIn(JOB_STATE_SUCCEEDED),
      jobs: { j1: fakeJob({ jobId: 'j1', state: JOB_STATE_SUCCEEDED, committedStep: 3, totalSteps: 3 }) },
    });
    const result = await watchCli(server.address, 'j1');
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout.split('\n')).toEqual([
      'job j1: RUNNING',
      'step 1/3   33%  101.0 img/s  loss 9.0000  lr 1.00e-4  2 ranks  ETA 4s',
      'step 2/3   67%  102.0 img/s  loss 8.0000  lr 1.00e-4  2 ranks  ETA 2s',
      '[info] checkpoint_written: checkpoint at step 2 (generation 1, step 2)',
      'job j1: RUNNING -> SUCCEEDED',
      'job j1: SUCCEEDED at step 3/3',
      '',
    ]);
    expect(server.watchRequests).toEqual([{ jobId: 'j1', sinceStep: 0 }]);
  });

  it('exits 1 and prints the error when the job fails', async () => {
    const error = 'state hash mismatch at step 2: rank 0 3fa2, rank 1 9b01';
    await using server = await startFakeJobService({
      watch: endingIn(JOB_STATE_FAILED, error),
      jobs: { j2: fakeJob({ jobId: 'j2', state: JOB_STATE_FAILED, committedStep: 2, totalSteps: 3, error }) },
    });
    const result = await watchCli(server.address, 'j2');
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`error: job j2: FAILED at step 2/3: ${error}\n`);
    expect(result.stdout).toContain(`job j2: RUNNING -> FAILED: ${error}`);
  });

  it('exits 3 when the job is cancelled', async () => {
    await using server = await startFakeJobService({
      watch: endingIn(JOB_STATE_CANCELLED, 'cancelled: enough'),
      jobs: { j3: fakeJob({ jobId: 'j3', state: JOB_STATE_CANCELLED, committedStep: 2, error: 'cancelled: enough' }) },
    });
    const result = await watchCli(server.address, 'j3');
    expect(result.code).toBe(3);
    expect(result.stdout).toContain('job j3: CANCELLED at step 2/3: cancelled: enough');
  });

  it('prints a gRPC error as `error: STATUS: message` and exits 1', async () => {
    await using server = await startFakeJobService({});
    const result = await watchCli(server.address, 'nope');
    expect(result.code).toBe(1);
    expect(result.stderr).toBe('error: NOT_FOUND: job nope does not exist\n');
  });

  it('reconnects with since_step when the stream deadline passes, showing each step once', async () => {
    await using server = await startFakeJobService({
      watch: async function* (request, call, signal) {
        yield stateMessage(NONE, RUNNING);
        if (call === 0) {
          yield progressMessage(fakeProgress(1, 3));
          yield progressMessage(fakeProgress(2, 3));
          // Then nothing until the client's deadline ends the call.
          await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
          return;
        }
        for (let step = request.sinceStep + 1; step <= 3; step++) yield progressMessage(fakeProgress(step, 3));
        yield stateMessage(RUNNING, JOB_STATE_SUCCEEDED);
      },
      jobs: { j4: fakeJob({ jobId: 'j4', state: JOB_STATE_SUCCEEDED, committedStep: 3 }) },
    });
    const client = createClient(JobServiceClient, server.address);
    try {
      const out = new CapturedOutput();
      const job = await watchJob(client, 'j4', { out, streamDeadlineMs: 400 });
      expect(job.state).toBe(JOB_STATE_SUCCEEDED);
      expect(server.watchRequests).toEqual([
        { jobId: 'j4', sinceStep: 0 },
        { jobId: 'j4', sinceStep: 2 },
      ]);
      const lines = out.text.split('\n');
      expect(lines.filter((line) => line.startsWith('step ')).map((line) => line.split('  ')[0])).toEqual(['step 1/3', 'step 2/3', 'step 3/3']);
      expect(lines.filter((line) => line === 'job j4: RUNNING')).toHaveLength(1);
    } finally {
      client.close();
    }
  });

  it('redraws one progress line on a terminal', async () => {
    await using server = await startFakeJobService({
      watch: endingIn(JOB_STATE_SUCCEEDED),
      jobs: { j5: fakeJob({ jobId: 'j5', state: JOB_STATE_SUCCEEDED, committedStep: 3 }) },
    });
    const client = createClient(JobServiceClient, server.address);
    try {
      const out = new CapturedOutput(true);
      await watchJob(client, 'j5', { out });
      expect(out.text).toContain('\r\x1b[2Kstep 2/3  [################--------]   67%');
      // Lines printed while a progress line is shown go above it and redraw it.
      expect(out.text).toContain('\r\x1b[2K[info] checkpoint_written: checkpoint at step 2 (generation 1, step 2)\nstep 2/3  [');
      expect(out.text.endsWith('\n')).toBe(true);
    } finally {
      client.close();
    }
  });

  it('stops with exit code 130 when its signal aborts', async () => {
    await using server = await startFakeJobService({
      watch: async function* (_request, _call, signal) {
        yield stateMessage(NONE, RUNNING);
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      },
    });
    const client = createClient(JobServiceClient, server.address);
    try {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 200);
      const error = await watchJob(client, 'j6', { out: new CapturedOutput(), signal: controller.signal }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CliError);
      expect((error as CliError).exitCode).toBe(130);
    } finally {
      client.close();
    }
  });
});

describe('dinofleet submit against a server', () => {
  it('sends the spec as written, prints the job id, and with --watch exits like watch', async () => {
    const { VALID_SPEC } = await import('./testing/capture.ts');
    await using server = await startFakeJobService({
      submit: () => ({ jobId: 'fmnist-test-abcdefgh', state: JobState.JOB_STATE_QUEUED, created: true }),
      watch: endingIn(JOB_STATE_FAILED, 'boom'),
      jobs: { 'fmnist-test-abcdefgh': fakeJob({ jobId: 'fmnist-test-abcdefgh', state: JOB_STATE_FAILED, error: 'boom' }) },
    });
    await using dir = await tempDir();
    const { writeFile } = await import('node:fs/promises');
    await writeFile(`${dir.path}/job.yaml`, VALID_SPEC);
    const stdout = new CapturedOutput();
    const stderr = new CapturedOutput();
    const env = { DINOFLEET_COORDINATOR: server.address, DINOFLEET_TOKEN: 'dft_ignored-because-plaintext-xxxxxxxxxxxxxxxxxxx' };
    const code = await runCli(['submit', '-f', 'job.yaml', '--idempotency-key', 'k1', '--watch', '--insecure'], { stdout, stderr, env, cwd: dir.path });
    expect(server.submitRequests).toEqual([{ spec: VALID_SPEC, idempotencyKey: 'k1' }]);
    // Plaintext: the token in the environment is not even looked at, let alone sent.
    expect(server.authorizationSent.length).toBeGreaterThan(0);
    expect(server.authorizationSent.every((sent) => !sent)).toBe(true);
    expect(stdout.text.split('\n')[0]).toBe('fmnist-test-abcdefgh');
    expect(code).toBe(1);
    expect(stderr.text).toBe('error: job fmnist-test-abcdefgh: FAILED at step 0/3: boom\n');
  });
});

describe('progress formatting', () => {
  it('shows step, percent, throughput, loss, lr and ETA', () => {
    const line = formatProgressLine(fakeProgress(12, 100, { imagesPerSecond: 34.49, losses: { total: 7.12345 }, lr: 0.00012, etaSeconds: 65, worldSize: 0 }));
    expect(line).toBe('step 12/100   12%  34.5 img/s  loss 7.1235  lr 1.20e-4  ETA 1m05s');
    expect(formatProgressLine(fakeProgress(50, 100), { bar: true })).toContain('[############------------]   50%');
  });

  it('formats durations', () => {
    expect([formatDuration(-1), formatDuration(42), formatDuration(65), formatDuration(3725)]).toEqual(['?', '42s', '1m05s', '1h02m']);
  });
});
