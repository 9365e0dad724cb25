/**
 * `dinofleet certs`: a development CA and one fleet certificate signed by it, written as a
 * TLS directory (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`; see transport-security.ts).
 * ECDSA P-256, the fleet certificate valid for both server and client authentication.
 * For production use your own PKI (cert-manager) with the same file names.
 */
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { loadTlsDir, TLS_FILES, type TransportSecurity } from './transport-security.ts';
import { InvalidArgumentError } from './errors.ts';

type NodeCryptoKey = webcrypto.CryptoKey;

// @peculiar/x509's types name the DOM's Crypto; Node's webcrypto is that API.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

/** File name of the CA's private key beside the TLS files (keep it off the fleet's machines). */
export const CA_KEY_FILE = 'ca.key';

/** Options of {@link createDevCertificates}. */
export interface DevCertificateOptions {
  /** Extra DNS names or IP addresses of the fleet certificate, besides localhost, 127.0.0.1 and ::1. */
  readonly hosts?: readonly string[];
  /** Days the certificates are valid. @default 365 */
  readonly days?: number;
  /** Overwrite files that exist. @default false (refuse) */
  readonly force?: boolean;
  /** Common name of the CA, e.g. to tell two fleets apart. @default "dinofleet development CA" */
  readonly caName?: string;
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive
  return Buffer.from(bytes).toString('hex');
}

async function exportKeyPem(key: NodeCryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  const body = der.toString('base64').match(/.{1,64}/g)?.join('\n') ?? '';
  return `-----BEGIN PRIVATE KEY-----\n${body}\n-----END PRIVATE KEY-----\n`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes a new CA and a fleet certificate under `dir` (created if needed) and returns the
 * paths written. Refuses to overwrite unless `force`. Keys are written mode 0600.
 */
export async function createDevCertificates(dir: string, options: DevCertificateOptions = {}): Promise<string[]> {
  const days = options.days ?? 365;
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new InvalidArgumentError(`--days must be a whole number from 1 to 3650, not ${days}`);
  const hosts = [...new Set(['localhost', '127.0.0.1', '::1', ...(options.hosts ?? [])])];
  for (const host of hosts) {
    if (isIP(host) === 0 && !/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/.test(host)) {
      throw new InvalidArgumentError(`--host ${JSON.stringify(host)} is neither an IP address nor a DNS name`);
    }
  }
  const paths = { ca: join(dir, TLS_FILES.ca), caKey: join(dir, CA_KEY_FILE), cert: join(dir, TLS_FILES.cert), key: join(dir, TLS_FILES.key) };
  if (options.force !== true) {
    for (const path of Object.values(paths)) {
      if (await exists(path)) throw new InvalidArgumentError(`${path} exists; pass --force to replace the certificates in ${dir}`);
    }
  }
  await mkdir(dir, { recursive: true });
  const notBefore = new Date(Date.now() - 60_000);
  const notAfter = new Date(Date.now() + days * DAY_MS);

  const caKeys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']));
  const caName = `CN=${(options.caName ?? 'dinofleet development CA').replace(/[,=+<>#;"\\]/g, ' ')}, O=dinofleet`;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: caName,
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  const leafKeys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']));
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: 'CN=dinofleet fleet member, O=dinofleet',
    issuer: ca.subject,
    notBefore,
    notAfter,
    publicKey: leafKeys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(hosts.map((h) => (isIP(h) === 0 ? { type: 'dns' as const, value: h } : { type: 'ip' as const, value: h }))),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  await writeFile(paths.ca, ca.toString('pem') + '\n');
  await writeFile(paths.cert, leaf.toString('pem') + '\n');
  await writeFile(paths.caKey, await exportKeyPem(caKeys.privateKey), { mode: 0o600 });
  await writeFile(paths.key, await exportKeyPem(leafKeys.privateKey), { mode: 0o600 });
  await chmod(paths.caKey, 0o600);
  await chmod(paths.key, 0o600);
  return [paths.ca, paths.cert, paths.key, paths.caKey];
}

/** Whether `dir` already holds a complete TLS directory (ca.crt, tls.crt, tls.key). */
export async function hasTlsDir(dir: string): Promise<boolean> {
  for (const file of Object.values(TLS_FILES)) {
    if (!(await exists(join(dir, file)))) return false;
  }
  const ca = await readFile(join(dir, TLS_FILES.ca), 'utf8').catch(() => '');
  return ca.includes('BEGIN CERTIFICATE');
}

/** Transport security of one certificate set: always mutual TLS. */
export type MtlsSecurity = TransportSecurity & { readonly kind: 'mtls' };

/** The certificate sets tests need, from {@link createTestCertificates}. */
export interface TestCertificates {
  /** The temporary directory holding them all. */
  readonly root: string;
  /** The fleet's TLS directory (ca.crt, tls.crt, tls.key). */
  readonly tlsDir: string;
  /** A fleet member: the test CA and a certificate it issued. */
  readonly fleet: MtlsSecurity;
  /** A client with the fleet CA but no certificate of its own (an API client). */
  readonly caOnly: MtlsSecurity;
  /** A member of another fleet: another CA, trusting only that CA. */
  readonly rogue: MtlsSecurity;
  /**
   * The realistic attacker: it knows the fleet's CA certificate (it is public) and so
   * trusts the fleet's servers, but its own certificate was issued by another CA.
   */
  readonly rogueTrustingFleet: MtlsSecurity;
  /** Removes the directory. */
  close(): Promise<void>;
}

/** A test CA with a fleet certificate, a rogue CA with its own, in a new temporary directory. */
export async function createTestCertificates(prefix = 'dinofleet-test-tls-'): Promise<TestCertificates> {
  const root = await mkdtemp(join(tmpdir(), prefix));
  const tlsDir = join(root, 'fleet');
  await createDevCertificates(tlsDir);
  await createDevCertificates(join(root, 'rogue'), { caName: 'rogue CA' });
  const fleetMaterial = loadTlsDir(tlsDir);
  const rogueMaterial = loadTlsDir(join(root, 'rogue'));
  return {
    root,
    tlsDir,
    fleet: { kind: 'mtls', material: fleetMaterial },
    caOnly: { kind: 'mtls', material: { dir: tlsDir, ca: fleetMaterial.ca, caCerts: fleetMaterial.caCerts } },
    rogue: { kind: 'mtls', material: rogueMaterial },
    rogueTrustingFleet: { kind: 'mtls', material: { ...rogueMaterial, ca: fleetMaterial.ca, caCerts: fleetMaterial.caCerts } },
    close: () => rm(root, { recursive: true, force: true }),
  };
}
