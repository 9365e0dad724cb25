/**
 * Transport security of every dinofleet connection (docs/security.md): mutual TLS with
 * certificates from the fleet's own CA, or plaintext only when a process was started with
 * `--insecure`. A TLS directory holds `ca.crt`, `tls.crt` and `tls.key`, the layout of a
 * cert-manager Secret (and of `dinofleet certs`).
 *
 * Trust is membership of the fleet CA: a peer is accepted when its certificate was issued
 * by a CA in `ca.crt` and it proves it holds the key. Host names are not checked (ring
 * peers dial pod IPs), so `ca.crt` must be a private CA for this fleet, never a public one.
 */
import { readFileSync, statSync } from 'node:fs';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { credentials as grpcCredentials, experimental, Metadata, ServerCredentials } from '@grpc/grpc-js';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { TLS_SERVER_NAME } from './client.ts';
import { InvalidArgumentError, UnauthenticatedError } from './errors.ts';

/** File names inside a TLS directory. */
export const TLS_FILES = { ca: 'ca.crt', cert: 'tls.crt', key: 'tls.key' } as const;

/** PEM material of a TLS directory, checked by {@link loadTlsDir}. */
export interface TlsMaterial {
  /** The directory it came from (for messages). */
  readonly dir: string;
  /** `ca.crt`: the fleet CA (a bundle may hold several, e.g. during a CA rotation). */
  readonly ca: Buffer;
  /** The CA certificates parsed. */
  readonly caCerts: readonly X509Certificate[];
  /** `tls.crt` (leaf first), absent when the directory holds only a CA. */
  readonly cert?: Buffer;
  /** `tls.key`, absent when the directory holds only a CA. */
  readonly key?: Buffer;
}

/** How a process secures its connections. */
export type TransportSecurity = { readonly kind: 'mtls'; readonly material: TlsMaterial } | { readonly kind: 'insecure' };

/** Plaintext, no authentication: only with an explicit `--insecure`. */
export const INSECURE: TransportSecurity = Object.freeze({ kind: 'insecure' });

/** A TLS directory that cannot be used; the message names the file and the fix. */
export class TlsConfigError extends InvalidArgumentError {
}

const HOW_TO_GET =
  'create development certificates with `dinofleet certs --out <dir>`, or mount a Secret with ca.crt, tls.crt and tls.key (cert-manager writes that layout)';

function readPem(path: string, what: string): Buffer {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new TlsConfigError(`TLS: ${what} ${path} does not exist; ${HOW_TO_GET}`);
  }
  if (size > 1024 * 1024) throw new TlsConfigError(`TLS: ${what} ${path} is ${size} bytes, not a PEM file`);
  const text = readFileSync(path);
  if (!text.includes('-----BEGIN ')) throw new TlsConfigError(`TLS: ${what} ${path} is not PEM (no -----BEGIN line)`);
  return text;
}

/** Every certificate of a PEM bundle. */
function parseCertificates(pem: Buffer, path: string, what: string): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new TlsConfigError(`TLS: ${what} ${path} holds no certificate`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new TlsConfigError(`TLS: certificate ${i + 1} of ${what} ${path} cannot be parsed: ${(err as Error).message}`);
    }
  });
}

function checkValidity(cert: X509Certificate, path: string, what: string, now: number): void {
  if (Date.parse(cert.validTo) < now) throw new TlsConfigError(`TLS: ${what} ${path} expired on ${cert.validTo}; issue a new one`);
  if (Date.parse(cert.validFrom) > now) throw new TlsConfigError(`TLS: ${what} ${path} is not valid before ${cert.validFrom}; check the clock`);
}

/** Whether `cert` was issued (and signed) by one of `cas`. */
export function issuedByAny(cert: X509Certificate, cas: readonly X509Certificate[]): boolean {
  return cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey));
}

/**
 * Reads and checks a TLS directory: every file PEM, the certificate issued by the CA,
 * the key matching the certificate, nothing expired. With `requireIdentity: false` a
 * directory holding only `ca.crt` passes (a client that only verifies the server).
 * Error messages name files, never their contents.
 */
