import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { callUnary, createClient } from './client.ts';
import { DeadlineExceededError, InvalidArgumentError, UnavailableError } from './errors.ts';
import { JobServiceService, JobServiceClient } from './generated/dinofleet/v1/jobs.ts';
import type { GetJobRequest, GetJobResponse } from './generated/dinofleet/v1/jobs.ts';
import { unaryHandler } from './handlers.ts';
import { DEFAULT_RETRYABLE_STATUSES, backoffMs, deadlineFromNow, resolveRetryConfig, withRetry } from './retry.ts';
import { GrpcServer } from './server.ts';
import { disposable, jobServiceStub } from './test-fixtures.ts';

/** A server whose GetJob fails with `error` `failures` times, then answers. */
async function flakyServer(error: () => Error, failures: number) {
  const calls: number[] = [];
  const server = new GrpcServer().addService(
    JobServiceService,
    jobServiceStub({
      getJob: unaryHandler<GetJobRequest, GetJobResponse>(() => {
        calls.push(performance.now());
        return calls.length <= failures ? Promise.reject(error()) : Promise.resolve({ job: undefined });
      }),
    }),
  );
  const { address } = await server.start();
  return { server, address, calls };
}

describe('withRetry against a real server', () => {
  it('retries UNAVAILABLE with growing backoff, then gives up with the last error', async () => {
    const { server, address, calls } = await flakyServer(() => new UnavailableError('draining'), Infinity);
    await using _server = server;
    using jobs = disposable(createClient(JobServiceClient, address));
    const attempts: number[] = [];
    const err = await withRetry(
      ({ attempt, deadlineMs }) => {
        attempts.push(attempt);
        return callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 1000, notAfterMs: deadlineMs });
      },
      // jitter 0 makes the waits exact: 40, 80, 160 ms.
      { maxAttempts: 4, initialBackoffMs: 40, backoffMultiplier: 2, jitter: 0 },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).message).toBe('draining');
    expect(attempts).toEqual([1, 2, 3, 4]);
    expect(calls).toHaveLength(4);
    const gaps = calls.slice(1).map((t, i) => t - (calls[i] ?? 0));
    [40, 80, 160].forEach((waitMs, i) => expect(gaps[i]).toBeGreaterThanOrEqual(waitMs - 5));
  });

  it('succeeds once the server recovers', async () => {
    const { server, address, calls } = await flakyServer(() => new UnavailableError('starting'), 2);
    await using _server = server;
    using jobs = disposable(createClient(JobServiceClient, address));
    const res = await withRetry(() => callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 1000 }), {
      initialBackoffMs: 10,
    });
    expect(res).toEqual({});
    expect(calls).toHaveLength(3);
  });

  it('does not retry INVALID_ARGUMENT', async () => {
    const { server, address, calls } = await flakyServer(() => new InvalidArgumentError('bad job id'), Infinity);
    await using _server = server;
    using jobs = disposable(createClient(JobServiceClient, address));
    const err = await withRetry(() => callUnary(jobs, 'getJob', { jobId: '' }, { deadlineMs: 1000 }), {
      initialBackoffMs: 10,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(calls).toHaveLength(1);
  });

  it('retries a server that is not listening (connection refused is UNAVAILABLE)', async () => {
    const server = new GrpcServer();
    const { address } = await server.start();
    await server.close(0);
    using jobs = disposable(createClient(JobServiceClient, address));
    let attempts = 0;
    const err = await withRetry(
      () => {
        attempts++;
        return callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 1000 });
      },
      { maxAttempts: 3, initialBackoffMs: 10 },
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    expect(attempts).toBe(3);
  });
});

describe('retry policy', () => {
  it('retries only UNAVAILABLE by default', () => {
    expect([...DEFAULT_RETRYABLE_STATUSES]).toEqual([status.UNAVAILABLE]);
  });

  it('stops before a wait that would pass the overall deadline', async () => {
    let attempts = 0;
    const started = Date.now();
    const err = await withRetry(
      () => {
        attempts++;
        return Promise.reject(new UnavailableError('down'));
      },
      { maxAttempts: 100, initialBackoffMs: 50, jitter: 0, deadline: deadlineFromNow(200) },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    // Waits of 50 + 100 fit in 200 ms, the next (200) does not.
    expect(attempts).toBe(3);
    expect(Date.now() - started).toBeLessThan(350); // it did not sit out the 200 ms wait
  });

  it('reports the error it retried for, not the DEADLINE_EXCEEDED of a retry the overall deadline cut short', async () => {
    const deadline = deadlineFromNow(150);
    let attempts = 0;
    const err = await withRetry(
      async ({ deadlineMs }) => {
        attempts++;
        if (attempts === 1) throw new UnavailableError('source holds step 1, not 2');
        // The second attempt runs into the overall deadline, as a gRPC call with it would.
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, deadlineMs - Date.now()) + 5));
        throw new DeadlineExceededError('Deadline exceeded after 0.000s');
      },
      { maxAttempts: 10, initialBackoffMs: 20, jitter: 0, deadline },
    ).catch((e: unknown) => e as Error);
    expect(attempts).toBe(2);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe('source holds step 1, not 2');
    // A deadline error that is the first failure is still reported as it is.
    const first = await withRetry(() => Promise.reject(new DeadlineExceededError('slow')), { deadline: deadlineFromNow(1) }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(DeadlineExceededError);
  });

  it('computes capped, jittered exponential backoff', () => {
    const config = resolveRetryConfig({ initialBackoffMs: 100, maxBackoffMs: 1000, jitter: 0.5, random: () => 1 });
    // random() = 1 takes the full jitter: half of each cap.
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffMs(n, config))).toEqual([50, 100, 200, 400, 500, 500]);
    const noJitter = resolveRetryConfig({ initialBackoffMs: 100, maxBackoffMs: 1000, jitter: 0 });
    expect([1, 2, 5].map((n) => backoffMs(n, noJitter))).toEqual([100, 200, 1000]);
  });

  it('rejects out-of-range options naming the field', () => {
    expect(() => resolveRetryConfig({ maxAttempts: 0 })).toThrow(/maxAttempts/);
    expect(() => resolveRetryConfig({ jitter: 2 })).toThrow(/jitter/);
    expect(() => resolveRetryConfig({ initialBackoffMs: 100, maxBackoffMs: 10 })).toThrow(/maxBackoffMs/);
  });

  it('stops retrying when its signal aborts', async () => {
    const controller = new AbortController();
    let attempts = 0;
    const err = withRetry(
      () => {
        attempts++;
        if (attempts === 2) controller.abort();
        return Promise.reject(new UnavailableError('down'));
      },
      { maxAttempts: 10, initialBackoffMs: 5, signal: controller.signal },
    );
    await expect(err).rejects.toBeInstanceOf(UnavailableError);
    expect(attempts).toBe(2);
  });
});
