import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { CliError } from './cli-error.ts';
import { fleetFilePath, readFleetFile, removeFleetFile, resolveAddress, writeFleetFile } from './fleet-file.ts';
import { tempDir } from './testing/capture.ts';

const RECORD = {
  coordinator: '127.0.0.1:7001',
  teacherSync: '127.0.0.1:7002',
  redisUrl: 'redis://127.0.0.1:6380',
  s3Env: { DINOFLEET_S3_ENDPOINT: 'http://127.0.0.1:9000' },
  pid: process.pid,
};

describe('resolveAddress', () => {
  it('prefers the flag, then the environment, then .dinofleet/fleet.json', async () => {
    await using dir = await tempDir();
    await writeFleetFile(dir.path, RECORD);
    const env = { DINOFLEET_COORDINATOR: '10.0.0.1:7000', DINOFLEET_TEACHER_SYNC: '10.0.0.2:7000' };

    expect(await resolveAddress('coordinator', { flag: 'flag-host:1234', env, cwd: dir.path })).toEqual({ address: 'flag-host:1234', source: 'flag' });
    expect(await resolveAddress('coordinator', { env, cwd: dir.path })).toEqual({ address: '10.0.0.1:7000', source: 'env' });
    expect(await resolveAddress('teacherSync', { env, cwd: dir.path })).toEqual({ address: '10.0.0.2:7000', source: 'env' });
    expect(await resolveAddress('coordinator', { env: {}, cwd: dir.path })).toEqual({ address: '127.0.0.1:7001', source: 'fleet-file' });
    expect(await resolveAddress('teacherSync', { env: {}, cwd: dir.path })).toEqual({ address: '127.0.0.1:7002', source: 'fleet-file' });
    // An empty variable counts as unset.
    expect(await resolveAddress('coordinator', { env: { DINOFLEET_COORDINATOR: '' }, cwd: dir.path })).toMatchObject({ source: 'fleet-file' });
  });

  it('tells the user to run dinofleet up or pass the flag when nothing is set', async () => {
    await using dir = await tempDir();
    const error = await resolveAddress('coordinator', { env: {}, cwd: dir.path }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CliError);
    expect((error as CliError).exitCode).toBe(2);
    expect((error as CliError).message).toMatch(/run `dinofleet up`.*--coordinator host:port.*DINOFLEET_COORDINATOR/);
    await expect(resolveAddress('teacherSync', { env: {}, cwd: dir.path })).rejects.toThrow(/--teacher-sync host:port/);
  });

  it('refuses a malformed address, naming where it came from', async () => {
    await using dir = await tempDir();
    await expect(resolveAddress('coordinator', { flag: 'localhost', env: {}, cwd: dir.path })).rejects.toThrow(/--coordinator must be host:port/);
    await expect(resolveAddress('coordinator', { env: { DINOFLEET_COORDINATOR: 'a:99999' }, cwd: dir.path })).rejects.toThrow(/DINOFLEET_COORDINATOR must be host:port/);
  });

  it('calls a fleet file of a dead `dinofleet up` stale', async () => {
    await using dir = await tempDir();
    // pid 2^22 + 1 is above Linux's pid_max default, so no process has it.
    await writeFleetFile(dir.path, { ...RECORD, pid: 4_194_305 });
    await expect(resolveAddress('coordinator', { env: {}, cwd: dir.path })).rejects.toThrow(/stale.*run `dinofleet up`/);
  });
});

describe('fleet file', () => {
  it('round-trips and is removed', async () => {
    await using dir = await tempDir();
    const path = await writeFleetFile(dir.path, RECORD);
    expect(path).toBe(join(dir.path, '.dinofleet', 'fleet.json'));
    expect(await readFleetFile(dir.path)).toEqual(RECORD);
    await removeFleetFile(dir.path);
    expect(await readFleetFile(dir.path)).toBeUndefined();
    await removeFleetFile(dir.path); // nothing there: fine
  });

  it('reports a corrupt file with what to do', async () => {
    await using dir = await tempDir();
    await mkdir(join(dir.path, '.dinofleet'));
    await writeFile(fleetFilePath(dir.path), '{not json');
    await expect(readFleetFile(dir.path)).rejects.toThrow(/not valid JSON: delete it and run `dinofleet up`/);
  });
});
