/** A JobService on 127.0.0.1:0 whose answers a test scripts. */
import {
  GrpcServer,
  JobServiceService,
  JobState,
  NotFoundError,
  serverStreamHandler,
  unaryHandler,
  UnimplementedError,
} from '@dinofleet/proto';
import type {
  CancelJobRequest,
  CancelJobResponse,
  Job,
  JobProgress,
  JobServiceServer,
  ListJobsRequest,
  ListJobsResponse,
  ScaleJobRequest,
  ScaleJobResponse,
  SubmitJobRequest,
  SubmitJobResponse,
  WatchJobRequest,
  WatchJobResponse,
} from '@dinofleet/proto';

/** What the fake answers. */
export interface FakeJobServiceScript {
  /** Jobs by id for GetJob. */
  readonly jobs?: Readonly<Record<string, Job>>;
  /** WatchJob: the messages of call number `call` (0-based). */
  readonly watch?: (request: WatchJobRequest, call: number, signal: AbortSignal) => AsyncIterable<WatchJobResponse>;
  /** SubmitJob. */
  readonly submit?: (request: SubmitJobRequest) => SubmitJobResponse;
  /** ListJobs. */
  readonly list?: (request: ListJobsRequest) => ListJobsResponse;
  /** CancelJob. */
  readonly cancel?: (request: CancelJobRequest) => CancelJobResponse;
  /** ScaleJob. */
  readonly scale?: (request: ScaleJobRequest) => ScaleJobResponse;
}

/** A running fake and what it was asked. */
export interface FakeJobService extends AsyncDisposable {
  readonly address: string;
  readonly watchRequests: WatchJobRequest[];
  readonly submitRequests: SubmitJobRequest[];
}

/** A job record with defaults. */
export function fakeJob(fields: Partial<Job> & Pick<Job, 'jobId' | 'state'>): Job {
  return {
    name: '',
    spec: '',
    workersDesired: 1,
    workersActive: 0,
    generation: 1,
    committedStep: 0,
    totalSteps: 3,
    createdAtUnixMs: 0,
    startedAtUnixMs: 0,
    finishedAtUnixMs: 0,
    error: '',
    ...fields,
  };
}

/** A progress report with defaults. */
export function fakeProgress(step: number, totalSteps: number, fields: Partial<JobProgress> = {}): JobProgress {
  return {
    step,
    totalSteps,
    epoch: 0,
    generation: 1,
    worldSize: 2,
    imagesPerSecond: 100 + step,
    losses: { total: 10 - step, dino: 5 },
    lr: 1e-4,
    etaSeconds: (totalSteps - step) * 2,
    committedAtUnixMs: 0,
    ...fields,
  };
}

/** A state-change message. */
export function stateMessage(from: JobState, to: JobState, reason = ''): WatchJobResponse {
  return { update: { $case: 'state', state: { from, to, reason, atUnixMs: 0 } } };
}

/** A progress message. */
export function progressMessage(progress: JobProgress): WatchJobResponse {
  return { update: { $case: 'progress', progress } };
}

/** Starts the fake. */
export async function startFakeJobService(script: FakeJobServiceScript): Promise<FakeJobService> {
  const watchRequests: WatchJobRequest[] = [];
  const submitRequests: SubmitJobRequest[] = [];
  const scripted = <Req, Res>(name: string, answer: ((request: Req) => Res) | undefined) =>
    unaryHandler<Req, Res>(async (request) => {
      await Promise.resolve();
      if (answer === undefined) throw new UnimplementedError(`${name} is not scripted`);
      return answer(request);
    });
  const implementation: JobServiceServer = {
    submitJob: unaryHandler(async (request: SubmitJobRequest) => {
      submitRequests.push(request);
      if (script.submit === undefined) throw new UnimplementedError('submitJob is not scripted');
      return Promise.resolve(script.submit(request));
    }),
    getJob: unaryHandler(async (request: { jobId: string }) => {
      const job = script.jobs?.[request.jobId];
      if (job === undefined) throw new NotFoundError(`job ${request.jobId} does not exist`);
      return Promise.resolve({ job });
    }),
    listJobs: scripted('listJobs', script.list),
    watchJob: serverStreamHandler((request: WatchJobRequest, signal) => {
      const call = watchRequests.length;
      watchRequests.push(request);
      if (script.watch === undefined) throw new NotFoundError(`job ${request.jobId} does not exist`);
      return script.watch(request, call, signal);
    }),
    scaleJob: scripted('scaleJob', script.scale),
    cancelJob: scripted('cancelJob', script.cancel),
  };
  const server = new GrpcServer();
  server.addService(JobServiceService, implementation);
  const { address } = await server.start();
  return { address, watchRequests, submitRequests, [Symbol.asyncDispose]: () => server.close(100) };
}

export { JobState };
