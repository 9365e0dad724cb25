/**
 * The `dinofleet.v1.Collective` service of one worker process, shared by every
 * generation the worker takes part in.
 *
 * Why an endpoint and not a service per RingAllReduce: a grpc-js server takes its services
 * before it starts and never drops one, while a RingAllReduce lives for one generation. The
 * worker's address must also stay the same across generations (the coordinator hands it to
 * the other ranks). So the endpoint is registered once, and routes each inbound Exchange
 * stream, by the job and generation of its first chunk, to the RingAllReduce registered
 * for them.
 *
 * Transport security (docs/collective.md, "Transport security of the ring and the data
 * links"): {@link CollectiveEndpointOptions.security} secures all of one rank's collective
 * traffic. Under mTLS its gRPC server requires a client certificate of the fleet CA, its
 * data listener speaks TLS 1.3 with the same requirement, and every RingAllReduce built on
 * it dials its peers (gRPC and data links) presenting this rank's certificate.
 */
import type net from 'node:net';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import type { ChannelCredentials, ServerDuplexStream, sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import {
  AbortedError,
  FailedPreconditionError,
  GrpcServer,
  INSECURE,
  InvalidArgumentError,
  UnavailableError,
  channelCredentials,
  dataLinkTlsOptions,
  serverCredentials,
  toServiceError,
} from '@dinofleet/proto';
import type {
  CollectiveServer,
  DinofleetError,
  ExchangeRequest,
  ExchangeResponse,
  GrpcServerAddress,
  OpenDataLinkRequest,
  OpenDataLinkResponse,
  TransportSecurity,
} from '@dinofleet/proto';
import { HelloStatus } from './data-frame.ts';
import type { DataLinkHello } from './data-frame.ts';
import { DataListener, refuseDataLink } from './data-listener.ts';
import type { DataLinkRefusal } from './data-listener.ts';
import { COLLECTIVE_EXCHANGE_DEFINITION } from './exchange-codec.ts';

/** Default of {@link CollectiveEndpointOptions.unclaimedStreamTimeoutMs}, in ms. */
export const DEFAULT_UNCLAIMED_STREAM_TIMEOUT_MS = 10_000;

/** A server-side Exchange stream. */
export type InboundExchangeStream = ServerDuplexStream<ExchangeRequest, ExchangeResponse>;

/** What a collective registers with an endpoint to receive its inbound streams and links. */
export interface InboundStreamSink {
  /**
   * gRPC transport: takes over `stream`, whose first chunks (`received`, at least one, all
   * of the sink's job and generation) the endpoint has already read. From now on the sink
   * listens. A sink without it refuses gRPC streams.
   */
  attachInbound?(stream: InboundExchangeStream, received: readonly ExchangeRequest[]): void;
  /**
   * TCP transport: takes over an accepted data-link socket whose hello (token checked)
   * names the sink's job and generation. The sink writes the reply (accept or refusal).
   * A sink without it refuses data links.
   */
  acceptDataLink?(socket: net.Socket, hello: DataLinkHello): void;
  /** The endpoint is closing: fail with `err`. */
  abort(err: DinofleetError): void;
}

/** Settings for {@link CollectiveEndpoint}. */
export interface CollectiveEndpointOptions {
  /**
   * How this rank's collective traffic is secured: with `{kind: 'mtls'}` the endpoint's own
   * server requires a client certificate of the fleet CA
   * (`serverCredentials(security, {clientCertificate: 'require'})`), the data listener
   * speaks TLS 1.3 requiring one too (`dataLinkTlsOptions`), and every RingAllReduce on
   * this endpoint dials its peers with this rank's certificate. A shared `server` must be
   * built with those same server credentials. @default INSECURE (plaintext; the worker
   * process always passes what `--tls-dir` / `--insecure` chose)
   */
  security?: TransportSecurity;
  /**
   * Called for every data-link connection the listener dropped before the hello routing:
   * a failed TLS handshake (no or a foreign certificate) or a bad hello or token. The
   * refusal holds no secret. @default none
   */
  onRefusedDataLink?: (refusal: DataLinkRefusal) => void;
  /**
   * A server to serve the Collective service on, e.g. the worker's only gRPC server. The
   * endpoint adds its service in the constructor, so the server must not be started yet;
   * the caller keeps ownership and closes it. @default a server of the endpoint's own,
   * closed by {@link CollectiveEndpoint.close}
   */
  server?: GrpcServer;
  /** "host:port" of the endpoint's own server (ignored with `server`). @default "127.0.0.1:0" */
  address?: string;
  /**
   * How long an inbound stream for a job and generation that no RingAllReduce has
   * registered yet waits for one (its sender may simply be quicker to enter the
   * generation), in ms. Range 1..600000. @default 10000
   */
  unclaimedStreamTimeoutMs?: number;
  /**
   * "host:port" the TCP data listener binds (docs/collective.md); receivers dial the host
   * they reach this endpoint's gRPC service on, at the port it reports. Port 0 picks a
   * free one; fix it where a NetworkPolicy must name it. @default the host of `address`
   * (or 127.0.0.1), port 0
   */
  dataListen?: string;
}

interface UnclaimedDataLink {
  readonly socket: net.Socket;
  readonly hello: DataLinkHello;
  readonly timer: NodeJS.Timeout;
  readonly onGone: () => void;
}

interface UnclaimedStream {
  readonly stream: InboundExchangeStream;
  readonly job: string;
  readonly generation: number;
  readonly received: ExchangeRequest[];
  readonly timer: NodeJS.Timeout;
  readonly onData: (message: ExchangeRequest) => void;
  readonly onGone: () => void;
}

function sinkKey(job: string, generation: number): string {
  return `${generation}\u0000${job}`;
}

function rejectStream(stream: InboundExchangeStream, err: DinofleetError): void {
  stream.removeAllListeners('data');
  // grpc-js turns an 'error' on a server stream into the call's status and ends it.
  stream.emit('error', toServiceError(err));
}

/**
 * Serves `dinofleet.v1.Collective` for one worker and routes inbound ring streams to the
 * RingAllReduce of their generation. Create it, `start()` it (or start the shared server),
 * then build one RingAllReduce per generation on it; `close()` (or `await using`).
 */
export class CollectiveEndpoint implements AsyncDisposable {
  readonly #server: GrpcServer;
  readonly #ownsServer: boolean;
  readonly #unclaimedStreamTimeoutMs: number;
  readonly #sinks = new Map<string, InboundStreamSink>();
  /** Highest generation ever registered per job: an older one is stale. */
  readonly #latestGeneration = new Map<string, number>();
  readonly #unclaimed = new Set<UnclaimedStream>();
  readonly #unclaimedLinks = new Set<UnclaimedDataLink>();
  readonly #data: DataListener;
  readonly #security: TransportSecurity;
  readonly #clientCredentials: ChannelCredentials;
  readonly #dataLinkTls: (TlsOptions & ConnectionOptions) | undefined;
  #address: string | undefined;
  #closed: Promise<void> | undefined;

  constructor(options: CollectiveEndpointOptions = {}) {
    const timeoutMs = options.unclaimedStreamTimeoutMs ?? DEFAULT_UNCLAIMED_STREAM_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
      throw new InvalidArgumentError(`unclaimedStreamTimeoutMs must be in 1..600000 ms, got ${timeoutMs}`);
    }
    this.#unclaimedStreamTimeoutMs = timeoutMs;
    const security = options.security ?? INSECURE;
    this.#security = security;
    // Built once (PEM parsed once) for every client of every generation.
    this.#clientCredentials = channelCredentials(security);
    this.#dataLinkTls = security.kind === 'mtls' ? dataLinkTlsOptions(security.material) : undefined;
    this.#ownsServer = options.server === undefined;
    this.#server =
      options.server ??
      new GrpcServer({
        ...(options.address !== undefined && { address: options.address }),
        credentials: serverCredentials(security, { clientCertificate: 'require' }),
      });
    const host = options.address === undefined ? '127.0.0.1' : options.address.slice(0, options.address.lastIndexOf(':'));
    this.#data = new DataListener(options.dataListen ?? `${host}:0`, (socket, hello) => this.#routeDataLink(socket, hello), {
      ...(this.#dataLinkTls !== undefined && { tls: this.#dataLinkTls }),
      ...(options.onRefusedDataLink !== undefined && { onRefused: options.onRefusedDataLink }),
    });
    const implementation: CollectiveServer = {
      exchange: (stream) => this.#onStream(stream),
      openDataLink: (call, callback) => this.#openDataLink(call, callback),
    };
    this.#server.addService(COLLECTIVE_EXCHANGE_DEFINITION, implementation);
  }

  /**
   * Starts the server (idempotent; with a shared server this starts that server) and
   * resolves with the address other ranks dial.
   */
  async start(): Promise<GrpcServerAddress> {
    if (this.#closed !== undefined) throw new FailedPreconditionError('CollectiveEndpoint.start() after close()');
    await this.#data.start();
    const bound = await this.#server.start();
    this.#address = bound.address;
    return bound;
  }

  /** How this endpoint, and every collective built on it, secures its traffic. */
  get security(): TransportSecurity {
    return this.#security;
  }

  /**
   * Credentials the collectives on this endpoint dial their peers' gRPC services with
   * (`channelCredentials(security)`: this rank's certificate under mTLS).
   */
  get clientCredentials(): ChannelCredentials {
    return this.#clientCredentials;
  }

  /**
   * TLS options the collectives on this endpoint dial their peers' data listeners with
   * (`dataLinkTlsOptions`), or undefined for plain TCP.
   */
  get dataLinkTls(): ConnectionOptions | undefined {
    return this.#dataLinkTls;
  }

  /** Port of the TCP data listener, once {@link start} resolved. */
  get dataPort(): number {
    const port = this.#data.port;
    if (port === undefined) throw new FailedPreconditionError('CollectiveEndpoint.dataPort before start()');
    return port;
  }

  #openDataLink(call: ServerUnaryCall<OpenDataLinkRequest, OpenDataLinkResponse>, callback: sendUnaryData<OpenDataLinkResponse>): void {
    const { jobId, generation, senderRank, receiverRank } = call.request;
    const port = this.#data.port;
    if (this.#closed !== undefined || port === undefined) {
      callback(toServiceError(new UnavailableError('collective endpoint is not serving data links (closing or not started)')));
      return;
    }
    if (jobId === '' || senderRank === receiverRank) {
      callback(toServiceError(new InvalidArgumentError('OpenDataLink needs a job_id and two different ranks')));
      return;
    }
    const latest = this.#latestGeneration.get(jobId);
    if (latest !== undefined && generation < latest) {
      callback(toServiceError(this.#staleError(jobId, generation)));
      return;
    }
    callback(null, { port, token: this.#data.issueToken(jobId, generation, senderRank, receiverRank) });
  }

  #routeDataLink(socket: net.Socket, hello: DataLinkHello): void {
    if (this.#closed !== undefined) {
      refuseDataLink(socket, 'collective endpoint is closing', HelloStatus.Unavailable);
      return;
    }
    const sink = this.#sinks.get(sinkKey(hello.job, hello.generation));
    if (sink !== undefined) {
      this.#handDataLink(sink, socket, hello);
      return;
    }
    const latest = this.#latestGeneration.get(hello.job);
    if (latest !== undefined && hello.generation <= latest) {
      refuseDataLink(socket, this.#staleError(hello.job, hello.generation).message, HelloStatus.Aborted);
      return;
    }
    // The receiver entered the generation first: wait for this rank to register it.
    const waiting: UnclaimedDataLink = {
      socket,
      hello,
      onGone: () => this.#forgetLink(waiting),
      timer: setTimeout(() => {
        this.#forgetLink(waiting);
        refuseDataLink(socket, `no collective for job ${hello.job} generation ${hello.generation} registered here within ${this.#unclaimedStreamTimeoutMs} ms`, HelloStatus.Aborted);
      }, this.#unclaimedStreamTimeoutMs),
    };
    socket.once('close', waiting.onGone);
    this.#unclaimedLinks.add(waiting);
  }

  #handDataLink(sink: InboundStreamSink, socket: net.Socket, hello: DataLinkHello): void {
    if (sink.acceptDataLink === undefined) refuseDataLink(socket, `the collective of job ${hello.job} generation ${hello.generation} here uses the gRPC transport`);
    else sink.acceptDataLink(socket, hello);
  }

  #forgetLink(waiting: UnclaimedDataLink): void {
    clearTimeout(waiting.timer);
    waiting.socket.off('close', waiting.onGone);
    this.#unclaimedLinks.delete(waiting);
  }

  /** "host:port" of this endpoint, once {@link start} resolved. */
  get address(): string {
    if (this.#address === undefined) throw new FailedPreconditionError('CollectiveEndpoint.address before start()');
    return this.#address;
  }

  /**
   * Routes inbound streams of (`job`, `generation`) to `sink` until the returned function
   * is called. Streams for an older generation of the job are refused as stale from now
   * on. Used by RingAllReduce; one sink per job and generation.
   */
  register(job: string, generation: number, sink: InboundStreamSink): () => void {
    if (this.#closed !== undefined) throw new FailedPreconditionError('CollectiveEndpoint is closed');
    const key = sinkKey(job, generation);
    if (this.#sinks.has(key)) {
      throw new FailedPreconditionError(`a collective for job ${job} generation ${generation} is registered already`);
    }
    this.#sinks.set(key, sink);
    this.#latestGeneration.set(job, Math.max(generation, this.#latestGeneration.get(job) ?? -1));
    for (const waiting of [...this.#unclaimed]) {
      if (waiting.job !== job || waiting.generation > generation) continue;
      this.#forget(waiting);
      if (waiting.generation !== generation) rejectStream(waiting.stream, this.#staleError(waiting.job, waiting.generation));
      else if (sink.attachInbound === undefined) rejectStream(waiting.stream, this.#tcpOnlyError(job, generation));
      else sink.attachInbound(waiting.stream, waiting.received);
    }
    for (const waiting of [...this.#unclaimedLinks]) {
      if (waiting.hello.job !== job || waiting.hello.generation > generation) continue;
      this.#forgetLink(waiting);
      if (waiting.hello.generation === generation) this.#handDataLink(sink, waiting.socket, waiting.hello);
      else refuseDataLink(waiting.socket, this.#staleError(job, waiting.hello.generation).message, HelloStatus.Aborted);
    }
    return () => {
      if (this.#sinks.get(key) === sink) this.#sinks.delete(key);
    };
  }

  #tcpOnlyError(job: string, generation: number): FailedPreconditionError {
    return new FailedPreconditionError(`the collective of job ${job} generation ${generation} here uses the TCP transport, not gRPC Exchange streams`);
  }

  #staleError(job: string, generation: number): AbortedError {
    const latest = this.#latestGeneration.get(job);
    return new AbortedError(
      latest === generation
        ? `stale generation ${generation} for job ${job}: it has ended on this rank`
        : `stale generation ${generation} for job ${job}: this rank is at generation ${latest}`,
    );
  }

  #onStream(stream: InboundExchangeStream): void {
    if (this.#closed !== undefined) {
      rejectStream(stream, new UnavailableError('collective endpoint is closing'));
      return;
    }
    // Errors after the call ended (a client that vanished) must not crash the process;
    // whoever owns the stream also listens.
    stream.on('error', () => undefined);
    stream.once('data', (first: ExchangeRequest) => this.#route(stream, first));
  }

  #route(stream: InboundExchangeStream, first: ExchangeRequest): void {
    if (this.#closed !== undefined) {
      rejectStream(stream, new UnavailableError('collective endpoint is closing'));
      return;
    }
    const { jobId: job, generation } = first;
    const sink = this.#sinks.get(sinkKey(job, generation));
    if (sink !== undefined) {
      if (sink.attachInbound === undefined) rejectStream(stream, this.#tcpOnlyError(job, generation));
      else sink.attachInbound(stream, [first]);
      return;
    }
    const latest = this.#latestGeneration.get(job);
    if (latest !== undefined && generation <= latest) {
      // Either an older generation, or this one already closed here: both are over.
      rejectStream(stream, this.#staleError(job, generation));
      return;
    }
    // A newer generation than this rank has entered: its sender got there first. Hold the
    // stream (reading and keeping its chunks) until the RingAllReduce registers.
    const received: ExchangeRequest[] = [first];
    const waiting: UnclaimedStream = {
      stream,
      job,
      generation,
      received,
      onData: (message) => {
        received.push(message);
      },
      onGone: () => this.#forget(waiting),
      timer: setTimeout(() => {
        this.#forget(waiting);
        rejectStream(
          stream,
          new AbortedError(
            `no collective for job ${job} generation ${generation} registered here within ${this.#unclaimedStreamTimeoutMs} ms`,
          ),
        );
      }, this.#unclaimedStreamTimeoutMs),
    };
    stream.on('data', waiting.onData);
    stream.once('cancelled', waiting.onGone);
    stream.once('end', waiting.onGone);
    this.#unclaimed.add(waiting);
  }

  #forget(waiting: UnclaimedStream): void {
    clearTimeout(waiting.timer);
    waiting.stream.off('data', waiting.onData);
    waiting.stream.off('cancelled', waiting.onGone);
    waiting.stream.off('end', waiting.onGone);
    this.#unclaimed.delete(waiting);
  }

  /**
   * Fails every registered RingAllReduce and every waiting stream, then closes the
   * endpoint's own server (a shared server is left to its owner). Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  async #shutdown(): Promise<void> {
    const closing = new UnavailableError('collective endpoint closed');
    for (const waiting of [...this.#unclaimed]) {
      this.#forget(waiting);
      rejectStream(waiting.stream, closing);
    }
    for (const waiting of [...this.#unclaimedLinks]) {
      this.#forgetLink(waiting);
      refuseDataLink(waiting.socket, closing.message, HelloStatus.Unavailable);
    }
    const sinks = [...this.#sinks.values()];
    this.#sinks.clear();
    for (const sink of sinks) {
      try {
        sink.abort(closing);
      } catch {
        // Keep closing the others; a sink's abort only tears down its own streams.
      }
    }
    await this.#data.close();
    if (this.#ownsServer) await this.#server.close(1_000);
  }

  /** `await using endpoint = new CollectiveEndpoint()` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
