/**
 * A worker's TCP data listener: where receivers dial the data links of the all-reduce
 * (docs/collective.md). It issues the one-time tokens that `OpenDataLink` hands out over
 * gRPC, reads each connection's hello, checks its token, and passes the socket on. A
 * connection without a valid token is closed after a refusal that says why: only a
 * caller of this worker's gRPC service (mutually authenticated under mTLS) can open a data
 * link.
 *
 * Under mTLS the listener speaks TLS 1.3 and requires a certificate of the fleet CA
 * (`dataLinkTlsOptions`): a connection that fails the handshake is dropped before a byte
 * of its hello is read, and reported through {@link DataListenerOptions.onRefused}.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { InvalidArgumentError, UnavailableError } from '@dinofleet/proto';
import { DATA_LINK_TOKEN_BYTES, HelloStatus, decodeHello, encodeHelloReply, helloSize } from './data-frame.ts';
import type { DataLinkHello } from './data-frame.ts';

/** How long a token from OpenDataLink stays valid, in ms. */
export const DATA_LINK_TOKEN_TTL_MS = 60_000;
/** Time a connection has to send its hello, in ms. */
const HELLO_TIMEOUT_MS = 10_000;
/** Most tokens outstanding at once; beyond it the oldest are dropped. */
const MAX_TOKENS = 4096;

interface IssuedToken {
  readonly token: Buffer;
  readonly job: string;
  readonly generation: number;
  readonly senderRank: number;
  readonly receiverRank: number;
  readonly expiresAt: number;
}

/** What a link's sender needs to know about the accepted socket. */
export type DataLinkHandler = (socket: net.Socket, hello: DataLinkHello) => void;

/** A data-link connection the listener dropped, for the owner's log (never holds a token or key). */
export interface DataLinkRefusal {
  /** Where it came from, "host:port" ("unknown" when the socket was already gone). */
  readonly remoteAddress: string;
  /**
   * `handshake`: TLS failed (no certificate, one of another CA, plaintext, an old TLS
   * version), so the hello was never read; `hello`: the hello was malformed, late or its
   * token invalid.
   */
  readonly stage: 'handshake' | 'hello';
  /** Why, e.g. the TLS library's error message or the refusal sent to the peer. */
  readonly reason: string;
}

/** Settings of a {@link DataListener}. */
export interface DataListenerOptions {
  /**
   * TLS server options (`dataLinkTlsOptions(material)`): the listener then accepts only
   * connections that complete a TLS handshake with them. @default plain TCP
   */
  tls?: tls.TlsOptions;
  /** Called for every connection dropped before it reached the link handler. @default none */
  onRefused?: (refusal: DataLinkRefusal) => void;
}

function remoteOf(socket: net.Socket): string {
  const { remoteAddress, remotePort } = socket;
  if (remoteAddress === undefined) return 'unknown';
  return remoteAddress.includes(':') ? `[${remoteAddress}]:${remotePort}` : `${remoteAddress}:${remotePort}`;
}

