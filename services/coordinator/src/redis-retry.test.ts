import { describe, expect, it } from 'vitest';
import { isTransientRedisError, withRedisRetry } from './redis-retry.ts';

describe('withRedisRetry', () => {
  it('retries while Redis is away and gives up on other errors at once', async () => {
    let calls = 0;
    const value = await withRedisRetry(() => {
      calls += 1;
      return calls < 3 ? Promise.reject(new Error('Connection is closed.')) : Promise.resolve('committed');
    });
    expect([value, calls]).toEqual(['committed', 3]);

    let wrong = 0;
    const err = await withRedisRetry(() => {
      wrong += 1;
      return Promise.reject(new Error('WRONGTYPE Operation against a key holding the wrong kind of value'));
    }).catch((e: unknown) => e);
    expect([(err as Error).message.slice(0, 9), wrong]).toEqual(['WRONGTYPE', 1]);

    const started = Date.now();
    await expect(withRedisRetry(() => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6379')), { totalMs: 300 })).rejects.toThrow(/ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(isTransientRedisError(new Error('LOADING Redis is loading the dataset in memory'))).toBe(true);
  });
});
