/**
 * The one retry policy every dinofleet client uses: which statuses are worth another try,
 * jittered exponential backoff, a cap on attempts and an overall deadline.
 */
import { status } from '@grpc/grpc-js';
import { GRPC_STATUS_BY_ERROR_CODE, isDinofleetError, isServiceError } from './errors.ts';

/**
 * Statuses retried by default. Only UNAVAILABLE: it means the call did not reach a
 * handler that could act on it (connection refused or reset, server draining or not
 * started), so another attempt is safe even for non-idempotent calls and likely to work
 * once a process restarts.
 *
 * Deliberately not retried:
 * - RESOURCE_EXHAUSTED: grpc-js also uses it for "message larger than the limit", which no
 *   retry fixes; a rate limit that should be retried must say so via `retryableStatuses`.
 * - ABORTED: in dinofleet it means "your generation/step is stale"; the caller must re-read
 *   its Assignment and rebuild the request, not resend it.
 * - DEADLINE_EXCEEDED: the work may have happened, and the caller's time is spent.
 */
export const DEFAULT_RETRYABLE_STATUSES: ReadonlySet<status> = new Set([status.UNAVAILABLE]);

/** How {@link withRetry} retries. Every field is optional; see {@link resolveRetryConfig}. */
export interface RetryOptions {
  /** Attempts in total, including the first. Range 1..100. @default 5 */
  maxAttempts?: number;
  /** Backoff cap before the second attempt, in ms. @default 100 */
  initialBackoffMs?: number;
  /** Upper bound of any backoff, in ms. @default 5000 */
  maxBackoffMs?: number;
  /** Growth of the backoff cap per attempt (>= 1). @default 2 */
  backoffMultiplier?: number;
  /**
   * Fraction of each backoff drawn at random, in [0, 1]: the wait is
   * `cap * (1 - jitter * random())`. 1 is gRPC's "full jitter" (A6); the default 0.5 keeps
   * a floor so a restarting server is not hammered, while still spreading out clients that
   * failed together (a whole ring losing one peer). @default 0.5
   */
  jitter?: number;
  /**
   * Overall deadline for all attempts and waits: a `Date`, or ms since the epoch. No
   * attempt starts and no wait is begun that would end after it. @default none
   */
  deadline?: Date | number;
  /** Statuses worth another attempt. @default {@link DEFAULT_RETRYABLE_STATUSES} */
  retryableStatuses?: ReadonlySet<status>;
  /** Stops waiting and retrying when aborted (the last error is thrown). */
  signal?: AbortSignal;
  /** Source of randomness in [0, 1), for tests. @default Math.random */
  random?: () => number;
}

/** {@link RetryOptions} with every default applied. */
export interface RetryConfig {
  /** Attempts in total, including the first. */
  readonly maxAttempts: number;
  /** Backoff cap before the second attempt, in ms. */
  readonly initialBackoffMs: number;
  /** Upper bound of any backoff, in ms. */
  readonly maxBackoffMs: number;
  /** Growth of the backoff cap per attempt. */
  readonly backoffMultiplier: number;
  /** Random fraction of each backoff, in [0, 1]. */
  readonly jitter: number;
  /** Overall deadline in ms since the epoch; `Infinity` when none. */
  readonly deadlineMs: number;
  /** Statuses worth another attempt. */
  readonly retryableStatuses: ReadonlySet<status>;
  /** Stops retrying when aborted. */
  readonly signal: AbortSignal | undefined;
  /** Source of randomness in [0, 1). */
  readonly random: () => number;
}

/** What {@link withRetry} tells each attempt. */
export interface RetryAttempt {
  /** 1 for the first attempt. */
  readonly attempt: number;
  /**
   * The overall deadline (ms since the epoch, `Infinity` when none). Give each call a
   * deadline no later than this, e.g. `Math.min(deadlineFromNow(callMs), deadlineMs)`.
   */
  readonly deadlineMs: number;
}

