import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';

import { ApiTokenAuthenticator, hashApiToken, loadApiTokens } from '@dinofleet/proto';
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';

import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';

async function run(argv: string[], cwd: string, stdinText?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const stdin = Readable.from(stdinText !== undefined ? [Buffer.from(stdinText)] : []);
  const code = await runCli(argv, { stdout, stderr, env: {}, cwd, stdin });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

function bearer(token: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

const TOKEN_LINE = /^dft_[A-Za-z0-9_-]{43}\n$/;

describe('dinofleet token create', () => {
  it('prints the token alone on stdout and its tokens-file line on stderr', async () => {
    await using dir = await tempDir();
    const result = await run(['token', 'create', '--name', 'alice', '--scope', 'submit'], dir.path);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(TOKEN_LINE);
    const token = result.stdout.trim();
    const line = `alice submit ${hashApiToken(token)}`;
    expect(result.stderr).toBe(
      `add this line to the coordinator's tokens file (--api-tokens):\n${line}\nthe token is shown only this once: keep it secret, e.g. in a file of mode 0600 for --token-file.\n`,
    );
    expect(result.stderr).not.toContain(token);
  });

  it('appends to a tokens file (created mode 0600) that the coordinator accepts, and refuses a name twice', async () => {
    await using dir = await tempDir();
    const file = join(dir.path, 'api-tokens');
    const alice = await run(['token', 'create', '--name', 'alice', '--scope', 'read', '--tokens-file', 'api-tokens'], dir.path);
    expect(alice.code).toBe(0);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(alice.stderr).toMatch(/^appended to api-tokens:\nalice read sha256:[0-9a-f]{64}\nthe coordinator reads its tokens file at start/);

    // A hand-edited file without a final newline gets one before the new line.
    await writeFile(file, `${(await readFile(file, 'utf8')).trimEnd()}  # alice's laptop`);
    const ops = await run(['token', 'create', '--name', 'ops@example.com', '--scope', 'admin', '--tokens-file', file], dir.path);
    expect(ops.code).toBe(0);

    const authenticator = new ApiTokenAuthenticator(loadApiTokens(file));
    expect(authenticator.authenticate(bearer(alice.stdout.trim()))).toEqual({ name: 'alice', scope: 'read' });
    expect(authenticator.authenticate(bearer(ops.stdout.trim()))).toEqual({ name: 'ops@example.com', scope: 'admin' });

    const before = await readFile(file, 'utf8');
    const again = await run(['token', 'create', '--name', 'alice', '--scope', 'admin', '--tokens-file', file], dir.path);
    expect(again.code).toBe(2);
    expect(again.stdout).toBe('');
    expect(again.stderr).toBe(`error: ${file} has a token named alice already; pick another --name, or delete that line first to replace the token\n`);
    expect(await readFile(file, 'utf8')).toBe(before);
  });

  it('refuses to add to a tokens file that does not parse, naming the line, without writing', async () => {
    await using dir = await tempDir();
    const file = join(dir.path, 'api-tokens');
    await writeFile(file, 'bob root sha256:00\n');
    const result = await run(['token', 'create', '--name', 'alice', '--scope', 'read', '--tokens-file', file], dir.path);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^error: .*api-tokens line 1: .*; fix the file before adding to it\n$/);
    expect(await readFile(file, 'utf8')).toBe('bob root sha256:00\n');
  });

  it.each([
    [['token', 'create', '--scope', 'read'], /required option '--name <name>' not specified/],
    [['token', 'create', '--name', 'alice'], /required option '--scope <scope>' not specified/],
    [['token', 'create', '--name', 'alice', '--scope', 'root'], /Allowed choices are read, submit, admin/],
    [['token', 'create', '--name', 'al ice', '--scope', 'read'], /^error: --name "al ice": no spaces allowed\n$/],
    [['token', 'create', '--name', '-alice', '--scope', 'read'], /^error: --name "-alice": name must be 1-64 of A-Z a-z 0-9 \. _ @ - \(starting with a letter or digit\)\n$/],
    [['token', 'hash', '--name', 'alice'], /^error: --name and --scope go together\n$/],
  ])('%j exits 2 with a message', async (argv, message) => {
    await using dir = await tempDir();
    const result = await run(argv, dir.path);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(message);
  });
});

describe('dinofleet token hash', () => {
  it('prints the hash of the token on stdin, or its whole line with --name and --scope', async () => {
    await using dir = await tempDir();
    const created = await run(['token', 'create', '--name', 'x', '--scope', 'read'], dir.path);
    const token = created.stdout.trim();
    const hash = await run(['token', 'hash'], dir.path, `${token}\n`);
    expect(hash.code).toBe(0);
    expect(hash.stdout).toBe(`${hashApiToken(token)}\n`);
    expect(created.stderr).toContain(hashApiToken(token));
    const line = await run(['token', 'hash', '--name', 'carol', '--scope', 'admin'], dir.path, token);
    expect(line.stdout).toBe(`carol admin ${hashApiToken(token)}\n`);
  });

  it('refuses input that is not a dinofleet token without echoing it', async () => {
    await using dir = await tempDir();
    const secret = 'hunter2-my-password';
    const result = await run(['token', 'hash'], dir.path, secret);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^error: stdin does not hold a dinofleet API token \(dft_ and 43 base64url characters/);
    expect(result.stderr).not.toContain(secret);
    expect((await run(['token', 'hash'], dir.path, '')).stderr).toMatch(/^error: stdin is empty/);
  });
});
