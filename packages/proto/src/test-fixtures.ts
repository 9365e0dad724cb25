/**
 * Helpers for this package's tests (not exported from index.ts): a JobService whose
 * methods fail UNIMPLEMENTED unless overridden, and clients that `using` closes.
 */
import type { Client } from '@grpc/grpc-js';
import { UnimplementedError, toServiceError } from './errors.ts';
import type { JobServiceServer } from './generated/dinofleet/v1/jobs.ts';

/** A JobService implementation: `overrides`, and UNIMPLEMENTED for everything else. */
export function jobServiceStub(overrides: Partial<JobServiceServer> = {}): JobServiceServer {
  return {
    submitJob: (_call, callback) => callback(toServiceError(new UnimplementedError('submitJob')), null),
    getJob: (_call, callback) => callback(toServiceError(new UnimplementedError('getJob')), null),
    listJobs: (_call, callback) => callback(toServiceError(new UnimplementedError('listJobs')), null),
    watchJob: (call) => call.emit('error', toServiceError(new UnimplementedError('watchJob'))),
    scaleJob: (_call, callback) => callback(toServiceError(new UnimplementedError('scaleJob')), null),
    cancelJob: (_call, callback) => callback(toServiceError(new UnimplementedError('cancelJob')), null),
    ...overrides,
  };
}

/** `client` with `[Symbol.dispose]` closing its channel, for `using`. */
export function disposable<C extends Client>(client: C): C & Disposable {
  return Object.assign(client, { [Symbol.dispose]: () => client.close() });
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
