/**
 * @dinofleet/proto: the wire types generated from `proto/` and the gRPC plumbing every
 * dinofleet process shares (errors and their status mapping, retries, servers, clients).
 */
export * from './generated/dinofleet/v1/jobs.ts';
export * from './generated/dinofleet/v1/worker.ts';
export * from './generated/dinofleet/v1/collective.ts';
export * from './generated/dinofleet/v1/teacher_sync.ts';
export {
  HealthCheckRequest,
  HealthCheckResponse,
  HealthCheckResponse_ServingStatus,
  HealthClient,
  HealthService,
} from './generated/grpc/health/v1/health.ts';
export type { HealthServer } from './generated/grpc/health/v1/health.ts';
export * from './errors.ts';
export * from './retry.ts';
export * from './client.ts';
export * from './handlers.ts';
export * from './health.ts';
export * from './server.ts';
export * from './service-process.ts';
export * from './transport-security.ts';
export * from './api-tokens.ts';