export function loadTlsDir(dir: string, options: { requireIdentity?: boolean; now?: number } = {}): TlsMaterial {
  const now = options.now ?? Date.now();
  const caPath = join(dir, TLS_FILES.ca);
  const ca = readPem(caPath, 'CA certificate');
  const caCerts = parseCertificates(ca, caPath, 'CA certificate');
  caCerts.forEach((c) => checkValidity(c, caPath, 'CA certificate', now));
  const certPath = join(dir, TLS_FILES.cert);
  const keyPath = join(dir, TLS_FILES.key);
  let hasIdentity = true;
  try {
    statSync(certPath);
  } catch {
    hasIdentity = false;
  }
  if (!hasIdentity) {
    if (options.requireIdentity ?? true) readPem(certPath, 'certificate'); // throws the message
    return { dir, ca, caCerts };
  }
  const cert = readPem(certPath, 'certificate');
  const key = readPem(keyPath, 'private key');
  const [leaf] = parseCertificates(cert, certPath, 'certificate');
  if (leaf === undefined) throw new TlsConfigError(`TLS: certificate ${certPath} holds no certificate`);
  checkValidity(leaf, certPath, 'certificate', now);
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new TlsConfigError(`TLS: private key ${keyPath} cannot be parsed (PEM PKCS#8, PKCS#1 or SEC1 without a passphrase)`);
  }
  if (!leaf.checkPrivateKey(privateKey)) throw new TlsConfigError(`TLS: private key ${keyPath} does not belong to certificate ${certPath}`);
  if (!issuedByAny(leaf, caCerts)) {
    throw new TlsConfigError(`TLS: certificate ${certPath} (${leaf.subject.replace(/\n/g, ', ')}) was not issued by the CA in ${caPath}; use a certificate of this fleet's CA`);
  }
  return { dir, ca, caCerts, cert, key };
}

/** Settings of the TLS flags every process shares (`--tls-dir`, `--insecure`). */
export interface TransportSecurityFlags {
  readonly tlsDir?: string | undefined;
  readonly insecure?: boolean | undefined;
}

/**
 * The transport security chosen by `--tls-dir DIR` or `--insecure` (exactly one), for a
 * process that is a member of the fleet (it needs a certificate of its own).
 */
export function transportSecurityFromFlags(flags: TransportSecurityFlags, options: { requireIdentity?: boolean } = {}): TransportSecurity {
  const tlsDir = flags.tlsDir === '' ? undefined : flags.tlsDir;
  if (flags.insecure === true && tlsDir !== undefined) throw new TlsConfigError('--insecure and --tls-dir exclude each other: pick one');
  if (flags.insecure === true) return INSECURE;
  if (tlsDir === undefined) {
    throw new TlsConfigError(
      `no TLS material: pass --tls-dir DIR (or DINOFLEET_TLS_DIR) with ca.crt, tls.crt and tls.key (${HOW_TO_GET.replace(/^create/, 'to create them: ')}), or --insecure for plaintext without authentication`,
    );
  }
  return { kind: 'mtls', material: loadTlsDir(tlsDir, options) };
}

/** The warning a process logs at start when it runs with `--insecure`. */
export const INSECURE_WARNING =
  '--insecure: connections are plaintext and unauthenticated; anyone who reaches these ports can join the fleet, read gradients and submit jobs. Use --tls-dir outside a trusted test network.';

function identity(material: TlsMaterial, role: string): { cert: Buffer; key: Buffer } {
  if (material.cert === undefined || material.key === undefined) {
    throw new TlsConfigError(`TLS: ${material.dir} holds only ca.crt, but a ${role} needs ${TLS_FILES.cert} and ${TLS_FILES.key} too`);
  }
  return { cert: material.cert, key: material.key };
}

/**
 * A certificate provider that hands out fixed PEM material (grpc-js's experimental API),
 * the CA and the identity both: grpc-js 1.14's `createCertificateProviderServerCredentials`
 * passes its two providers to the constructor swapped, so each must answer for both.
 * Listeners are called on a microtask because grpc-js adds its own watcher only after
 * subscribing; an update delivered at once would be lost (every connection dropped as
 * "credentials not loaded").
 */
