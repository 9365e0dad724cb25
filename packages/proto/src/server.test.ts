import { Metadata, status } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { callUnary, createClient } from './client.ts';
import { JobServiceService, JobServiceClient, JobState } from './generated/dinofleet/v1/jobs.ts';
import type { SubmitJobRequest, SubmitJobResponse } from './generated/dinofleet/v1/jobs.ts';
import {
  HealthClient,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from './generated/grpc/health/v1/health.ts';
import { GrpcServer, serviceNameOf } from './server.ts';
import { delay, disposable, jobServiceStub } from './test-fixtures.ts';
import { unaryHandler } from './handlers.ts';

const JOB_SERVICE = 'dinofleet.v1.JobService';

describe('GrpcServer health service', () => {
  it('reports SERVING / NOT_SERVING as setServing says, and NOT_FOUND for unknown services', async () => {
    await using server = new GrpcServer().addService(JobServiceService, jobServiceStub());
    const { address } = await server.start();
    using health = disposable(createClient(HealthClient, address));

    const check = (service: string) => callUnary(health, 'check', { service }, { deadlineMs: 2000 });
    expect((await check('')).status).toBe(ServingStatus.SERVING);
    expect((await check(JOB_SERVICE)).status).toBe(ServingStatus.SERVING);

    server.setServing(JOB_SERVICE, false);
    expect((await check(JOB_SERVICE)).status).toBe(ServingStatus.NOT_SERVING);
    server.setServing(JOB_SERVICE, true);
    expect((await check(JOB_SERVICE)).status).toBe(ServingStatus.SERVING);

    await expect(check('dinofleet.v1.Nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('streams status changes to Watch and ends the watch on close', async () => {
    const server = new GrpcServer().addService(JobServiceService, jobServiceStub());
    const { address } = await server.start();
    using health = disposable(createClient(HealthClient, address));
    const seen: ServingStatus[] = [];
    const watch = health.watch({ service: JOB_SERVICE }, new Metadata(), { deadline: Date.now() + 5000 });
    const ended = new Promise<void>((resolve, reject) => {
      watch.on('data', (m: { status: ServingStatus }) => seen.push(m.status));
      watch.on('end', resolve);
      watch.on('error', reject);
    });
    await delay(50);
    server.setServing(JOB_SERVICE, false);
    await delay(50);
    await server.close(2000);
    await ended;
    expect(seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
  });

  it('derives service names from generated definitions', () => {
    expect(serviceNameOf(JobServiceService)).toBe(JOB_SERVICE);
  });
});

describe('GrpcServer errors and deadlines', () => {
  it('sends a thrown InvalidArgumentError as INVALID_ARGUMENT with its message', async () => {
    const { InvalidArgumentError } = await import('./errors.ts');
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        submitJob: unaryHandler<SubmitJobRequest, SubmitJobResponse>(() =>
          Promise.reject(new InvalidArgumentError('spec.train.global_batch must be >= 1, got 0')),
        ),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));

    // The raw wire status, as any gRPC client in any language sees it.
    const raw = await new Promise<ServiceError | null>((resolve) => {
      jobs.submitJob({ spec: 'x', idempotencyKey: '' }, new Metadata(), { deadline: Date.now() + 2000 }, (err) =>
        resolve(err),
      );
    });
    expect(raw?.code).toBe(status.INVALID_ARGUMENT);
    expect(raw?.details).toBe('spec.train.global_batch must be >= 1, got 0');

    // The typed error callUnary gives back.
    const err = await callUnary(jobs, 'submitJob', { spec: 'x', idempotencyKey: '' }, { deadlineMs: 2000 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: 'spec.train.global_batch must be >= 1, got 0' });
  });

  it('turns an unknown thrown error into INTERNAL without its message, and reports it', async () => {
    const reported: unknown[] = [];
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        getJob: unaryHandler(() => Promise.reject(new TypeError('secret /etc/path detail')), {
          onInternalError: (err) => reported.push(err),
        }),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const err = await callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 2000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INTERNAL', name: 'InternalError' });
    expect((err as Error).message).not.toContain('secret');
    expect(reported).toHaveLength(1);
    expect((reported[0] as Error).message).toBe('secret /etc/path detail');
  });

  it('answers a successful call', async () => {
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        submitJob: unaryHandler((req: SubmitJobRequest) =>
          Promise.resolve({ jobId: `job-${req.idempotencyKey}`, state: JobState.JOB_STATE_QUEUED, created: true }),
        ),
      }),
    );
    const { address, port } = await server.start();
    expect(port).toBeGreaterThan(0);
    using jobs = disposable(createClient(JobServiceClient, address));
    const res = await callUnary(jobs, 'submitJob', { spec: 'a: 1', idempotencyKey: 'k1' }, { deadlineMs: 2000 });
    expect(res).toEqual({ jobId: 'job-k1', state: JobState.JOB_STATE_QUEUED, created: true });
  });

  it('fails a call to a handler that never answers with DEADLINE_EXCEEDED after about the deadline', async () => {
    await using server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({ getJob: () => undefined }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    // Connect first so the measured time is the call's, not the connection's.
    await callUnary(jobs, 'listJobs', { pageSize: 0, pageToken: '', states: [] }, { deadlineMs: 2000 }).catch(
      () => undefined,
    );
    const started = performance.now();
    const err = await callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 300 }).catch((e: unknown) => e);
    const elapsedMs = performance.now() - started;
    expect(err).toMatchObject({ code: 'DEADLINE_EXCEEDED' });
    expect(elapsedMs).toBeGreaterThanOrEqual(290);
    expect(elapsedMs).toBeLessThan(1500);
  });
});

describe('GrpcServer lifecycle', () => {
  it('drains an in-flight call on close(), and close() is idempotent', async () => {
    const server = new GrpcServer().addService(
      JobServiceService,
      jobServiceStub({
        getJob: unaryHandler(async () => {
          await delay(300);
          return { job: undefined };
        }),
      }),
    );
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const inFlight = callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 5000 });
    await delay(50); // the call has reached the handler
    const first = server.close(5000);
    const second = server.close(5000);
    expect(second).toBe(first);
    await expect(inFlight).resolves.toEqual({});
    await first;
    await server.close(); // after completion too
    await expect(server.start()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    // New calls are refused once closed.
    await expect(callUnary(jobs, 'getJob', { jobId: 'j-2' }, { deadlineMs: 1000 })).rejects.toMatchObject({
      code: 'UNAVAILABLE',
    });
  });

  it('cancels calls still running when the grace period ends', async () => {
    const server = new GrpcServer().addService(JobServiceService, jobServiceStub({ getJob: () => undefined }));
    const { address } = await server.start();
    using jobs = disposable(createClient(JobServiceClient, address));
    const inFlight = callUnary(jobs, 'getJob', { jobId: 'j-1' }, { deadlineMs: 10_000 }).catch((e: unknown) => e);
    await delay(50);
    const started = performance.now();
    await server.close(200);
    expect(performance.now() - started).toBeLessThan(1500);
    const err = await inFlight;
    expect(['CANCELLED', 'UNAVAILABLE', 'INTERNAL']).toContain((err as { code: string }).code);
  });

  it('closes a server that never started', async () => {
    const server = new GrpcServer();
    await server.close(100);
    await server.close(100);
  });
});
