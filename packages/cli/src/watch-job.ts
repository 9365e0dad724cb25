/**
 * `dinofleet watch`: follows a job's WatchJob stream until it is terminal, drawing one
 * progress line on a terminal (plain lines otherwise), reconnecting with `since_step` when
 * the stream's deadline passes or the coordinator is briefly unavailable.
 */
import { Metadata } from '@grpc/grpc-js';
import { callUnary, ErrorCode, fromServiceError, JobEvent_Severity, JobState } from '@dinofleet/proto';
import type { Job, JobEvent, JobProgress, JobServiceClient, JobStateChange, WatchJobResponse } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';
import { isTlsFailure } from './connection-errors.ts';
import { UNARY_DEADLINE_MS } from './deadlines.ts';
import { isTerminalJobState, jobStateName } from './job-state.ts';

/** Default lifetime of one WatchJob stream before it is re-opened, ms. */
export const DEFAULT_WATCH_STREAM_DEADLINE_MS = 60_000;
/** Reconnect attempts in a row after UNAVAILABLE before giving up. */
export const MAX_WATCH_RECONNECTS = 8;

/** Options of {@link watchJob}. */
export interface WatchJobOptions {
  /** Where progress goes (stdout). A stream with `isTTY` gets one redrawn line. */
  readonly out: NodeJS.WritableStream;
  /** Stops watching: the promise rejects with a {@link CliError} (exit 130). */
  readonly signal?: AbortSignal;
  /** Lifetime of each WatchJob call (the proto bounds a stream by its deadline), ms. @default 60000 */
  readonly streamDeadlineMs?: number;
  /** Draw a single progress line. @default `out.isTTY === true` */
  readonly tty?: boolean;
  /** First backoff after UNAVAILABLE, ms (doubles, capped at 5 s). @default 200 */
  readonly reconnectBackoffMs?: number;
}

/** Exit code of `dinofleet watch` for a job's final state: 0 SUCCEEDED, 1 FAILED, 3 CANCELLED. */
export function exitCodeForJob(job: Pick<Job, 'state'>): number {
  switch (job.state) {
    case JobState.JOB_STATE_SUCCEEDED:
      return ExitCode.Ok;
    case JobState.JOB_STATE_CANCELLED:
      return ExitCode.Cancelled;
    case JobState.JOB_STATE_FAILED:
    case JobState.JOB_STATE_UNSPECIFIED:
    case JobState.JOB_STATE_QUEUED:
    case JobState.JOB_STATE_STARTING:
    case JobState.JOB_STATE_RUNNING:
    case JobState.UNRECOGNIZED:
      return ExitCode.Failure;
  }
}

/** One line saying how a terminal job ended, e.g. `job x-abc: FAILED at step 12/100: …`. */
export function describeJobOutcome(job: Job): string {
  const steps = `step ${job.committedStep}/${job.totalSteps}`;
  const base = `job ${job.jobId}: ${jobStateName(job.state)} at ${steps}`;
  return job.error === '' ? base : `${base}: ${job.error}`;
}

