import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics } from 'prom-client';

/** Options of a {@link MetricsServer}. */
export interface MetricsServerOptions {
  /**
   * The registry to expose. Each process (and each test) should own one: nothing here
   * touches prom-client's global default registry.
   * @default a new, empty `Registry`
   */
  readonly registry?: Registry;
  /**
   * Also collect Node's default process metrics (CPU, memory, event-loop lag, GC) into
   * the registry, prefixed `dinofleet_`.
   * @default false
   */
  readonly defaultMetrics?: boolean;
  /**
   * How long `close()` lets in-flight scrapes finish before it destroys their sockets, in
   * milliseconds. Idle keep-alive sockets are closed at once.
   * @default 2000
   */
  readonly closeGraceMs?: number;
}

/** Where to listen. */
export interface MetricsListenOptions {
  /** Interface to bind. @default '127.0.0.1' */
  readonly host?: string;
  /** TCP port; 0 picks a free one (see the returned `port`). @default 0 */
  readonly port?: number;
}

/**
 * Serves one prom-client {@link Registry} over HTTP with Node's `http` module:
 * `GET /metrics` returns the exposition text, `GET /healthz` returns 200 `ok`, anything
 * else 404 (or 405 for a method other than GET/HEAD).
 *
 * ```ts
 * await using server = new MetricsServer({ registry });
 * const { port } = await server.start({ port: 9464 });
 * ```
 */
export class MetricsServer implements AsyncDisposable {
  /** The registry served on `/metrics`. */
  readonly registry: Registry;
  readonly #closeGraceMs: number;
  #server: Server | null = null;
  #closing: Promise<void> | null = null;

  constructor(options: MetricsServerOptions = {}) {
    this.registry = options.registry ?? new Registry();
    this.#closeGraceMs = options.closeGraceMs ?? 2000;
    if (!(this.#closeGraceMs >= 0)) throw new RangeError(`closeGraceMs must be >= 0, got ${this.#closeGraceMs}`);
    if (options.defaultMetrics === true) collectDefaultMetrics({ register: this.registry, prefix: 'dinofleet_' });
  }

  /**
   * Starts listening. Resolves once the socket is bound, with the actual port.
   * @throws Error when already started or closed, or when the port cannot be bound
   *   (e.g. `EADDRINUSE`).
   */
  async start(options: MetricsListenOptions = {}): Promise<{ port: number }> {
    const { host = '127.0.0.1', port = 0 } = options;
    if (this.#closing !== null) throw new Error('MetricsServer: start() after close()');
    if (this.#server !== null) throw new Error('MetricsServer: start() called twice');
    const server = createServer((req, res) => {
      void this.#handle(req, res);
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        server.off('listening', onListening);
        reject(err);
      };
      const onListening = (): void => {
        server.off('error', onError);
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen(port, host);
    }).catch((err: unknown) => {
      this.#server = null;
      throw err;
    });
    return { port: (server.address() as AddressInfo).port };
  }

  /** The bound port, or `null` when not listening. */
  get port(): number | null {
    const address = this.#server?.address();
    return address !== null && typeof address === 'object' ? address.port : null;
  }

  /**
   * Stops accepting connections, closes idle keep-alive sockets at once, lets in-flight
   * requests finish for up to `closeGraceMs`, then destroys what is left. Idempotent:
   * later calls return the same promise; a server never started closes trivially.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    const server = this.#server;
    if (server === null) return;
    const closed = new Promise<void>((resolve) => {
      // 'close' fires once every connection is gone; an error here only means "not
      // running", which is the state we want.
      server.close(() => resolve());
    });
    // server.close() alone would wait for keep-alive sockets (fetch keeps them) to time out.
    server.closeIdleConnections();
    const force = setTimeout(() => server.closeAllConnections(), this.#closeGraceMs);
    force.unref();
    try {
      await closed;
    } finally {
      clearTimeout(force);
      this.#server = null;
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0];
    if (path !== '/metrics' && path !== '/healthz') {
      reply(res, 404, 'text/plain; charset=utf-8', 'not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      reply(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
      return;
    }
    if (path === '/healthz') {
      reply(res, 200, 'text/plain; charset=utf-8', 'ok\n', req.method === 'HEAD');
      return;
    }
    try {
      const body = await this.registry.metrics();
      reply(res, 200, this.registry.contentType, body, req.method === 'HEAD');
    } catch (err) {
      // A collect() callback threw; Prometheus records the failed scrape as up=0.
      const message = err instanceof Error ? err.message : String(err);
      reply(res, 500, 'text/plain; charset=utf-8', `collecting metrics failed: ${message}\n`);
    }
  }
}

function reply(res: ServerResponse, status: number, contentType: string, body: string, headOnly = false): void {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(headOnly ? undefined : body);
}
