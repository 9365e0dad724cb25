import { X509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { loadTlsDir } from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';

import { runCli } from './program.ts';
import { CapturedOutput, tempDir } from './testing/capture.ts';

async function run(argv: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const code = await runCli(argv, { stdout, stderr, env: {}, cwd });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

const DAY_MS = 24 * 60 * 60 * 1000;

describe('dinofleet certs', () => {
  it('writes a TLS directory the services accept, for the extra hosts and days asked, and says to keep ca.key away', async () => {
    await using dir = await tempDir();
    const result = await run(['certs', '--out', 'tls', '--host', 'coordinator.dinofleet.svc', '--host', '10.1.2.3', '--days', '30'], dir.path);
    expect(result.code).toBe(0);
    const out = join(dir.path, 'tls');
    expect(result.stdout).toBe(['ca.crt', 'tls.crt', 'tls.key', 'ca.key'].map((name) => `${join(out, name)}\n`).join(''));
    expect(result.stderr).toMatch(/^note: development certificates, valid 30 days/);
    expect(result.stderr).toContain(`Keep ${join(out, 'ca.key')} off the fleet's machines`);
    expect(result.stderr).toMatch(/cert-manager or your own PKI, with the same file names/);

    const material = loadTlsDir(out);
    const leaf = new X509Certificate(material.cert!);
    expect(leaf.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:coordinator.dinofleet.svc, IP Address:10.1.2.3');
    const days = (Date.parse(leaf.validTo) - Date.now()) / DAY_MS;
    expect(days).toBeGreaterThan(29.9);
    expect(days).toBeLessThan(30.1);
    expect((await stat(join(out, 'tls.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(out, 'ca.key'))).mode & 0o777).toBe(0o600);
  });

  it('refuses to overwrite without --force (exit 2, files unchanged) and replaces the CA with it', async () => {
    await using dir = await tempDir();
    expect((await run(['certs', '--out', 'tls'], dir.path)).code).toBe(0);
    const ca = await readFile(join(dir.path, 'tls', 'ca.crt'), 'utf8');

    const again = await run(['certs', '--out', 'tls'], dir.path);
    expect(again.code).toBe(2);
    expect(again.stdout).toBe('');
    expect(again.stderr).toBe(`error: ${join(dir.path, 'tls', 'ca.crt')} exists; pass --force to replace the certificates in ${join(dir.path, 'tls')}\n`);
    expect(await readFile(join(dir.path, 'tls', 'ca.crt'), 'utf8')).toBe(ca);

    const forced = await run(['certs', '--out', 'tls', '--force'], dir.path);
    expect(forced.code).toBe(0);
    expect(await readFile(join(dir.path, 'tls', 'ca.crt'), 'utf8')).not.toBe(ca);
  });

  it.each([
    [['certs'], /required option '--out <dir>' not specified/],
    [['certs', '--out', 'x', '--days', '0'], /must be an integer >= 1/],
    [['certs', '--out', 'x', '--days', '5000'], /^error: --days must be a whole number from 1 to 3650, not 5000\n$/],
    [['certs', '--out', 'x', '--host', 'not a host'], /^error: --host "not a host" is neither an IP address nor a DNS name\n$/],
  ])('%j exits 2 with a message', async (argv, message) => {
    await using dir = await tempDir();
    const result = await run(argv, dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });
});