/** `1h02m`, `3m05s`, `42s`; `?` when unknown (negative). */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(rest).padStart(2, '0')}s`;
  return `${rest}s`;
}

function lossOf(progress: JobProgress): number | undefined {
  const { losses } = progress;
  if (losses['total'] !== undefined) return losses['total'];
  const values = Object.values(losses);
  return values.length === 0 ? undefined : values.reduce((a, b) => a + b, 0);
}

const BAR_WIDTH = 24;

/**
 * A progress report as one line. With `bar`, a `[#####-----]` bar is drawn:
 * `step 12/100 [###-------]  12%  34.5 img/s  loss 7.1234  lr 1.20e-4  ETA 1m05s`.
 */
export function formatProgressLine(progress: JobProgress, options: { readonly bar?: boolean } = {}): string {
  const total = progress.totalSteps;
  const fraction = total > 0 ? Math.min(1, progress.step / total) : 0;
  const parts = [`step ${progress.step}/${total}`];
  if (options.bar === true) {
    const filled = Math.round(fraction * BAR_WIDTH);
    parts.push(`[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}]`);
  }
  parts.push(`${(fraction * 100).toFixed(0).padStart(3)}%`);
  parts.push(`${progress.imagesPerSecond.toFixed(1)} img/s`);
  const loss = lossOf(progress);
  if (loss !== undefined) parts.push(`loss ${loss.toFixed(4)}`);
  if (progress.lr > 0) parts.push(`lr ${progress.lr.toExponential(2)}`);
  if (progress.worldSize > 0) parts.push(`${progress.worldSize} ranks`);
  parts.push(`ETA ${formatDuration(progress.etaSeconds)}`);
  return parts.join('  ');
}

/** A state change as a line: `job x: RUNNING -> FAILED: reason`. */
export function formatStateChange(jobId: string, change: JobStateChange): string {
  const arrow = change.from === JobState.JOB_STATE_UNSPECIFIED ? jobStateName(change.to) : `${jobStateName(change.from)} -> ${jobStateName(change.to)}`;
  return `job ${jobId}: ${arrow}${change.reason === '' ? '' : `: ${change.reason}`}`;
}

const SEVERITY: Readonly<Record<JobEvent_Severity, string>> = {
  [JobEvent_Severity.SEVERITY_UNSPECIFIED]: 'info',
  [JobEvent_Severity.SEVERITY_INFO]: 'info',
  [JobEvent_Severity.SEVERITY_WARNING]: 'warning',
  [JobEvent_Severity.SEVERITY_ERROR]: 'error',
  [JobEvent_Severity.UNRECOGNIZED]: 'info',
};

/** An event as a line: `[warning] worker_lost: … (generation 2, step 40)`. */
export function formatJobEvent(event: JobEvent): string {
  return `[${SEVERITY[event.severity]}] ${event.kind}: ${event.message} (generation ${event.generation}, step ${event.step})`;
}

/** Draws the stream: one redrawn line on a TTY, one line per message otherwise. */
class WatchRenderer {
  private progressLine: string | undefined;

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly tty: boolean,
  ) {}

  private columns(): number {
    const columns = (this.out as { columns?: number }).columns;
    return typeof columns === 'number' && columns > 20 ? columns : 120;
  }

  /** A line above the progress line. */
  line(text: string): void {
    if (this.tty && this.progressLine !== undefined) {
      this.out.write(`\r\x1b[2K${text}\n${this.progressLine}`);
    } else {
      this.out.write(`${text}\n`);
    }
  }

  progress(progress: JobProgress): void {
    if (!this.tty) {
      this.out.write(`${formatProgressLine(progress)}\n`);
      return;
    }
    this.progressLine = formatProgressLine(progress, { bar: true }).slice(0, this.columns() - 1);
    this.out.write(`\r\x1b[2K${this.progressLine}`);
  }

  /** Leaves the progress line in place and moves to a fresh line. */
  finish(): void {
    if (this.tty && this.progressLine !== undefined) this.out.write('\n');
    this.progressLine = undefined;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

function interrupted(): CliError {
  return new CliError('interrupted', ExitCode.Interrupted);
}

/**
 * Follows job `jobId` until it is SUCCEEDED, FAILED or CANCELLED and returns the final
 * job (from GetJob). Progress and events are written to `options.out`. Each stream lives
 * `streamDeadlineMs`; when it expires (or the coordinator is unavailable for a moment) the
 * watch is re-opened with `since_step` = the last step seen, so nothing is shown twice.
 * Rejects with the gRPC error (e.g. NOT_FOUND) for anything else.
 */
export async function watchJob(client: JobServiceClient, jobId: string, options: WatchJobOptions): Promise<Job> {
  const { out, signal } = options;
  const renderer = new WatchRenderer(out, options.tty ?? (out as { isTTY?: boolean }).isTTY === true);
  const streamDeadlineMs = options.streamDeadlineMs ?? DEFAULT_WATCH_STREAM_DEADLINE_MS;
  const firstBackoffMs = options.reconnectBackoffMs ?? 200;
  let sinceStep = 0;
  let lastState: JobState | undefined;
  let failuresInRow = 0;

  const handle = (message: WatchJobResponse): boolean => {
    const update = message.update;
    if (update === undefined) return false;
    switch (update.$case) {
      case 'progress':
        // A reconnect may repeat the step it resumed from; show each step once.
        if (update.progress.step > sinceStep || sinceStep === 0) {
          sinceStep = Math.max(sinceStep, update.progress.step);
          renderer.progress(update.progress);
        }
        return false;
      case 'state':
        if (update.state.to !== lastState) renderer.line(formatStateChange(jobId, update.state));
        lastState = update.state.to;
        return isTerminalJobState(update.state.to);
      case 'event':
        renderer.line(formatJobEvent(update.event));
        return false;
    }
  };

  const streamOnce = (): Promise<boolean> =>
    new Promise((resolve, reject) => {
      const call = client.watchJob({ jobId, sinceStep }, new Metadata(), { deadline: new Date(Date.now() + streamDeadlineMs) });
      let terminal = false;
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
      const settle = (): void => signal?.removeEventListener('abort', onAbort);
      call.on('data', (message: WatchJobResponse) => {
        if (handle(message)) terminal = true;
      });
      call.on('error', (error: Error) => {
        settle();
        reject(signal?.aborted === true ? interrupted() : fromServiceError(error));
      });
      call.on('end', () => {
        settle();
        resolve(terminal);
      });
    });

  try {
    for (;;) {
      if (signal?.aborted === true) throw interrupted();
      try {
        const terminal = await streamOnce();
        failuresInRow = 0;
        if (terminal) break;
        // The server ended the stream without a terminal state (it is shutting down):
        // look again after a moment.
        await sleep(firstBackoffMs, signal);
      } catch (error) {
        if (error instanceof CliError) throw error;
        const known = fromServiceError(error);
        if (known.code === ErrorCode.DeadlineExceeded) continue;
        // A TLS failure will not go away by waiting; report it at once.
        if (known.code === ErrorCode.Unavailable && failuresInRow < MAX_WATCH_RECONNECTS && !isTlsFailure(known)) {
          failuresInRow++;
          await sleep(Math.min(5_000, firstBackoffMs * 2 ** (failuresInRow - 1)), signal);
          continue;
        }
        throw known;
      }
    }
  } finally {
    renderer.finish();
  }
  const { job } = await callUnary(client, 'getJob', { jobId }, { deadlineMs: UNARY_DEADLINE_MS });
  if (job === undefined) throw new CliError(`GetJob returned no job for ${jobId}`);
  return job;
}