/** Writes a refusal (`status` says what kind) to `socket` and closes it. */
export function refuseDataLink(socket: net.Socket, reason: string, status: HelloStatus = HelloStatus.FailedPrecondition): void {
  if (socket.destroyed) return;
  socket.end(encodeHelloReply(reason, status));
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/** The listener. `start()`, then `issueToken()` per OpenDataLink call; `close()`. */
export class DataListener {
  readonly #listen: { host: string; port: number };
  readonly #onLink: DataLinkHandler;
  readonly #tls: tls.TlsOptions | undefined;
  readonly #onRefused: ((refusal: DataLinkRefusal) => void) | undefined;
  readonly #tokens = new Map<string, IssuedToken>();
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server | undefined;
  #port: number | undefined;

  constructor(listen: string, onLink: DataLinkHandler, options: DataListenerOptions = {}) {
    const colon = listen.lastIndexOf(':');
    const port = Number(listen.slice(colon + 1));
    if (colon < 1 || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw new InvalidArgumentError(`data listen address must be host:port with a port in 0..65535, got "${listen}"`);
    }
    this.#listen = { host: listen.slice(0, colon).replace(/^\[|\]$/g, ''), port };
    this.#onLink = onLink;
    this.#tls = options.tls;
    this.#onRefused = options.onRefused;
  }

  /** Binds the listener; resolves with its port. Idempotent. */
  async start(): Promise<number> {
    if (this.#port !== undefined) return this.#port;
    const server: net.Server = this.#tls === undefined ? net.createServer({ noDelay: true }, (socket) => this.#onConnection(socket)) : this.#tlsServer(this.#tls);
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new UnavailableError(`could not listen for data links on ${this.#listen.host}:${this.#listen.port}: ${err.message}`, { cause: err })),
      );
      server.listen(this.#listen.port, this.#listen.host, () => resolve());
    });
    this.#port = (server.address() as net.AddressInfo).port;
    return this.#port;
  }

  #tlsServer(options: tls.TlsOptions): tls.Server {
    // noDelay applies to the accepted TCP socket under the TLS layer.
    const server = tls.createServer({ ...options, noDelay: true, handshakeTimeout: HELLO_TIMEOUT_MS }, (socket) => this.#onConnection(socket));
    // Sockets still in their handshake: close() must be able to drop them too.
    const peers = new WeakMap<object, string>();
    server.on('connection', (raw: net.Socket) => {
      peers.set(raw, remoteOf(raw));
      this.#sockets.add(raw);
      raw.once('close', () => this.#sockets.delete(raw));
    });
    // Node destroys the socket itself (destroy() again is harmless). It refuses a certificate
    // of another CA after OpenSSL's handshake (`authorizationError` says why, `err` is only
    // "socket hang up"); no certificate, plaintext or an old TLS version fail in OpenSSL
    // (`err`). Neither holds key material or a token: nothing was read past the handshake.
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      socket.destroy();
      const authorizationError = socket.authorizationError as Error | string | null | undefined;
      let reason: string;
      if (authorizationError !== null && authorizationError !== undefined) reason = `client certificate refused: ${String(authorizationError)}`;
      else if ((err as NodeJS.ErrnoException).code === 'ECONNRESET') reason = 'the peer closed the connection during the TLS handshake (it may not trust this rank\'s certificate)';
      else reason = err.message.trim();
      // The destroyed TLS socket no longer knows its peer; the TCP socket under it (Node's
      // `_parent`) was asked when it connected.
      const tcp = (socket as tls.TLSSocket & { _parent?: object })._parent;
      this.#refused(tcp === undefined ? remoteOf(socket) : (peers.get(tcp) ?? remoteOf(socket)), 'handshake', reason);
    });
    return server;
  }

  #refused(remoteAddress: string, stage: DataLinkRefusal['stage'], reason: string): void {
    try {
      this.#onRefused?.({ remoteAddress, stage, reason });
    } catch {
      // A failing log hook must not take the listener down.
    }
  }

  /** Refuses a connection at its hello: tells the peer why, and the owner. */
  #refuseHello(socket: net.Socket, reason: string): void {
    this.#refused(remoteOf(socket), 'hello', reason);
    refuseDataLink(socket, reason);
  }

  /** The bound port, once started. */
  get port(): number | undefined {
    return this.#port;
  }

  /** A one-time token for a link of (job, generation) from `senderRank` to `receiverRank`. */
  issueToken(job: string, generation: number, senderRank: number, receiverRank: number): Buffer {
    const now = Date.now();
    for (const [key, issued] of this.#tokens) {
      if (issued.expiresAt > now && this.#tokens.size < MAX_TOKENS) break;
      this.#tokens.delete(key);
    }
    const token = randomBytes(DATA_LINK_TOKEN_BYTES);
    this.#tokens.set(token.toString('hex'), { token, job, generation, senderRank, receiverRank, expiresAt: now + DATA_LINK_TOKEN_TTL_MS });
    return token;
  }

  #onConnection(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('error', () => undefined); // whoever takes the socket listens too
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => this.#refuseHello(socket, `no hello within ${HELLO_TIMEOUT_MS} ms`), HELLO_TIMEOUT_MS);
    // A connection that closes before its hello (a health probe, a port scan) must not
    // keep the timer, or the process, alive.
    timer.unref();
    socket.once('close', () => {
      this.#sockets.delete(socket);
      clearTimeout(timer);
    });
    const onData = (data: Buffer): void => {
      received = Buffer.concat([received, data]);
      let size: number | undefined;
      try {
        size = helloSize(received);
      } catch (err) {
        clearTimeout(timer);
        socket.off('data', onData);
        this.#refuseHello(socket, (err as Error).message);
        return;
      }
      if (size === undefined || received.byteLength < size) return;
      clearTimeout(timer);
      socket.off('data', onData);
      if (received.byteLength > size) {
        this.#refuseHello(socket, 'data link: bytes after the hello before the reply');
        return;
      }
      let hello: DataLinkHello;
      try {
        hello = decodeHello(received);
      } catch (err) {
        this.#refuseHello(socket, (err as Error).message);
        return;
      }
      const refusal = this.#checkToken(hello);
      if (refusal !== undefined) {
        this.#refuseHello(socket, refusal);
        return;
      }
      this.#onLink(socket, hello);
    };
    socket.on('data', onData);
  }

  #checkToken(hello: DataLinkHello): string | undefined {
    const key = Buffer.from(hello.token).toString('hex');
    const issued = this.#tokens.get(key);
    if (issued === undefined) return 'data link token unknown or already used: call OpenDataLink first';
    this.#tokens.delete(key);
    if (!timingSafeEqual(issued.token, hello.token)) return 'data link token mismatch';
    if (issued.expiresAt < Date.now()) return `data link token expired (valid ${DATA_LINK_TOKEN_TTL_MS} ms)`;
    if (
      issued.job !== hello.job ||
      issued.generation !== hello.generation ||
      issued.senderRank !== hello.senderRank ||
      issued.receiverRank !== hello.receiverRank
    ) {
      return `data link token was issued for job ${issued.job} generation ${issued.generation} link ${issued.senderRank}->${issued.receiverRank}, the hello names job ${hello.job} generation ${hello.generation} link ${hello.senderRank}->${hello.receiverRank}`;
    }
    return undefined;
  }

  /** Stops listening and destroys every socket not yet handed on. Idempotent. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#tokens.clear();
    for (const socket of this.#sockets) socket.destroy();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
