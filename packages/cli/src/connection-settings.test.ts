import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CliError } from './cli-error.ts';
import { resolveApiToken, resolveJobApiConnection, resolveTransportSecurity } from './connection-settings.ts';
import { writeFleetFile } from './fleet-file.ts';
import { tempDir } from './testing/capture.ts';
import { createFleetSecurity } from './testing/fleet-security.ts';
import type { FleetSecurityFixture } from './testing/fleet-security.ts';

let fleet: FleetSecurityFixture;
beforeAll(async () => {
  fleet = await createFleetSecurity();
});
afterAll(async () => {
  await fleet[Symbol.asyncDispose]();
});

const RECORD = { coordinator: '127.0.0.1:7001', teacherSync: '127.0.0.1:7002', redisUrl: '', s3Env: {}, pid: process.pid };

async function failure(promise: Promise<unknown>): Promise<CliError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(CliError);
  return error as CliError;
}

describe('resolveTransportSecurity', () => {
  it('takes --tls-dir, else --insecure, else DINOFLEET_TLS_DIR, else the fleet file', async () => {
    await using dir = await tempDir();
    await writeFleetFile(dir.path, { ...RECORD, tlsDir: fleet.tlsDir, tokenFile: fleet.tokenFiles.admin });
    const env = { DINOFLEET_TLS_DIR: fleet.rogueDir };
    const context = { env, cwd: dir.path };

    const fromFlag = await resolveTransportSecurity({ tlsDir: fleet.caOnlyDir }, context);
    expect(fromFlag.origin).toBe(`--tls-dir ${fleet.caOnlyDir}`);
    expect(fromFlag.security.kind === 'mtls' && fromFlag.security.material.dir).toBe(fleet.caOnlyDir);
    expect(fromFlag.security.kind === 'mtls' && fromFlag.security.material.cert).toBeUndefined(); // CA-only is enough here

    expect(await resolveTransportSecurity({ insecure: true }, context)).toEqual({ security: { kind: 'insecure' }, origin: '--insecure' });

    const fromEnv = await resolveTransportSecurity({}, context);
    expect(fromEnv.origin).toBe(`DINOFLEET_TLS_DIR ${fleet.rogueDir}`);
    expect(fromEnv.security.kind === 'mtls' && fromEnv.security.material.dir).toBe(fleet.rogueDir);

    const fromFile = await resolveTransportSecurity({}, { env: { DINOFLEET_TLS_DIR: '' }, cwd: dir.path });
    expect(fromFile.origin).toBe(`the TLS directory of ${join(dir.path, '.dinofleet', 'fleet.json')}`);
    expect(fromFile.security.kind === 'mtls' && fromFile.security.material.cert).toBeDefined();

    // A relative --tls-dir is relative to the working directory.
    const relative = await resolveTransportSecurity({ tlsDir: 'fleet' }, { env: {}, cwd: fleet.root });
    expect(relative.security.kind === 'mtls' && relative.security.material.dir).toBe(fleet.tlsDir);
  });

  it('follows a fleet file of an insecure fleet into plaintext', async () => {
    await using dir = await tempDir();
    await writeFleetFile(dir.path, { ...RECORD, insecure: true });
    const resolved = await resolveTransportSecurity({}, { env: {}, cwd: dir.path });
    expect(resolved.security.kind).toBe('insecure');
    expect(resolved.origin).toMatch(/a fleet started with --insecure/);
  });

  it('says which flag or variable to set when nothing is known, and refuses both --tls-dir and --insecure', async () => {
    await using dir = await tempDir();
    const none = await failure(resolveTransportSecurity({}, { env: {}, cwd: dir.path }));
    expect(none.exitCode).toBe(2);
    expect(none.message).toBe(
      "no TLS settings to connect to the fleet: pass --tls-dir DIR (a directory with the fleet's ca.crt) or set DINOFLEET_TLS_DIR, or run `dinofleet up` in this directory; for a fleet started with --insecure, pass --insecure",
    );
    const both = await failure(resolveTransportSecurity({ tlsDir: fleet.tlsDir, insecure: true }, { env: {}, cwd: dir.path }));
    expect(both.message).toBe('--insecure and --tls-dir exclude each other: pick one');
    expect(both.exitCode).toBe(2);
  });

  it('names where an unusable directory came from and what is wrong with it', async () => {
    await using dir = await tempDir();
    const missing = await failure(resolveTransportSecurity({}, { env: { DINOFLEET_TLS_DIR: 'nowhere' }, cwd: dir.path }));
    expect(missing.exitCode).toBe(2);
    expect(missing.message).toMatch(new RegExp(`^DINOFLEET_TLS_DIR nowhere: TLS: CA certificate ${join(dir.path, 'nowhere', 'ca.crt')} does not exist; create development certificates with \`dinofleet certs`));
  });
});

