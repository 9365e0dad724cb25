/**
 * A JobService on 127.0.0.1:0 whose answers a test scripts; with `security` it serves TLS
 * (client certificates requested, not required) and checks bearer tokens and scopes as the
 * coordinator does.
 */
import {
  ANONYMOUS_ADMIN,
  ApiTokenAuthenticator,
  GrpcServer,
  JobServiceService,
  JobState,
  NotFoundError,
  requireScope,
  serverCredentials,
  serverStreamHandler,
  unaryHandler,
  UnimplementedError,
} from '@dinofleet/proto';
import type { Metadata } from '@grpc/grpc-js';
import type {
  ApiCaller,
  ApiScope,
  ApiTokenEntry,
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
  TransportSecurity,
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

/** How the fake secures its port. */
export interface FakeJobServiceSecurity {
  /** Server TLS (`clientCertificate: 'request'`, as the coordinator). @default insecure */
  readonly security?: TransportSecurity;
  /** Tokens it accepts; every call then needs one of the method's scope. @default none: every caller is admin */
  readonly tokens?: readonly ApiTokenEntry[];
}

/** A running fake and what it was asked. */
export interface FakeJobService extends AsyncDisposable {
  readonly address: string;
  readonly watchRequests: WatchJobRequest[];
  readonly submitRequests: SubmitJobRequest[];
  /** Who called, in order (the token's name and scope). */
  readonly callers: ApiCaller[];
  /** Per call, in order: whether it carried an authorization header. */
  readonly authorizationSent: boolean[];
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
export async function startFakeJobService(script: FakeJobServiceScript, secured: FakeJobServiceSecurity = {}): Promise<FakeJobService> {
  const watchRequests: WatchJobRequest[] = [];
  const submitRequests: SubmitJobRequest[] = [];
  const callers: ApiCaller[] = [];
  const authorizationSent: boolean[] = [];
  const authenticator = secured.tokens !== undefined ? new ApiTokenAuthenticator(secured.tokens) : undefined;
  const authorize = (metadata: Metadata, scope: ApiScope, method: string): void => {
    authorizationSent.push(metadata.get('authorization').length > 0);
    const caller = authenticator?.authenticate(metadata) ?? ANONYMOUS_ADMIN;
    requireScope(caller, scope, method);
    callers.push(caller);
  };
  const scripted = <Req, Res>(name: string, scope: ApiScope, answer: ((request: Req) => Res) | undefined) =>
    unaryHandler<Req, Res>(async (request, call) => {
      await Promise.resolve();
      authorize(call.metadata, scope, name);
      if (answer === undefined) throw new UnimplementedError(`${name} is not scripted`);
      return answer(request);
    });
  const implementation: JobServiceServer = {
    submitJob: unaryHandler(async (request: SubmitJobRequest, call) => {
      authorize(call.metadata, 'submit', 'SubmitJob');
      submitRequests.push(request);
      if (script.submit === undefined) throw new UnimplementedError('submitJob is not scripted');
      return Promise.resolve(script.submit(request));
    }),
    getJob: unaryHandler(async (request: { jobId: string }, call) => {
      authorize(call.metadata, 'read', 'GetJob');
      const job = script.jobs?.[request.jobId];
      if (job === undefined) throw new NotFoundError(`job ${request.jobId} does not exist`);
      return Promise.resolve({ job });
    }),
    listJobs: scripted('ListJobs', 'read', script.list),
    watchJob: serverStreamHandler((request: WatchJobRequest, signal, stream) => {
      authorize(stream.metadata, 'read', 'WatchJob');
      const call = watchRequests.length;
      watchRequests.push(request);
      if (script.watch === undefined) throw new NotFoundError(`job ${request.jobId} does not exist`);
      return script.watch(request, call, signal);
    }),
    scaleJob: scripted('ScaleJob', 'admin', script.scale),
    cancelJob: scripted('CancelJob', 'admin', script.cancel),
  };
  const server = new GrpcServer(secured.security !== undefined ? { credentials: serverCredentials(secured.security, { clientCertificate: 'request' }) } : {});
  server.addService(JobServiceService, implementation);
  const { address } = await server.start();
  return { address, watchRequests, submitRequests, callers, authorizationSent, [Symbol.asyncDispose]: () => server.close(100) };
}

export { JobState };
