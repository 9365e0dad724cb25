/**
 * Turning a failed connection into a message that says what to fix. grpc-js reports every
 * connection problem as UNAVAILABLE; a TLS problem (a server of another CA, a plaintext
 * server, a TLS server dialled in plaintext, a client certificate refused) is told apart
 * by the error's text or, when that says only "Failed to connect", by a TLS handshake of
 * our own against the same address.
 */
import { connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';

import { ErrorCode, fromServiceError, isDinofleetError, isServiceError, TLS_FILES, TLS_SERVER_NAME } from '@dinofleet/proto';
import type { TransportSecurity } from '@dinofleet/proto';

import { CliError, ExitCode } from './cli-error.ts';

/** What {@link probeTls} found at an address. */
export type TlsProbe =
  /** The handshake succeeded with our settings (and the server did not drop us at once). */
  | { readonly kind: 'ok' }
  /** The port answers, but not with TLS. */
  | { readonly kind: 'not-tls'; readonly detail: string }
  /** The port speaks TLS but the handshake with our settings failed. */
  | { readonly kind: 'refused'; readonly detail: string }
  /** Nothing useful answered (refused, timed out, closed). */
  | { readonly kind: 'unknown'; readonly detail: string };

/** How long {@link probeTls} waits, ms. */
const PROBE_TIMEOUT_MS = 3_000;
/** After a TLS 1.3 handshake, how long to wait for the server to refuse our certificate, ms. */
const PROBE_SETTLE_MS = 300;

/** Errors of a connection that never reached a server: not a TLS matter. */
const UNREACHABLE = /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|Name resolution failed|DNS resolution failed/i;
/** Errors that are TLS problems by their text. */
const TLS_TEXT = /\bSSL\b|\bTLS\b|certificate|handshake|wrong version number|alert/i;

/** The host and port of `host:port` (`[v6]:port` too). */
function splitAddress(address: string): { host: string; port: number } | undefined {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (match === null) return undefined;
  return { host: match[1]!, port: Number(match[2]) };
}

/** The informative part of an OpenSSL or Node TLS message. */
export function tlsErrorDetail(message: string): string {
  const openssl = /SSL routines:[^:]*:([^:]+)/.exec(message);
  if (openssl !== null) return openssl[1]!.trim();
  const lastError = /Last error: (?:Error: )?(.*?)(?: \(\d{4}-\d\d-\d\dT[^)]*\))?\.? Resolution note/s.exec(message);
  return (lastError?.[1] ?? message).trim();
}

/**
 * A TLS handshake against `address` with `security`'s settings (or, when insecure, with
 * no verification at all, to learn whether the port speaks TLS). Never throws.
 */
export function probeTls(address: string, security: TransportSecurity, timeoutMs = PROBE_TIMEOUT_MS): Promise<TlsProbe> {
  const target = splitAddress(address);
  if (target === undefined) return Promise.resolve({ kind: 'unknown', detail: `not host:port: ${address}` });
  const options: ConnectionOptions =
    security.kind === 'mtls'
      ? {
          ca: security.material.ca,
          ...(security.material.cert !== undefined && { cert: security.material.cert }),
          ...(security.material.key !== undefined && { key: security.material.key }),
          rejectUnauthorized: true,
          checkServerIdentity: () => undefined,
        }
      : { rejectUnauthorized: false };
  return new Promise((resolve) => {
    let settled = false;
    let handshaken = false;
    const socket = tlsConnect({ host: target.host, port: target.port, servername: TLS_SERVER_NAME, ALPNProtocols: ['h2'], ...options });
    const timer = setTimeout(() => finish({ kind: 'unknown', detail: `no TLS handshake within ${timeoutMs} ms` }), timeoutMs);
    function finish(result: TlsProbe): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    }
    socket.on('secureConnect', () => {
      handshaken = true;
      // TLS 1.3: the server checks our certificate after we consider the handshake done,
      // so a refusal arrives as an alert a moment later.
      setTimeout(() => finish({ kind: 'ok' }), PROBE_SETTLE_MS);
    });
    socket.on('data', () => undefined);
    socket.on('error', (error: NodeJS.ErrnoException) => {
      const detail = tlsErrorDetail(error.message);
      if (UNREACHABLE.test(error.message) || (error.code !== undefined && UNREACHABLE.test(error.code))) finish({ kind: 'unknown', detail });
      else if (/wrong version number|packet length too long|unknown protocol/i.test(error.message)) finish({ kind: 'not-tls', detail });
      else if (handshaken || TLS_TEXT.test(error.message)) finish({ kind: 'refused', detail });
      else finish({ kind: 'unknown', detail });
    });
    socket.on('close', () =>
      finish(
        handshaken
          ? { kind: 'refused', detail: "the server closed the connection right after the TLS handshake (it did not accept this client's certificate)" }
          : { kind: 'unknown', detail: 'the connection closed during the TLS handshake' },
      ),
    );
  });
}