function staticProvider(ca: Buffer, certificate: Buffer, privateKey: Buffer): experimental.CertificateProvider {
  return {
    addCaCertificateListener(listener) {
      queueMicrotask(() => listener({ caCertificate: ca }));
    },
    removeCaCertificateListener() {},
    addIdentityCertificateListener(listener) {
      queueMicrotask(() => listener({ certificate, privateKey }));
    },
    removeIdentityCertificateListener() {},
  };
}

/**
 * Server credentials. `clientCertificate: 'require'` is mutual TLS at the handshake: a
 * client without a certificate of the fleet CA cannot connect (workers, teacher-sync).
 * `'request'` asks for one but lets clients without it in, so one port can serve the job
 * API (bearer tokens) beside fleet-only services that call {@link requireFleetPeer}.
 */
export function serverCredentials(security: TransportSecurity, options: { clientCertificate: 'require' | 'request' }): ServerCredentials {
  if (security.kind === 'insecure') return ServerCredentials.createInsecure();
  const { cert, key } = identity(security.material, 'server');
  if (options.clientCertificate === 'require') {
    return ServerCredentials.createSsl(security.material.ca, [{ cert_chain: cert, private_key: key }], true);
  }
  const provider = staticProvider(security.material.ca, cert, key);
  return experimental.createCertificateProviderServerCredentials(provider, provider, false);
}

/**
 * Channel credentials for a client: TLS verifying the server against the fleet CA,
 * presenting this process's certificate when it has one, and sending `token` as
 * `authorization: Bearer …` on every call when given.
 */
export function channelCredentials(security: TransportSecurity, options: { token?: string | undefined } = {}): ChannelCredentials {
  if (security.kind === 'insecure') return grpcCredentials.createInsecure();
  const { material } = security;
  const tls = grpcCredentials.createSsl(material.ca, material.key ?? null, material.cert ?? null, {
    // Host names are not part of the trust model (see the file comment); the chain is.
    checkServerIdentity: () => undefined,
  });
  const token = options.token;
  if (token === undefined || token === '') return tls;
  return grpcCredentials.combineChannelCredentials(
    tls,
    grpcCredentials.createFromMetadataGenerator((_params, callback) => {
      const metadata = new Metadata();
      metadata.set('authorization', `Bearer ${token}`);
      callback(null, metadata);
    }),
  );
}

/** What grpc-js tells a handler about the connection (its `call.getAuthContext()`). */
interface AuthContextLike {
  readonly transportSecurityType?: string;
  readonly sslPeerCertificate?: { readonly raw?: Buffer } | undefined;
}

/** Whether the caller of `call` presented a certificate issued by the fleet CA (always true when insecure). */
export function isFleetPeer(call: { getAuthContext(): AuthContextLike }, security: TransportSecurity): boolean {
  if (security.kind === 'insecure') return true;
  const raw = call.getAuthContext().sslPeerCertificate?.raw;
  if (raw === undefined) return false;
  try {
    const cert = new X509Certificate(raw);
    const now = Date.now();
    return issuedByAny(cert, security.material.caCerts) && Date.parse(cert.validFrom) <= now && Date.parse(cert.validTo) >= now;
  } catch {
    return false;
  }
}

/** Throws UNAUTHENTICATED unless the caller is a member of the fleet ({@link isFleetPeer}). */
export function requireFleetPeer(call: { getAuthContext(): AuthContextLike }, security: TransportSecurity, service: string): void {
  if (!isFleetPeer(call, security)) {
    throw new UnauthenticatedError(`${service} is for fleet members only: connect with a certificate issued by the fleet CA (--tls-dir)`);
  }
}

/**
 * Options for `tls.createServer` / `tls.connect` on the all-reduce data links: TLS 1.3,
 * both sides present a certificate of the fleet CA, host names not checked.
 */
export function dataLinkTlsOptions(material: TlsMaterial): TlsOptions & ConnectionOptions {
  const { cert, key } = identity(material, 'ring member');
  return {
    ca: material.ca,
    cert,
    key,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    // A fixed SNI name: peers are dialled by IP, which Node warns about as a server name.
    servername: TLS_SERVER_NAME,
    checkServerIdentity: () => undefined,
  };
}
