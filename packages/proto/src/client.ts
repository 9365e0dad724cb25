/**
 * Creating typed gRPC clients with dinofleet's channel settings, and calling them with a
 * deadline every time.
 */
import { credentials as grpcCredentials, Metadata } from '@grpc/grpc-js';
import type { CallOptions, ChannelCredentials, ClientOptions, ClientUnaryCall, ServiceError } from '@grpc/grpc-js';
import { fromServiceError } from './errors.ts';

/** The TLS server name (SNI) fleet clients send: a fixed name, never an IP address. */
export const TLS_SERVER_NAME = 'dinofleet';

/** Largest message a channel sends or receives by default, in bytes (64 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Keepalive ping interval on idle connections by default, in ms. */
export const DEFAULT_KEEPALIVE_TIME_MS = 10_000;

/** How long a keepalive ping may go unanswered before the connection is dropped, in ms. */
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 5_000;

/** Channel settings for {@link createClient}. */
export interface CreateClientOptions {
  /** Channel credentials. @default insecure (mTLS comes later) */
  credentials?: ChannelCredentials;
  /** Largest message received, in bytes. @default {@link DEFAULT_MAX_MESSAGE_BYTES} */
  maxReceiveMessageBytes?: number;
  /** Largest message sent, in bytes. @default {@link DEFAULT_MAX_MESSAGE_BYTES} */
  maxSendMessageBytes?: number;
  /**
   * Keepalive ping interval, in ms. Pings are what notice a peer that vanished without
   * closing its connection (a killed pod) within seconds, as DESIGN.md requires.
   * @default {@link DEFAULT_KEEPALIVE_TIME_MS}
   */
  keepaliveTimeMs?: number;
  /** Time for a ping to be answered, in ms. @default {@link DEFAULT_KEEPALIVE_TIMEOUT_MS} */
  keepaliveTimeoutMs?: number;
  /** Further grpc-js channel options; they override the ones above. */
  channelOptions?: Partial<ClientOptions>;
}

/** The constructor ts-proto generates for each service (e.g. `JobServiceClient`). */
export type ClientConstructor<C> = new (
  address: string,
  credentials: ChannelCredentials,
  options?: Partial<ClientOptions>,
) => C;

/** The grpc-js channel options {@link createClient} uses for `options`. */
export function clientChannelOptions(options: CreateClientOptions = {}): Partial<ClientOptions> {
  return {
    'grpc.max_receive_message_length': options.maxReceiveMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': options.maxSendMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? DEFAULT_KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS,
    // Long-lived streams (control, ring) may sit idle between steps; keep probing them.
    'grpc.keepalive_permit_without_calls': 1,
    // TLS server name (SNI). Fleet peers are dialled by IP, and Node warns (DEP0123) on an IP
    // as the server name; host names are not part of the trust model (transport-security.ts).
    // Only secure channels use it.
    'grpc.ssl_target_name_override': TLS_SERVER_NAME,
    ...options.channelOptions,
  };
}

/**
 * A typed client for `address` ("host:port"), e.g.
 * `createClient(JobServiceClient, '127.0.0.1:7000')`. Close it with `client.close()`.
 */
export function createClient<C>(Client: ClientConstructor<C>, address: string, options: CreateClientOptions = {}): C {
  return new Client(address, options.credentials ?? grpcCredentials.createInsecure(), clientChannelOptions(options));
}

/** Per-call settings. The deadline is required: no dinofleet call may wait forever. */
export interface CallOptionsWithDeadline {
  /** Time the call may take, in ms from now. */
  deadlineMs: number;
  /** Also stop at this absolute time (ms since the epoch), e.g. a retry's overall deadline. */
  notAfterMs?: number;
  /** Request metadata. @default empty */
  metadata?: Metadata;
}

/** grpc-js call options with the deadline `deadlineMs` from now (capped by `notAfterMs`). */
export function callOptions(options: CallOptionsWithDeadline): Partial<CallOptions> {
  const deadlineMs = Math.min(Date.now() + options.deadlineMs, options.notAfterMs ?? Infinity);
  return { deadline: new Date(deadlineMs) };
}

/** The full (last) overload of a generated unary method. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * Request and response of `F` when it is a generated unary method. Matched on the full
 * argument list, because a server-streaming method `(request, metadata?, options?)` would
 * otherwise pass as a unary one that ignores its callback.
 */
type UnaryTypes<F> = F extends (...args: infer A) => ClientUnaryCall
  ? A extends [infer Req, Metadata, Partial<CallOptions>, (error: ServiceError | null, response: infer Res) => void]
    ? { request: Req; response: Res }
    : never
  : never;

/** Names of the unary methods of client type `C`. */
export type UnaryMethodName<C> = {
  [K in keyof C]: [UnaryTypes<C[K]>] extends [never] ? never : K;
}[keyof C];

/** Request type of unary method `M` of client `C`. */
export type UnaryRequest<C, M extends keyof C> = UnaryTypes<C[M]>['request'];

/** Response type of unary method `M` of client `C`. */
export type UnaryResponse<C, M extends keyof C> = UnaryTypes<C[M]>['response'];

/**
 * Calls unary method `method` of `client` with a deadline and returns its response. A
 * failure rejects with the matching {@link DinofleetError} (the grpc-js error is its
 * `cause`), so `err instanceof NotFoundError` and `err.code` work. The method is named
 * rather than passed (`client.getJob`) because generated methods need their `this`.
 *
 * @example await callUnary(jobs, 'getJob', { jobId }, { deadlineMs: 5000 })
 */
export function callUnary<C extends object, M extends UnaryMethodName<C>>(
  client: C,
  method: M,
  request: UnaryRequest<C, M>,
  options: CallOptionsWithDeadline,
): Promise<UnaryResponse<C, M>> {
  const fn = client[method] as UnaryMethod<UnaryRequest<C, M>, UnaryResponse<C, M>>;
  return new Promise((resolve, reject) => {
    fn.call(client, request, options.metadata ?? new Metadata(), callOptions(options), (error, response) => {
      if (error !== null) reject(fromServiceError(error));
      else resolve(response);
    });
  });
}
