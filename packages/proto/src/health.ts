/**
 * The standard gRPC health service (grpc.health.v1.Health): the serving status of each
 * service a server hosts, for probes (grpc_health_probe, Kubernetes) and for peers.
 */
import { status } from '@grpc/grpc-js';
import type { ServerWritableStream } from '@grpc/grpc-js';
import { HealthCheckResponse_ServingStatus as ServingStatus } from './generated/grpc/health/v1/health.ts';
import type { HealthCheckRequest, HealthCheckResponse, HealthServer } from './generated/grpc/health/v1/health.ts';

/** The name the health service itself is registered under. */
export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';

/**
 * Serving status per service name; `''` is the server as a whole. Implements Check and
 * Watch over that table.
 */
export class HealthRegistry {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #watchers = new Map<string, Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>>();

  /** Sets the status of `service` and tells its watchers when it changed. */
  set(service: string, servingStatus: ServingStatus): void {
    if (this.#statuses.get(service) === servingStatus) return;
    this.#statuses.set(service, servingStatus);
    for (const call of this.#watchers.get(service) ?? []) call.write({ status: servingStatus });
  }

  /** Current status of `service`; `undefined` when it was never registered. */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** Every registered service name (including `''`). */
  services(): string[] {
    return [...this.#statuses.keys()];
  }

  /**
   * Marks every service NOT_SERVING (watchers hear it) and ends every Watch call, so a
   * graceful shutdown is not held open by probes that would otherwise watch forever.
   */
  shutdown(): void {
    for (const service of this.#statuses.keys()) this.set(service, ServingStatus.NOT_SERVING);
    for (const calls of this.#watchers.values()) for (const call of calls) call.end();
    this.#watchers.clear();
  }

  /** The grpc-js implementation of grpc.health.v1.Health over this registry. */
  implementation(): HealthServer {
    return {
      check: (call, callback) => {
        const servingStatus = this.#statuses.get(call.request.service);
        if (servingStatus === undefined) {
          // The spec: Check on an unknown service fails with NOT_FOUND.
          callback({ code: status.NOT_FOUND, details: `unknown service "${call.request.service}"` }, null);
          return;
        }
        callback(null, { status: servingStatus });
      },
      watch: (call) => {
        const service = call.request.service;
        let calls = this.#watchers.get(service);
        if (calls === undefined) {
          calls = new Set();
          this.#watchers.set(service, calls);
        }
        const watchers = calls;
        watchers.add(call);
        const forget = (): void => {
          watchers.delete(call);
        };
        call.on('cancelled', forget);
        call.on('close', forget);
        // The spec: Watch reports an unknown service as SERVICE_UNKNOWN instead of failing,
        // and keeps watching in case it is registered later.
        call.write({ status: this.#statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN });
      },
    };
  }
}