/** Plain words for the usual TLS failures. */
function explainDetail(detail: string, security: TransportSecurity): string {
  const caFile = security.kind === 'mtls' ? `${security.material.dir}/${TLS_FILES.ca}` : TLS_FILES.ca;
  if (/wrong version number|packet length too long|unknown protocol/i.test(detail)) return `the server does not speak TLS (${detail})`;
  if (/self[- ]signed|unable to (verify|get local issuer)|certificate signature failure/i.test(detail)) {
    return `its certificate was not issued by the CA in ${caFile} (${detail})`;
  }
  if (/certificate required/i.test(detail)) return `it accepts only clients with a certificate of the fleet CA (${TLS_FILES.cert}, ${TLS_FILES.key}) (${detail})`;
  if (/unknown ca|bad certificate|certificate unknown|decrypt error/i.test(detail)) return `it refused this client's certificate, which its fleet CA did not issue (${detail})`;
  if (/expired|not yet valid/i.test(detail)) return `a certificate is outside its validity (${detail})`;
  return detail;
}

const DEFAULT_HINT = "check --tls-dir (the fleet's ca.crt) or, for a fleet started with --insecure, pass --insecure";

/**
 * For an UNAVAILABLE that is a TLS problem at `address`, a {@link CliError} saying
 * "could not connect securely to <address>: <why>; <what to do>"; any other error as it
 * is. UNAUTHENTICATED and PERMISSION_DENIED keep the server's message (reportError).
 */
export async function explainConnectionError(error: unknown, address: string, security: TransportSecurity): Promise<unknown> {
  if (error instanceof CliError || !(isDinofleetError(error) || isServiceError(error))) return error;
  const known = fromServiceError(error);
  if (known.code !== ErrorCode.Unavailable || UNREACHABLE.test(known.message)) return error;
  const fail = (why: string, hint = DEFAULT_HINT): CliError => new CliError(`could not connect securely to ${address}: ${why}; ${hint}`, ExitCode.Failure, { cause: error });
  if (TLS_TEXT.test(known.message)) return fail(explainDetail(tlsErrorDetail(known.message), security));
  // "Failed to connect" / "Connection dropped": ask the port itself.
  const probe = await probeTls(address, security);
  if (security.kind === 'insecure') {
    if (probe.kind === 'ok' || probe.kind === 'refused') {
      return fail(
        'it serves TLS, but this command connected in plaintext (--insecure, or the fleet file of an insecure fleet)',
        "drop --insecure and pass --tls-dir DIR with the fleet's ca.crt (or set DINOFLEET_TLS_DIR)",
      );
    }
    return error;
  }
  if (probe.kind === 'not-tls' || probe.kind === 'refused') return fail(explainDetail(probe.detail, security));
  return error;
}

/** Whether `error` is a connection failure that retrying will not cure (a TLS problem by its text). */
export function isTlsFailure(error: unknown): boolean {
  if (!(isDinofleetError(error) || isServiceError(error))) return false;
  const known = fromServiceError(error);
  return known.code === ErrorCode.Unavailable && !UNREACHABLE.test(known.message) && TLS_TEXT.test(known.message);
}
