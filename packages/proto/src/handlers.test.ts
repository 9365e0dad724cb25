import { Metadata } from '@grpc/grpc-js';
import type { ClientReadableStream } from '@grpc/grpc-js';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { callUnary, createClient } from './client.ts';
import { FailedPreconditionError, fromServiceError } from './errors.ts';
import { JobServiceClient, JobServiceService, JobState } from './generated/dinofleet/v1/jobs.ts';
import type { GetJobResponse, WatchJobRequest, WatchJobResponse } from './generated/dinofleet/v1/jobs.ts';
import type { UnaryMethodName, UnaryResponse } from './client.ts';
import { serverStreamHandler } from './handlers.ts';
import { GrpcServer } from './server.ts';
import { delay, disposable, jobServiceStub } from './test-fixtures.ts';

function progress(step: number): WatchJobResponse {
  return {
    update: {
      $case: 'progress',
      progress: {
        step,
        totalSteps: 3,
        epoch: 0,
        generation: 1,
        worldSize: 2,
        imagesPerSecond: 10.5,
        losses: { dino: 10.25 - step },
        lr: 5e-4,
        etaSeconds: 3 - step,
        committedAtUnixMs: 1_700_000_000_000 + step,
      },
    },
  };
}

async function collect(stream: ClientReadableStream<WatchJobResponse>): Promise<WatchJobResponse[]> {
  const messages: WatchJobResponse[] = [];
  for await (const message of stream) messages.push(message as WatchJobResponse);
  return messages;
}

describe('serverStreamHandler', () => {
  it('streams everything the generator yields, then ends OK', async () => {
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        watchJob: serverStreamHandler(async function* (req: WatchJobRequest) {
          for (let step = req.sinceStep + 1; step <= 3; step++) {
            await delay(1);
            yield progress(step);
          }
          yield { update: { $case: 'state', state: { from: 3, to: 4, reason: '', atUnixMs: 1 } } };
        }),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const messages = await collect(jobs.watchJob({ jobId: 'j', sinceStep: 1 }, new Metadata(), { deadline: Date.now() + 5000 }));
    expect(messages).toEqual([
      progress(2),
      progress(3),
      { update: { $case: 'state', state: { from: JobState.JOB_STATE_RUNNING, to: JobState.JOB_STATE_SUCCEEDED, reason: '', atUnixMs: 1 } } },
    ]);
  });

  it('ends the stream with the mapped status when the generator throws', async () => {
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        watchJob: serverStreamHandler(async function* () {
          yield progress(1);
          await delay(1);
          throw new FailedPreconditionError('job j is not running');
        }),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const seen: WatchJobResponse[] = [];
    const stream = jobs.watchJob({ jobId: 'j', sinceStep: 0 }, new Metadata(), { deadline: Date.now() + 5000 });
    const err = await (async () => {
      for await (const m of stream) seen.push(m as WatchJobResponse);
    })().catch((e: unknown) => fromServiceError(e));
    expect(seen).toEqual([progress(1)]);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect(err).toMatchObject({ message: 'job j is not running' });
  });

  it('aborts and finalizes the generator when the client cancels', async () => {
    let finalized = false;
    let aborted = false;
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        watchJob: serverStreamHandler(async function* (_req, signal) {
          try {
            for (let step = 1; !signal.aborted; step++) {
              yield progress(step);
              await delay(5);
            }
            aborted = signal.aborted;
          } finally {
            finalized = true;
          }
        }),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const stream = jobs.watchJob({ jobId: 'j', sinceStep: 0 }, new Metadata(), { deadline: Date.now() + 5000 });
    stream.on('error', () => undefined); // the client's own CANCELLED
    await new Promise<void>((resolve) => stream.once('data', () => resolve()));
    stream.cancel();
    for (let i = 0; i < 100 && !finalized; i++) await delay(10);
    expect(finalized).toBe(true);
    expect(aborted).toBe(true);
  });
});

describe('callUnary typing', () => {
  it('accepts only unary method names', async () => {
    await using server = new GrpcServer();
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    // @ts-expect-error watchJob is server-streaming, not unary
    const wrong = () => callUnary(jobs, 'watchJob', { jobId: 'j', sinceStep: 0 }, { deadlineMs: 10 });
    expect(typeof wrong).toBe('function');
    // @ts-expect-error jobId is a string
    const wrongRequest = () => callUnary(jobs, 'getJob', { jobId: 1 }, { deadlineMs: 10 });
    expect(typeof wrongRequest).toBe('function');
    expectTypeOf<UnaryMethodName<JobServiceClient>>().toEqualTypeOf<
      'submitJob' | 'getJob' | 'listJobs' | 'scaleJob' | 'cancelJob'
    >();
    expectTypeOf<UnaryResponse<JobServiceClient, 'getJob'>>().toEqualTypeOf<GetJobResponse>();
    // JobService is not registered on this server: UNIMPLEMENTED reaches the caller typed.
    await expect(callUnary(jobs, 'getJob', { jobId: 'j' }, { deadlineMs: 2000 })).rejects.toMatchObject({
      code: 'UNIMPLEMENTED',
      name: 'UnimplementedError',
    });
  });
});
