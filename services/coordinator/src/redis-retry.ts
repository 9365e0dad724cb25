/**
 * Riding out a Redis restart: ioredis reconnects on its own (and holds new commands while
 * it does), but a command or transaction in flight when the connection broke fails. A
 * step's commit transaction is retried here with jittered backoff for up to ~30 s instead
 * of failing the job; it must therefore be idempotent (absolute values, no increments).
 */

/** How long a Redis operation is retried in all, ms. */
export const REDIS_RETRY_MS = 30_000;

const TRANSIENT = /Connection is closed|ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|LOADING|EXECABORT|Stream isn't writeable|MISCONF|READONLY|socket|Reached the max retries/i;

/** Whether `err` looks like Redis being away (not a bad command). */
export function isTransientRedisError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return TRANSIENT.test(err.message) || (typeof code === 'string' && TRANSIENT.test(code));
}

/**
 * Runs `operation` until it succeeds, retrying transient Redis errors with backoff (0.1 s
 * doubling to 2 s, ±50% jitter) for up to `totalMs`; other errors are thrown at once.
 */
export async function withRedisRetry<T>(
  operation: () => Promise<T>,
  options: { totalMs?: number; signal?: AbortSignal; onRetry?: (err: unknown, attempt: number) => void } = {},
): Promise<T> {
  const deadline = Date.now() + (options.totalMs ?? REDIS_RETRY_MS);
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (err) {
      if (!isTransientRedisError(err) || Date.now() >= deadline || options.signal?.aborted === true) throw err;
      options.onRetry?.(err, attempt);
      const base = Math.min(2000, 100 * 2 ** (attempt - 1));
      const delay = Math.min(base * (0.5 + Math.random()), Math.max(0, deadline - Date.now()));
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
