import { access, mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { findRedisServer, pingRedis, RedisNotInstalledError, startRedis } from './redis-server.ts';

/** One inline command over a raw socket; the first reply line. */
function command(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let answer = '';
    socket.once('connect', () => socket.write(`${text}\r\n`));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString();
      const lines = answer.split('\r\n');
      // Bulk strings ($n) carry their value on the next line.
      if ((answer.startsWith('$') && !answer.startsWith('$-1') && lines.length >= 3) || (!answer.startsWith('$') && lines.length >= 2) || answer.startsWith('$-1\r\n')) {
        socket.destroy();
        resolve(answer.startsWith('$') && !answer.startsWith('$-1') ? lines[1]! : lines[0]!);
      }
    });
    socket.once('error', reject);
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startRedis', () => {
  it('starts, answers PING and commands, stops, and leaves no process or directory', async () => {
    const redis = await startRedis();
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    expect(isAlive(redis.pid)).toBe(true);
    expect(await pingRedis(redis.port)).toBe(true);
    expect(await command(redis.port, 'SET greeting hello')).toBe('+OK');
    expect(await command(redis.port, 'GET greeting')).toBe('hello');

    await redis.stop();
    expect(isAlive(redis.pid)).toBe(false);
    expect(await pingRedis(redis.port)).toBe(false);
    await expect(access(redis.dir)).rejects.toThrow(/ENOENT/);
    await redis.stop(); // idempotent
  });

  it('gives two servers at once different ports', async () => {
    await using a = await startRedis();
    await using b = await startRedis();
    expect(a.port).not.toBe(b.port);
    expect(await pingRedis(a.port)).toBe(true);
    expect(await pingRedis(b.port)).toBe(true);
  });

  it('keeps data across a restart on the same directory with appendOnly', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dinofleet-redis-test-'));
    try {
      const first = await startRedis({ dir, appendOnly: true });
      expect(await command(first.port, 'SET step 42')).toBe('+OK');
      await first.stop();
      await access(dir); // a given directory is kept
      await using second = await startRedis({ dir, appendOnly: true });
      expect(await command(second.port, 'GET step')).toBe('42');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('fails on an occupied fixed port with the server output', async () => {
    await using a = await startRedis();
    await expect(startRedis({ port: a.port })).rejects.toThrow(/Address already in use/i);
  });

  it('names what to install when the binary is missing', () => {
    const find = (): string => findRedisServer({ PATH: '/nonexistent' }, '/nonexistent/redis-server');
    expect(find).toThrow(RedisNotInstalledError);
    expect(find).toThrow(/redis-server is not installed.*apt-get install redis-server.*--redis-url/);
  });
});
