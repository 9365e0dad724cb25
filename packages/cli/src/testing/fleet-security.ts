/**
 * Test helpers: the TLS directories and API tokens of a made-up fleet, as the CLI's tests
 * need them (a full fleet directory, a CA-only one, one of another CA, a token per scope).
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { generateApiToken, hashApiToken, loadTlsDir } from '@dinofleet/proto';
import type { ApiScope, ApiTokenEntry, TransportSecurity } from '@dinofleet/proto';
import { createDevCertificates } from '@dinofleet/proto/dev-certificates';

/** What {@link createFleetSecurity} made; `dispose` removes it all. */
export interface FleetSecurityFixture extends AsyncDisposable {
  /** Root of everything below. */
  readonly root: string;
  /** ca.crt, ca.key, tls.crt, tls.key of the fleet. */
  readonly tlsDir: string;
  /** ca.crt of the fleet only (what a job API client needs). */
  readonly caOnlyDir: string;
  /** A complete TLS directory of another CA. */
  readonly rogueDir: string;
  /** The fleet's security, as a server of the fleet loads it. */
  readonly security: TransportSecurity;
  /** One token per scope (names `t-admin`, `t-submit`, `t-read`). */
  readonly tokens: Readonly<Record<ApiScope, string>>;
  /** Their tokens-file entries. */
  readonly entries: readonly ApiTokenEntry[];
  /** Files holding each token alone, mode 0600. */
  readonly tokenFiles: Readonly<Record<ApiScope, string>>;
}

/** Makes a fleet's TLS directories and tokens under a fresh temp directory. */
export async function createFleetSecurity(): Promise<FleetSecurityFixture> {
  const root = await mkdtemp(join(tmpdir(), 'dinofleet-cli-tls-'));
  const tlsDir = join(root, 'fleet');
  const caOnlyDir = join(root, 'ca-only');
  const rogueDir = join(root, 'rogue');
  await createDevCertificates(tlsDir);
  await createDevCertificates(rogueDir, { caName: 'rogue CA' });
  await mkdir(caOnlyDir);
  await copyFile(join(tlsDir, 'ca.crt'), join(caOnlyDir, 'ca.crt'));
  const scopes: ApiScope[] = ['admin', 'submit', 'read'];
  const tokens = Object.fromEntries(scopes.map((scope) => [scope, generateApiToken()])) as Record<ApiScope, string>;
  const entries = scopes.map((scope) => ({ name: `t-${scope}`, scope, hash: hashApiToken(tokens[scope]) }));
  const tokenFiles = Object.fromEntries(scopes.map((scope) => [scope, join(root, `token.${scope}`)])) as Record<ApiScope, string>;
  for (const scope of scopes) await writeFile(tokenFiles[scope], `${tokens[scope]}\n`, { mode: 0o600 });
  return {
    root,
    tlsDir,
    caOnlyDir,
    rogueDir,
    security: { kind: 'mtls', material: loadTlsDir(tlsDir) },
    tokens,
    entries,
    tokenFiles,
    [Symbol.asyncDispose]: () => rm(root, { recursive: true, force: true }),
  };
}
