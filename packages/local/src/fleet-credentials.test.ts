import { appendFile, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ApiTokenAuthenticator, hashApiToken, loadApiTokens, loadTlsDir } from '@dinofleet/proto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { ensureLocalFleetCredentials } from './fleet-credentials.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dinofleet-credentials-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Request metadata carrying `token` (all the authenticator reads of grpc-js's Metadata). */
function bearer(token: string): Parameters<ApiTokenAuthenticator['authenticate']>[0] {
  const metadata = { get: (key: string) => (key === 'authorization' ? [`Bearer ${token}`] : []) };
  return metadata as unknown as Parameters<ApiTokenAuthenticator['authenticate']>[0];
}

async function mode(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

describe('ensureLocalFleetCredentials', () => {
  it('creates a TLS directory and a tokens file whose tokens authenticate with their scopes, secrets mode 0600', async () => {
    const made = await ensureLocalFleetCredentials(dir);
    expect(made.createdCertificates).toBe(true);
    expect(made.createdTokens).toBe(true);
    expect(loadTlsDir(made.tlsDir).cert).toBeDefined();

    const authenticator = new ApiTokenAuthenticator(loadApiTokens(made.apiTokensFile));
    expect(authenticator.size).toBe(3);
    expect(authenticator.authenticate(bearer(made.tokens.admin))).toEqual({ name: 'local-admin', scope: 'admin' });
    expect(authenticator.authenticate(bearer(made.tokens.submit))).toEqual({ name: 'local-submit', scope: 'submit' });
    expect(authenticator.authenticate(bearer(made.tokens.read))).toEqual({ name: 'local-read', scope: 'read' });
    expect(new Set(Object.values(made.tokens)).size).toBe(3);

    // The tokens file holds hashes only; each token sits alone in its own file.
    const tokensFile = await readFile(made.apiTokensFile, 'utf8');
    for (const token of Object.values(made.tokens)) expect(tokensFile).not.toContain(token);
    expect(await readFile(join(dir, 'token'), 'utf8')).toBe(`${made.tokens.admin}\n`);
    expect(await readFile(made.tokenFiles.read, 'utf8')).toBe(`${made.tokens.read}\n`);
    for (const path of [...Object.values(made.tokenFiles), made.apiTokensFile, join(made.tlsDir, 'tls.key'), join(made.tlsDir, 'ca.key')]) {
      expect(await mode(path), path).toBe(0o600);
    }
  });

  it('reuses certificates and tokens, keeping lines a user added', async () => {
    const first = await ensureLocalFleetCredentials(dir);
    const ca = await readFile(join(first.tlsDir, 'ca.crt'), 'utf8');
    const userLine = `alice read ${hashApiToken('dft_' + 'a'.repeat(43))}`;
    await appendFile(first.apiTokensFile, `${userLine}\n`);

    const second = await ensureLocalFleetCredentials(dir);
    expect(second.createdCertificates).toBe(false);
    expect(second.createdTokens).toBe(false);
    expect(second.tokens).toEqual(first.tokens);
    expect(await readFile(join(second.tlsDir, 'ca.crt'), 'utf8')).toBe(ca);
    expect(loadApiTokens(second.apiTokensFile).map((e) => e.name)).toEqual(['local-admin', 'local-submit', 'local-read', 'alice']);
  });

  it('replaces a token whose file is gone or does not match, and keeps the others and the user lines', async () => {
    const first = await ensureLocalFleetCredentials(dir);
    const userLine = `bob submit ${hashApiToken('dft_' + 'b'.repeat(43))}`;
    await appendFile(first.apiTokensFile, `${userLine}\n`);
    await unlink(first.tokenFiles.submit);
    await writeFile(first.tokenFiles.read, 'dft_not-the-one\n');

    const second = await ensureLocalFleetCredentials(dir);
    expect(second.createdTokens).toBe(true);
    expect(second.createdCertificates).toBe(false);
    expect(second.tokens.admin).toBe(first.tokens.admin);
    expect(second.tokens.submit).not.toBe(first.tokens.submit);
    expect(second.tokens.read).not.toBe(first.tokens.read);
    const entries = loadApiTokens(second.apiTokensFile);
    expect(entries.map((e) => e.name).sort()).toEqual(['bob', 'local-admin', 'local-read', 'local-submit']);
    const authenticator = new ApiTokenAuthenticator(entries);
    expect(authenticator.authenticate(bearer(second.tokens.submit)).scope).toBe('submit');
    expect(() => authenticator.authenticate(bearer(first.tokens.submit))).toThrow(/not one of this coordinator's API tokens/);
  });

  it('replaces unusable certificates but refuses to overwrite a tokens file it cannot parse', async () => {
    const first = await ensureLocalFleetCredentials(dir);
    await writeFile(join(first.tlsDir, 'tls.key'), '-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n');
    const second = await ensureLocalFleetCredentials(dir);
    expect(second.createdCertificates).toBe(true);
    expect(loadTlsDir(second.tlsDir).key).toBeDefined();

    await writeFile(first.apiTokensFile, 'alice root sha256:00\n');
    await expect(ensureLocalFleetCredentials(dir)).rejects.toThrow(/api-tokens line 1/);
    expect(await readFile(first.apiTokensFile, 'utf8')).toBe('alice root sha256:00\n');
  });
});
