import { describe, expect, it } from 'vitest';

import { backoffDelayMs, isRetryableS3Error, sleep } from './retry-backoff.ts';

describe('backoffDelayMs', () => {
  it('draws uniformly below min(cap, base · 2^attempt)', () => {
    expect(backoffDelayMs(0, { baseMs: 100, random: () => 0.999 })).toBe(99);
    expect(backoffDelayMs(3, { baseMs: 100, random: () => 0.5 })).toBe(400);
    expect(backoffDelayMs(20, { baseMs: 100, capMs: 5000, random: () => 0.5 })).toBe(2500);
    expect(backoffDelayMs(2, { random: () => 0 })).toBe(0);
  });
});

describe('isRetryableS3Error', () => {
  it('retries network failures, 5xx, 429 and 408, not other 4xx or aborts', () => {
    const withStatus = (status: number): unknown => Object.assign(new Error('x'), { $metadata: { httpStatusCode: status } });
    expect(isRetryableS3Error(new Error('ECONNRESET'))).toBe(true);
    expect(isRetryableS3Error(withStatus(503))).toBe(true);
    expect(isRetryableS3Error(withStatus(429))).toBe(true);
    expect(isRetryableS3Error(withStatus(408))).toBe(true);
    expect(isRetryableS3Error(withStatus(404))).toBe(false);
    expect(isRetryableS3Error(withStatus(403))).toBe(false);
    expect(isRetryableS3Error(Object.assign(new Error('aborted'), { name: 'AbortError' }))).toBe(false);
  });
});

describe('sleep', () => {
  it('rejects with the abort reason', async () => {
    const controller = new AbortController();
    const pending = sleep(10_000, controller.signal);
    controller.abort(new Error('stop'));
    await expect(pending).rejects.toThrow('stop');
  });
});
