import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { splitHostPort, writeReadyFile } from './service-process.ts';

describe('splitHostPort', () => {
  it('splits host:port, IPv6 in brackets, port 0', () => {
    expect(splitHostPort('127.0.0.1:7070')).toEqual({ host: '127.0.0.1', port: 7070 });
    expect(splitHostPort('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(splitHostPort('worker-3.dinofleet:65535')).toEqual({ host: 'worker-3.dinofleet', port: 65535 });
  });

  it.each(['7070', ':7070', 'localhost', 'localhost:', 'localhost:65536', 'localhost:-1', 'localhost:80x', '[]:80'])('refuses %j', (value) => {
    expect(splitHostPort(value)).toBeUndefined();
  });
});

describe('writeReadyFile', () => {
  it('writes the JSON a launcher reads, with this pid, and leaves no temporary file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ready-'));
    try {
      await writeReadyFile(join(dir, 'ready.json'), { service: 'worker', grpcAddress: '127.0.0.1:1', metricsAddress: '127.0.0.1:2' });
      expect(JSON.parse(await readFile(join(dir, 'ready.json'), 'utf8'))).toEqual({
        service: 'worker',
        pid: process.pid,
        grpcAddress: '127.0.0.1:1',
        metricsAddress: '127.0.0.1:2',
      });
      expect(await readdir(dir)).toEqual(['ready.json']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
