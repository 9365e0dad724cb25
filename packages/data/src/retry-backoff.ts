/**
 * Retry policy for S3 reads: exponential backoff with full jitter (the scheme in the AWS
 * Architecture Blog's "Exponential Backoff And Jitter"), so a fleet of workers that hit the
 * same throttled prefix at once does not retry in lockstep.
 */

/** Backoff settings. */
export interface BackoffOptions {
  /** First retry's upper bound, milliseconds. @default 100 */
  readonly baseMs?: number;
  /** Largest delay, milliseconds. @default 5000 */
  readonly capMs?: number;
  /** Uniform [0, 1) source, replaceable for tests. @default Math.random */
  readonly random?: () => number;
}

/** Default first-retry upper bound, milliseconds. */
export const DEFAULT_BACKOFF_BASE_MS = 100;
/** Default largest delay, milliseconds. */
export const DEFAULT_BACKOFF_CAP_MS = 5_000;

/** Delay before retry number `attempt` (0-based): uniform in [0, min(cap, base · 2^attempt)). */
export function backoffDelayMs(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
  const cap = options.capMs ?? DEFAULT_BACKOFF_CAP_MS;
  const random = options.random ?? Math.random;
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/** Resolves after `ms` milliseconds, or rejects with the signal's reason when it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The HTTP status of an SDK error, if it has one. */
export function httpStatusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const metadata = (error as { $metadata?: { httpStatusCode?: unknown } }).$metadata;
  return typeof metadata?.httpStatusCode === 'number' ? metadata.httpStatusCode : undefined;
}

/**
 * Whether retrying can help: network failures and timeouts (no status), 5xx, throttling
 * (429, `SlowDown`) and 408. Other 4xx (denied, missing, bad range) fail the same way again.
 */
export function isRetryableS3Error(error: unknown): boolean {
  if (typeof error === 'object' && error !== null && (error as { name?: unknown }).name === 'AbortError') return false;
  const status = httpStatusOf(error);
  if (status === undefined) return true;
  return status >= 500 || status === 429 || status === 408;
}
