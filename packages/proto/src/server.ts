/**
 * A gRPC server with dinofleet's lifecycle: `start()` binds, `close(graceMs)` drains then
 * forces, the standard health service is always served, and `await using` cleans up.
 */
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { ChannelOptions, ServiceDefinition, UntypedServiceImplementation } from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_BYTES } from './client.ts';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from './errors.ts';
import { HealthService, HealthCheckResponse_ServingStatus as ServingStatus } from './generated/grpc/health/v1/health.ts';
import { HEALTH_SERVICE_NAME, HealthRegistry } from './health.ts';

/** Grace period of {@link GrpcServer.close} when none is given, in ms. */
export const DEFAULT_CLOSE_GRACE_MS = 5_000;

/** Settings for {@link GrpcServer}. */
export interface GrpcServerOptions {
  /** "host:port" to bind; port 0 picks a free one. @default "127.0.0.1:0" */
  address?: string;
  /** Server credentials. @default insecure (mTLS comes later) */
  credentials?: ServerCredentials;
  /** Largest message received or sent, in bytes. @default 64 MiB */
  maxMessageBytes?: number;
  /** Further grpc-js server options; they override the ones above. */
  channelOptions?: ChannelOptions;
}

/** Where a started server listens. */
export interface GrpcServerAddress {
  /** The bound port (the real one when port 0 was asked for). */
  port: number;
  /** "host:port" to dial, with the bound port. */
  address: string;
}

/** Options for {@link GrpcServer.addService}. */
export interface AddServiceOptions {
  /** Health status to start with. @default true (SERVING) */
  serving?: boolean;
}

/** The fully qualified service name of a generated definition, from its methods' paths. */
export function serviceNameOf(definition: ServiceDefinition): string {
  const first = Object.values(definition)[0];
  // Paths are "/package.Service/Method".
  const name = first?.path.split('/')[1];
  if (name === undefined || name === '') throw new InvalidArgumentError('service definition has no methods');
  return name;
}

/**
 * One grpc-js server. Add services, `start()`, and `close()` (or `await using`). The
 * health service reports each added service, and `''` for the server, as SERVING from
 * start until close begins.
 */
export class GrpcServer implements AsyncDisposable {
  readonly #server: Server;
  readonly #health = new HealthRegistry();
  readonly #address: string;
  readonly #credentials: ServerCredentials;
  #started: Promise<GrpcServerAddress> | undefined;
  #closed: Promise<void> | undefined;

  constructor(options: GrpcServerOptions = {}) {
    this.#address = options.address ?? '127.0.0.1:0';
    this.#credentials = options.credentials ?? ServerCredentials.createInsecure();
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#server = new Server({
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
      // Server-side pings find half-open connections of dead clients (a killed worker's
      // control stream) within seconds.
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      ...options.channelOptions,
    });
    this.#server.addService(HealthService, this.#health.implementation());
    this.#health.set(HEALTH_SERVICE_NAME, ServingStatus.SERVING);
    this.#health.set('', ServingStatus.NOT_SERVING);
  }

  /**
   * Registers a service (a ts-proto `XService` definition and its implementation). Must
   * be called before {@link start}.
   */
  addService<Impl extends UntypedServiceImplementation>(
    definition: ServiceDefinition<Impl>,
    implementation: Impl,
    options: AddServiceOptions = {},
  ): this {
    if (this.#started !== undefined) throw new FailedPreconditionError('addService() after start()');
    this.#server.addService(definition, implementation);
    this.#health.set(serviceNameOf(definition), (options.serving ?? true) ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
    return this;
  }

  /** Sets what the health service reports for `service` (a full name, or '' for the server). */
  setServing(service: string, serving: boolean): void {
    if (this.#closed !== undefined) return; // after close everything stays NOT_SERVING
    this.#health.set(service, serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
  }

  /** Binds and starts serving. Idempotent: later calls return the first result. */
  start(): Promise<GrpcServerAddress> {
    if (this.#closed !== undefined) return Promise.reject(new FailedPreconditionError('start() after close()'));
    this.#started ??= this.#bind();
    return this.#started;
  }

  async #bind(): Promise<GrpcServerAddress> {
    const port = await new Promise<number>((resolve, reject) => {
      this.#server.bindAsync(this.#address, this.#credentials, (err, boundPort) => {
        if (err !== null) reject(new UnavailableError(`cannot bind ${this.#address}: ${err.message}`, { cause: err }));
        else resolve(boundPort);
      });
    });
    this.#health.set('', ServingStatus.SERVING);
    const host = this.#address.slice(0, this.#address.lastIndexOf(':'));
    return { port, address: `${host}:${port}` };
  }

  /**
   * Stops the server: health turns NOT_SERVING, new calls are refused, in-flight calls get
   * `graceMs` to finish, then the rest are cancelled. Idempotent: every call returns the
   * same promise. Resolves once the server is stopped.
   */
  close(graceMs: number = DEFAULT_CLOSE_GRACE_MS): Promise<void> {
    this.#closed ??= this.#shutdown(graceMs);
    return this.#closed;
  }

  async #shutdown(graceMs: number): Promise<void> {
    // Let a start() in progress finish so its bound port is shut down too.
    await this.#started?.catch(() => undefined);
    try {
      // Health first: probes and peers see NOT_SERVING while calls drain.
      this.#health.shutdown();
    } finally {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          this.#server.forceShutdown();
          resolve();
        }, graceMs);
        this.#server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
  }

  /** `await using server = new GrpcServer()` closes it with the default grace period. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