describe('resolveApiToken', () => {
  it('takes DINOFLEET_TOKEN, else --token-file, else DINOFLEET_TOKEN_FILE, else the fleet file', async () => {
    await using dir = await tempDir();
    await writeFleetFile(dir.path, { ...RECORD, tlsDir: fleet.tlsDir, tokenFile: fleet.tokenFiles.admin });
    const env = { DINOFLEET_TOKEN: fleet.tokens.submit, DINOFLEET_TOKEN_FILE: fleet.tokenFiles.read };
    const context = { env, cwd: dir.path };
    expect(await resolveApiToken({}, context)).toEqual({ token: fleet.tokens.submit, origin: 'DINOFLEET_TOKEN' });
    expect(await resolveApiToken({ tokenFile: fleet.tokenFiles.admin }, { env: { DINOFLEET_TOKEN_FILE: fleet.tokenFiles.read }, cwd: dir.path })).toEqual({
      token: fleet.tokens.admin,
      origin: '--token-file',
    });
    // Both a token in the environment and an explicit --token-file: refused, not guessed.
    const both = await failure(resolveApiToken({ tokenFile: fleet.tokenFiles.read }, context));
    expect(both.exitCode).toBe(2);
    expect(both.message).toBe('both DINOFLEET_TOKEN and --token-file give a token: unset DINOFLEET_TOKEN or drop --token-file');
    expect(await resolveApiToken({}, { env: { DINOFLEET_TOKEN_FILE: fleet.tokenFiles.read }, cwd: dir.path })).toEqual({
      token: fleet.tokens.read,
      origin: 'DINOFLEET_TOKEN_FILE',
    });
    expect(await resolveApiToken({}, { env: { DINOFLEET_TOKEN: '', DINOFLEET_TOKEN_FILE: '' }, cwd: dir.path })).toEqual({
      token: fleet.tokens.admin,
      origin: `the token file of ${join(dir.path, '.dinofleet', 'fleet.json')}`,
    });
    await using empty = await tempDir();
    expect(await resolveApiToken({}, { env: {}, cwd: empty.path })).toBeUndefined();
  });

  it('refuses what is not a token without echoing it, and warns about a token file others can read', async () => {
    await using dir = await tempDir();
    const secret = 'my-password-123';
    const fromEnv = await failure(resolveApiToken({}, { env: { DINOFLEET_TOKEN: secret }, cwd: dir.path }));
    expect(fromEnv.message).toBe('DINOFLEET_TOKEN is not a dinofleet API token (dft_ and 43 characters); `dinofleet token create` makes one');
    await writeFile(join(dir.path, 'token'), `${secret}\n`, { mode: 0o600 });
    const fromFile = await failure(resolveApiToken({ tokenFile: 'token' }, { env: {}, cwd: dir.path }));
    expect(fromFile.message).toBe(
      `--token-file: ${join(dir.path, 'token')} does not hold a dinofleet API token (one line: dft_ and 43 characters); \`dinofleet token create\` makes one`,
    );
    expect(fromFile.message).not.toContain(secret);
    const missing = await failure(resolveApiToken({}, { env: { DINOFLEET_TOKEN_FILE: 'gone' }, cwd: dir.path }));
    expect(missing.message).toBe(`DINOFLEET_TOKEN_FILE: cannot read ${join(dir.path, 'gone')} (no such file)`);

    await writeFile(join(dir.path, 'open-token'), fleet.tokens.read);
    await chmod(join(dir.path, 'open-token'), 0o644);
    const open = await resolveApiToken({ tokenFile: 'open-token' }, { env: {}, cwd: dir.path });
    expect(open?.token).toBe(fleet.tokens.read);
    expect(open?.warning).toBe(`${join(dir.path, 'open-token')} holds an API token but other users may read it (mode 0644); chmod 600 ${join(dir.path, 'open-token')}`);
  });
});

describe('resolveJobApiConnection', () => {
  it('needs a token over TLS and says how to give one', async () => {
    await using dir = await tempDir();
    const error = await failure(resolveJobApiConnection({ tlsDir: fleet.caOnlyDir }, { env: {}, cwd: dir.path }));
    expect(error.exitCode).toBe(2);
    expect(error.message).toBe(
      'no API token for the job API: set DINOFLEET_TOKEN, pass --token-file FILE or set DINOFLEET_TOKEN_FILE (a file holding the token), or run `dinofleet up` in this directory; `dinofleet token create` makes a token',
    );
  });

  it('does not look for a token in plaintext (a malformed one is no error)', async () => {
    await using dir = await tempDir();
    const connection = await resolveJobApiConnection({ insecure: true }, { env: { DINOFLEET_TOKEN: 'not-a-token' }, cwd: dir.path });
    expect(connection.token).toBeUndefined();
    expect(connection.transport.security.kind).toBe('insecure');
  });
});
