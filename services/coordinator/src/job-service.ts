/**
 * JobService: SubmitJob, GetJob, ListJobs, WatchJob, ScaleJob, CancelJob, exactly as
 * docs/cluster.md "Job lifecycle" says. Every call is authenticated by its bearer token
 * (docs/security.md) and needs a scope: read for GetJob, ListJobs and WatchJob, submit for
 * SubmitJob, admin for ScaleJob and CancelJob.
 */
import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Queue } from 'bullmq';
import { JobSpecError, parseJobSpec, parseS3Uri } from '@dinofleet/config';
import {
  ANONYMOUS_ADMIN,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  requireScope,
  ResourceExhaustedError,
  serverStreamHandler,
  UnavailableError,
  unaryHandler,
} from '@dinofleet/proto';
import type { Metadata } from '@grpc/grpc-js';
import type {
  ApiCaller,
  ApiScope,
  ApiTokenAuthenticator,
  CancelJobRequest,
  CancelJobResponse,
  GetJobRequest,
  GetJobResponse,
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
import { JobState } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import { DEFAULT_MAX_QUEUED_JOBS_PER_CALLER, DEFAULT_MAX_SPEC_BYTES } from './coordinator-config.ts';
import { jobStateName, jobStateOf, Severity, TERMINAL_STATES, toWireJob } from './job-store.ts';
import type { JobRecord, JobStateName, JobStore } from './job-store.ts';
import { specFormat } from './job-runner.ts';
import { checkManifest } from './manifest-check.ts';

/** Longest idempotency key accepted, characters. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 128;
/** ListJobs page size when the request says 0. */
export const DEFAULT_PAGE_SIZE = 100;
/** Largest ListJobs page. */
export const MAX_PAGE_SIZE = 1000;

/** The training job queue's data. */
export interface QueuedJobData {
  readonly jobId: string;
}

/** What JobService needs from the coordinator. */
export interface JobServiceContext {
  readonly store: JobStore;
  readonly queue: Queue<QueuedJobData>;
  readonly s3: S3Client;
  readonly logger: Logger;
  /** Tells the runner of a job (if it runs here) that it was cancelled. */
  readonly cancelRunner: (jobId: string, reason: string) => boolean;
  /** Tells the runner of a job (if it runs here) the new worker count. @default none */
  readonly scaleRunner?: (jobId: string, workers: number) => boolean;
  /** Aborts when the coordinator shuts down: open WatchJob streams end UNAVAILABLE. */
  readonly closing: AbortSignal;
  /**
   * Checks every call's bearer token; undefined only with `--insecure`, where every caller
   * is {@link ANONYMOUS_ADMIN}.
   */
  readonly authenticator: ApiTokenAuthenticator | undefined;
  /** Largest SubmitJob spec, bytes of UTF-8 (`--max-spec-bytes`). @default {@link DEFAULT_MAX_SPEC_BYTES} */
  readonly maxSpecBytes?: number;
  /**
   * Most jobs one caller may have waiting, QUEUED or STARTING (`--max-queued-jobs-per-caller`).
   * @default {@link DEFAULT_MAX_QUEUED_JOBS_PER_CALLER}
   */
  readonly maxQueuedJobsPerCaller?: number;
}

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** `<name>-<8 lowercase base32 characters>` (40 random bits). */
export function newJobId(name: string): string {
  const bytes = randomBytes(5);
  let bits = 0n;
  for (const byte of bytes) bits = (bits << 8n) | BigInt(byte);
  let suffix = '';
  for (let i = 7; i >= 0; i--) suffix += BASE32[Number((bits >> BigInt(i * 5)) & 31n)];
  return `${name}-${suffix}`;
}

function describeSpecError(err: JobSpecError): string {
  return `invalid job spec: ${err.issues.map((issue) => `${issue.path === '' ? '(spec)' : issue.path}: ${issue.message}`).join('; ')}`;
}

function encodePageToken(jobId: string): string {
  return Buffer.from(jobId, 'utf8').toString('base64url');
}

function decodePageToken(token: string): string {
  return Buffer.from(token, 'base64url').toString('utf8');
}

async function mustGet(store: JobStore, jobId: string): Promise<JobRecord> {
  if (jobId === '') throw new InvalidArgumentError('job_id: must not be empty');
  const record = await store.get(jobId);
  if (record === undefined) throw new NotFoundError(`job ${jobId} not found; list jobs with ListJobs`);
  return record;
}

/** The JobService implementation over the store and the `jobs` queue. */
export function jobService(ctx: JobServiceContext): JobServiceServer {
  const { store, logger } = ctx;
  const handlerOptions = { onInternalError: (err: unknown, path: string) => logger.error('internal error', { path, err }) };
  const maxSpecBytes = ctx.maxSpecBytes ?? DEFAULT_MAX_SPEC_BYTES;
  const maxQueuedJobsPerCaller = ctx.maxQueuedJobsPerCaller ?? DEFAULT_MAX_QUEUED_JOBS_PER_CALLER;

  /** The caller of a call with `scope` for `method`, or UNAUTHENTICATED / PERMISSION_DENIED. */
  const authorize = (call: { readonly metadata: Metadata }, scope: ApiScope, method: string): ApiCaller => {
    const caller = ctx.authenticator === undefined ? ANONYMOUS_ADMIN : ctx.authenticator.authenticate(call.metadata);
    requireScope(caller, scope, method);
    return caller;
  };

  const submitJob = async (request: SubmitJobRequest, caller: ApiCaller): Promise<SubmitJobResponse> => {
    // Before anything reads the text: a spec is parsed (YAML) only when it is small.
    const specBytes = Buffer.byteLength(request.spec, 'utf8');
    if (specBytes > maxSpecBytes) {
      throw new InvalidArgumentError(`spec is ${specBytes} bytes; this coordinator accepts at most ${maxSpecBytes} (--max-spec-bytes)`);
    }
    if (request.idempotencyKey.length > MAX_IDEMPOTENCY_KEY_LENGTH) {
      throw new InvalidArgumentError(`idempotency_key: must be at most ${MAX_IDEMPOTENCY_KEY_LENGTH} characters, got ${request.idempotencyKey.length}`);
    }
    if (request.spec.trim() === '') throw new InvalidArgumentError('spec: must be a job spec (YAML or JSON), got an empty string');
    let spec;
    try {
      spec = parseJobSpec(request.spec, specFormat(request.spec));
    } catch (err) {
      if (err instanceof JobSpecError) throw new InvalidArgumentError(describeSpecError(err), { cause: err });
      throw err;
    }
    if (request.idempotencyKey !== '') {
      const existingId = await store.redis.get(store.keys.idempotency(request.idempotencyKey));
      const existing = existingId === null ? undefined : await store.get(existingId);
      if (existing !== undefined) return { jobId: existing.jobId, state: jobStateOf(existing.state), created: false };
    }
    const { bucket, key } = parseS3Uri(spec.spec.data.manifest);
    const manifest = await checkManifest(ctx.s3, bucket, key);

    const jobId = newJobId(spec.metadata.name);
    const record: JobRecord = {
      jobId,
      name: spec.metadata.name,
      state: 'QUEUED',
      spec: request.spec,
      workersDesired: spec.spec.fleet.workers,
      workersActive: 0,
      generation: 0,
      committedStep: 0,
      totalSteps: spec.spec.training.steps ?? 0,
      createdAt: Date.now(),
      startedAt: 0,
      finishedAt: 0,
      error: '',
      progress: undefined,
      lastHash: '',
      manifestEtag: manifest.etag ?? '',
      shards: undefined,
      leaseEpoch: -1,
      samplesCommitted: 0,
      submittedBy: caller.name,
    };
    const created = await store.create(record, request.idempotencyKey, { caller: caller.name, maxWaiting: maxQueuedJobsPerCaller });
    switch (created.kind) {
      case 'created':
        break;
      case 'existing': {
        const existing = await store.get(created.jobId);
        return { jobId: created.jobId, state: existing === undefined ? JobState.JOB_STATE_QUEUED : jobStateOf(existing.state), created: false };
      }
      case 'limit':
        throw new ResourceExhaustedError(
          `token ${caller.name} already has ${created.waiting} jobs queued or starting, the most this coordinator accepts per caller (--max-queued-jobs-per-caller ${maxQueuedJobsPerCaller}); wait for some to finish or cancel them`,
        );
      default: {
        const unknown: never = created;
        return unknown;
      }
    }
    await ctx.queue.add('train', { jobId }, { jobId, removeOnComplete: { count: 1000 }, removeOnFail: { count: 1000 } });
    await store.appendEvent(jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'job_submitted',
      message: `job ${jobId} queued (${spec.spec.fleet.workers} workers) by ${caller.name}`,
      generation: 0,
      step: 0,
    });
    logger.info('job submitted', { jobId, workers: spec.spec.fleet.workers, submittedBy: caller.name });
    return { jobId, state: JobState.JOB_STATE_QUEUED, created: true };
  };

  const getJob = async (request: GetJobRequest): Promise<GetJobResponse> => {
    const record = await mustGet(store, request.jobId);
    return { job: toWireJob(record, { withSpec: true }) };
  };

  const listJobs = async (request: ListJobsRequest): Promise<ListJobsResponse> => {
    const pageSize = request.pageSize === 0 ? DEFAULT_PAGE_SIZE : request.pageSize;
    if (pageSize < 1 || pageSize > MAX_PAGE_SIZE) {
      throw new InvalidArgumentError(`page_size: must be 0 (default ${DEFAULT_PAGE_SIZE}) or in [1, ${MAX_PAGE_SIZE}], got ${request.pageSize}`);
    }
    const states = new Set<JobStateName>();
    for (const state of request.states) {
      const name = jobStateName(state);
      if (name === undefined) throw new InvalidArgumentError(`states: ${String(state)} is not a job state`);
      states.add(name);
    }
    const ids = await store.listIds();
    let start = 0;
    if (request.pageToken !== '') {
      const after = decodePageToken(request.pageToken);
      const index = ids.indexOf(after);
      if (index < 0) throw new InvalidArgumentError('page_token: not a token from a ListJobs response of this server');
      start = index + 1;
    }
    const jobs: JobRecord[] = [];
    let nextPageToken = '';
    const batch = Math.max(pageSize, 100);
    for (let i = start; i < ids.length && nextPageToken === ''; i += batch) {
      const records = await store.getMany(ids.slice(i, i + batch));
      for (const record of records) {
        if (states.size > 0 && !states.has(record.state)) continue;
        if (jobs.length === pageSize) {
          nextPageToken = encodePageToken(jobs[jobs.length - 1]?.jobId ?? '');
          break;
        }
        jobs.push(record);
      }
    }
    return { jobs: jobs.map((r) => toWireJob(r, { withSpec: false })), nextPageToken };
  };

  async function* watchJob(request: WatchJobRequest, signal: AbortSignal): AsyncIterable<WatchJobResponse> {
    await mustGet(store, request.jobId);
    const buffered: WatchJobResponse[] = [];
    let wake: (() => void) | undefined;
    const unsubscribe = store.subscribe(request.jobId, (update) => {
      buffered.push(update);
      wake?.();
    });
    const onAbort = (): void => wake?.();
    signal.addEventListener('abort', onAbort);
    ctx.closing.addEventListener('abort', onAbort);
    try {
      const record = await mustGet(store, request.jobId);
      let state = record.state;
      yield { update: { $case: 'state', state: { from: JobState.JOB_STATE_UNSPECIFIED, to: jobStateOf(state), reason: record.error, atUnixMs: Date.now() } } };
      if (TERMINAL_STATES.has(state)) return;
      let lastStep = request.sinceStep;
      if (record.progress !== undefined && record.progress.step > lastStep) {
        lastStep = record.progress.step;
        yield { update: { $case: 'progress', progress: record.progress } };
      }
      while (!signal.aborted) {
        if (ctx.closing.aborted) throw new UnavailableError('the coordinator is shutting down; watch again with since_step');
        const update = buffered.shift();
        if (update === undefined) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        const u = update.update;
        if (u === undefined) continue;
        switch (u.$case) {
          case 'progress':
            if (u.progress.step <= lastStep) continue;
            lastStep = u.progress.step;
            yield update;
            break;
          case 'state': {
            const to = jobStateName(u.state.to);
            if (to === undefined || to === state) continue;
            state = to;
            yield update;
            if (TERMINAL_STATES.has(to)) return;
            break;
          }
          case 'event':
            yield update;
            break;
          default: {
            const unknown: never = u;
            return unknown;
          }
        }
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      ctx.closing.removeEventListener('abort', onAbort);
      unsubscribe();
    }
  }

  const scaleJob = async (request: ScaleJobRequest, caller: ApiCaller): Promise<ScaleJobResponse> => {
    const record = await mustGet(store, request.jobId);
    if (TERMINAL_STATES.has(record.state)) {
      throw new FailedPreconditionError(`job ${record.jobId} is ${record.state}; only queued or running jobs can be scaled`);
    }
    const spec = parseJobSpec(record.spec, specFormat(record.spec));
    const { minWorkers, maxWorkers } = spec.spec.fleet;
    if (request.workers < 1 || request.workers < minWorkers || request.workers > maxWorkers) {
      throw new InvalidArgumentError(
        `workers: must be within spec.fleet.minWorkers..maxWorkers (${minWorkers}..${maxWorkers}) of job ${record.jobId}, got ${request.workers}`,
      );
    }
    // The runner first: one planning the job writes its own count into the record, and
    // must write this one even when its write lands after ours.
    const running = ctx.scaleRunner?.(record.jobId, request.workers) ?? false;
    await store.update(record.jobId, { workersDesired: request.workers });
    await store.appendEvent(record.jobId, {
      severity: Severity.SEVERITY_INFO,
      kind: 'scale_requested',
      message: `scale from ${record.workersDesired} to ${request.workers} workers requested by ${caller.name} (${running ? 'takes effect at the next step boundary' : 'used when the job starts'})`,
      generation: record.generation,
      step: record.committedStep,
    });
    return { jobId: record.jobId, workersDesired: request.workers, generation: record.generation };
  };

  const cancelJob = async (request: CancelJobRequest, caller: ApiCaller): Promise<CancelJobResponse> => {
    const record = await mustGet(store, request.jobId);
    // Cancelling a finished job is a no-op that reports its state (jobs.proto), so a
    // client can retry a cancel whose answer it lost without getting an error.
    if (TERMINAL_STATES.has(record.state)) return { jobId: record.jobId, state: jobStateOf(record.state) };
    const reason = request.reason === '' ? 'cancelled by user' : request.reason;
    const change = await store.setState(record.jobId, 'CANCELLED', `cancelled: ${reason}`, { error: `cancelled: ${reason}`, finishedAt: Date.now() });
    if (!change.changed) {
      // It reached a terminal state between the read and the write.
      const now = await mustGet(store, record.jobId);
      return { jobId: record.jobId, state: jobStateOf(now.state) };
    }
    await store.appendEvent(record.jobId, {
      severity: Severity.SEVERITY_WARNING,
      kind: 'job_cancelled',
      message: `cancelled: ${reason} (by ${caller.name})`,
      generation: record.generation,
      step: record.committedStep,
    });
    if (!ctx.cancelRunner(record.jobId, reason)) {
      // Not running here: take it off the queue if it is still waiting (an active one
      // elsewhere sees CANCELLED when it starts).
      await ctx.queue.remove(record.jobId).catch((err: unknown) => logger.warn('removing a cancelled job from the queue failed', { err }));
    }
    logger.info('job cancelled', { jobId: record.jobId, reason, cancelledBy: caller.name });
    return { jobId: record.jobId, state: JobState.JOB_STATE_CANCELLED };
  };

  return {
    submitJob: unaryHandler(async (request, call) => submitJob(request, authorize(call, 'submit', 'SubmitJob')), handlerOptions),
    getJob: unaryHandler(async (request, call) => {
      authorize(call, 'read', 'GetJob');
      return getJob(request);
    }, handlerOptions),
    listJobs: unaryHandler(async (request, call) => {
      authorize(call, 'read', 'ListJobs');
      return listJobs(request);
    }, handlerOptions),
    watchJob: serverStreamHandler((request, signal, call) => {
      // Checked when the handler starts, so a refused watch ends with the status at once.
      authorize(call, 'read', 'WatchJob');
      return watchJob(request, signal);
    }, handlerOptions),
    scaleJob: unaryHandler(async (request, call) => scaleJob(request, authorize(call, 'admin', 'ScaleJob')), handlerOptions),
    cancelJob: unaryHandler(async (request, call) => cancelJob(request, authorize(call, 'admin', 'CancelJob')), handlerOptions),
  };
}
