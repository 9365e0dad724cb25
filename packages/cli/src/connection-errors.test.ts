import { loadTlsDir } from '@dinofleet/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { probeTls } from './connection-errors.ts';
import { writeFleetFile } from './fleet-file.ts';
import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';
import { fakeJob, JobState, startFakeJobService } from './testing/fake-job-service.ts';
import type { FakeJobServiceScript } from './testing/fake-job-service.ts';
import { createFleetSecurity } from './testing/fleet-security.ts';
import type { FleetSecurityFixture } from './testing/fleet-security.ts';

let fleet: FleetSecurityFixture;
beforeAll(async () => {
  fleet = await createFleetSecurity();
});
afterAll(async () => {
  await fleet[Symbol.asyncDispose]();
});

const SCRIPT: FakeJobServiceScript = {
  list: () => ({ jobs: [fakeJob({ jobId: 'job-1', state: JobState.JOB_STATE_RUNNING, createdAtUnixMs: Date.now() })], nextPageToken: '' }),
  cancel: (request) => ({ jobId: request.jobId, state: JobState.JOB_STATE_CANCELLED }),
};

async function run(argv: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  await using dir = await tempDir();
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const code = await runCli(argv, { stdout, stderr, env, cwd: cwd ?? dir.path });
  const result = { code, stdout: stdout.text, stderr: stderr.text };
  // Whatever happened, no token is ever printed.
  for (const token of Object.values(fleet.tokens)) expect(`${result.stdout}${result.stderr}`).not.toContain(token);
  return result;
}

/** `address` as a literal in a RegExp. */
function literal(address: string): string {
  return address.replace(/[.[\]]/g, '\\$&');
}

describe('job commands against a secure coordinator', () => {
  it('work with the CA and a token, and the scope decides what is allowed (PERMISSION_DENIED keeps the server message)', async () => {
    await using server = await startFakeJobService(SCRIPT, { security: fleet.security, tokens: fleet.entries });
    const base = ['--coordinator', server.address, '--tls-dir', fleet.caOnlyDir];
    const listed = await run(['jobs', ...base], { DINOFLEET_TOKEN: fleet.tokens.read });
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/^ID\s+STATE.*\njob-1\s+RUNNING/);

    const denied = await run(['cancel', 'job-1', ...base], { DINOFLEET_TOKEN: fleet.tokens.read });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toBe('error: PERMISSION_DENIED: token t-read has scope read, but CancelJob needs admin; ask for a token with scope admin\n');

    const cancelled = await run(['cancel', 'job-1', ...base, '--token-file', fleet.tokenFiles.admin], {});
    expect(cancelled.code).toBe(0);
    expect(server.callers.map((c) => c.name)).toEqual(['t-read', 't-admin']);
  });

  it('keeps the UNAUTHENTICATED message and says where the token came from', async () => {
    await using server = await startFakeJobService(SCRIPT, { security: fleet.security, tokens: fleet.entries });
    const stranger = 'dft_' + 'Z'.repeat(43);
    const result = await run(['jobs', '--coordinator', server.address], { DINOFLEET_TLS_DIR: fleet.caOnlyDir, DINOFLEET_TOKEN: stranger });
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      "error: UNAUTHENTICATED: the bearer token is not one of this coordinator's API tokens (--api-tokens); check DINOFLEET_TOKEN (the token came from DINOFLEET_TOKEN)\n",
    );
    expect(result.stderr).not.toContain(stranger);
  });

  it('finds TLS and token in the fleet file of `dinofleet up`', async () => {
    await using server = await startFakeJobService(SCRIPT, { security: fleet.security, tokens: fleet.entries });
    await using dir = await tempDir();
    await writeFleetFile(dir.path, {
      coordinator: server.address,
      teacherSync: '127.0.0.1:1',
      redisUrl: '',
      s3Env: {},
      pid: process.pid,
      tlsDir: fleet.tlsDir,
      tokenFile: fleet.tokenFiles.admin,
    });
    const result = await run(['scale', 'job-1', '3'], {}, dir.path);
    expect(result.stderr).toBe('error: UNIMPLEMENTED: ScaleJob is not scripted\n'); // authenticated, authorised, answered
    expect(server.callers).toEqual([{ name: 't-admin', scope: 'admin' }]);
  });

  it('explains a server of another CA', async () => {
    await using server = await startFakeJobService(SCRIPT, { security: fleet.security, tokens: fleet.entries });
    const result = await run(['jobs', '--coordinator', server.address, '--tls-dir', fleet.rogueDir], { DINOFLEET_TOKEN: fleet.tokens.read });
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `error: could not connect securely to ${server.address}: its certificate was not issued by the CA in ${fleet.rogueDir}/ca.crt (self-signed certificate in certificate chain); check --tls-dir (the fleet's ca.crt) or, for a fleet started with --insecure, pass --insecure\n`,
    );
  });

  it('explains a plaintext server dialled with TLS, and a TLS server dialled in plaintext', async () => {
    await using plain = await startFakeJobService(SCRIPT);
    const tlsToPlain = await run(['jobs', '--coordinator', plain.address, '--tls-dir', fleet.caOnlyDir], { DINOFLEET_TOKEN: fleet.tokens.read });
    expect(tlsToPlain.code).toBe(1);
    expect(tlsToPlain.stderr).toMatch(
      new RegExp(
        `^error: could not connect securely to ${literal(plain.address)}: the server does not speak TLS \\(wrong version number\\); check --tls-dir \\(the fleet's ca\\.crt\\) or, for a fleet started with --insecure, pass --insecure\\n$`,
      ),
    );
    expect(plain.authorizationSent).toEqual([]); // the token never left

    await using secure = await startFakeJobService(SCRIPT, { security: fleet.security, tokens: fleet.entries });
    const plainToTls = await run(['jobs', '--coordinator', secure.address, '--insecure'], {});
    expect(plainToTls.code).toBe(1);
    expect(plainToTls.stderr).toBe(
      `error: could not connect securely to ${secure.address}: it serves TLS, but this command connected in plaintext (--insecure, or the fleet file of an insecure fleet); drop --insecure and pass --tls-dir DIR with the fleet's ca.crt (or set DINOFLEET_TLS_DIR)\n`,
    );
  });

  it('leaves a refused connection a plain UNAVAILABLE', async () => {
    const result = await run(['jobs', '--coordinator', '127.0.0.1:1', '--tls-dir', fleet.caOnlyDir], { DINOFLEET_TOKEN: fleet.tokens.read });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^error: UNAVAILABLE: .*ECONNREFUSED/);
  });
});

describe('probeTls', () => {
  it('tells TLS from plaintext and a refused client certificate from an accepted one', async () => {
    await using plain = await startFakeJobService(SCRIPT);
    await using secure = await startFakeJobService(SCRIPT, { security: fleet.security });
    const rogue = { kind: 'mtls' as const, material: loadTlsDir(fleet.rogueDir) };
    expect(await probeTls(secure.address, fleet.security)).toEqual({ kind: 'ok' });
    expect(await probeTls(secure.address, { kind: 'insecure' })).toEqual({ kind: 'ok' });
    expect((await probeTls(secure.address, rogue)).kind).toBe('refused');
    expect(await probeTls(plain.address, fleet.security)).toEqual({ kind: 'not-tls', detail: 'wrong version number' });
    expect((await probeTls('127.0.0.1:1', fleet.security)).kind).toBe('unknown');
  });
});