function checkRange(field: string, value: number, min: number, max: number): number {
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new RangeError(`retry option ${field} must be in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** Applies defaults to {@link RetryOptions} and checks every range. */
export function resolveRetryConfig(options: RetryOptions = {}): RetryConfig {
  const initialBackoffMs = checkRange('initialBackoffMs', options.initialBackoffMs ?? 100, 0, 3_600_000);
  const deadline = options.deadline;
  return {
    maxAttempts: checkRange('maxAttempts', options.maxAttempts ?? 5, 1, 100),
    initialBackoffMs,
    maxBackoffMs: checkRange('maxBackoffMs', options.maxBackoffMs ?? 5000, initialBackoffMs, 3_600_000),
    backoffMultiplier: checkRange('backoffMultiplier', options.backoffMultiplier ?? 2, 1, 100),
    jitter: checkRange('jitter', options.jitter ?? 0.5, 0, 1),
    deadlineMs: deadline === undefined ? Infinity : deadline instanceof Date ? deadline.getTime() : deadline,
    retryableStatuses: options.retryableStatuses ?? DEFAULT_RETRYABLE_STATUSES,
    signal: options.signal,
    random: options.random ?? Math.random,
  };
}

/** A deadline `ms` milliseconds from now, in the form grpc-js call options accept. */
export function deadlineFromNow(ms: number): Date {
  return new Date(Date.now() + ms);
}

/**
 * The gRPC status an error stands for: a grpc-js error's own status, a DinofleetError's
 * mapped status, `undefined` for anything else (which is never retried).
 */
export function grpcStatusOf(err: unknown): status | undefined {
  if (isDinofleetError(err)) return GRPC_STATUS_BY_ERROR_CODE[err.code];
  if (isServiceError(err)) return err.code;
  return undefined;
}

/** True when `err` carries one of the statuses `retryableStatuses` names. */
export function isRetryable(err: unknown, retryableStatuses: ReadonlySet<status> = DEFAULT_RETRYABLE_STATUSES): boolean {
  const code = grpcStatusOf(err);
  return code !== undefined && retryableStatuses.has(code);
}

/**
 * The wait before attempt `attempt + 1` (attempt is 1-based): the cap grows as
 * `initial * multiplier^(attempt-1)` up to `maxBackoffMs`, then `jitter` of it is random.
 */
export function backoffMs(attempt: number, config: RetryConfig): number {
  const capMs = Math.min(config.maxBackoffMs, config.initialBackoffMs * config.backoffMultiplier ** (attempt - 1));
  return capMs * (1 - config.jitter * config.random());
}

// A function, not an inline check, so the compiler does not assume `aborted` is unchanged
// across the await in between.
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleepUnlessAborted(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `attempt` until it succeeds, fails with a status outside the retryable set, runs
 * out of attempts, or the next wait would pass the overall deadline; then throws the last
 * error unchanged.
 */
export async function withRetry<T>(attempt: (info: RetryAttempt) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const config = resolveRetryConfig(options);
  let retriedFor: unknown;
  for (let n = 1; ; n++) {
    try {
      return await attempt({ attempt: n, deadlineMs: config.deadlineMs });
    } catch (caught) {
      // A retry started just before the overall deadline fails with DEADLINE_EXCEEDED and
      // says nothing; the failure that made us retry says what was wrong.
      const err = retriedFor !== undefined && grpcStatusOf(caught) === status.DEADLINE_EXCEEDED && Date.now() >= config.deadlineMs ? retriedFor : caught;
      if (n >= config.maxAttempts || !isRetryable(err, config.retryableStatuses)) throw err;
      retriedFor = err;
      const waitMs = backoffMs(n, config);
      // Waiting past the deadline only to start an attempt that cannot finish is pointless.
      if (Date.now() + waitMs >= config.deadlineMs || isAborted(config.signal)) throw err;
      await sleepUnlessAborted(waitMs, config.signal);
      if (isAborted(config.signal)) throw err;
    }
  }
}
