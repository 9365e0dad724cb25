/**
 * dinofleet's error vocabulary and its one mapping onto gRPC status codes.
 *
 * Servers throw these classes (or anything else); {@link toServiceError} turns whatever was
 * thrown into the status a client sees. Clients turn a failed call back into the same
 * class with {@link fromServiceError}, so `err instanceof NotFoundError` works on both
 * sides of the wire.
 */
import { Metadata, status } from '@grpc/grpc-js';
import type { ServerErrorResponse, ServiceError } from '@grpc/grpc-js';

/**
 * Stable, machine-readable error codes. The values equal the gRPC status names they map
 * to, so logs and the wire agree.
 */
export const ErrorCode = {
  /** The request is malformed or a field is out of range; retrying the same request fails again. */
  InvalidArgument: 'INVALID_ARGUMENT',
  /** The named job, worker, snapshot or step does not exist. */
  NotFound: 'NOT_FOUND',
  /** The thing to create exists already (e.g. a job id). */
  AlreadyExists: 'ALREADY_EXISTS',
  /** The system is not in the state the request needs (e.g. scaling a finished job). */
  FailedPrecondition: 'FAILED_PRECONDITION',
  /** The caller is known but may not do this. */
  PermissionDenied: 'PERMISSION_DENIED',
  /** The caller did not prove who it is. */
  Unauthenticated: 'UNAUTHENTICATED',
  /** A quota, a size limit or a queue is exhausted. */
  ResourceExhausted: 'RESOURCE_EXHAUSTED',
  /** The service cannot answer now (starting, draining, connection lost); retry with backoff. */
  Unavailable: 'UNAVAILABLE',
  /** The deadline passed before the operation finished. */
  DeadlineExceeded: 'DEADLINE_EXCEEDED',
  /** A concurrency conflict, e.g. a message for a generation that has ended; retry at a higher level. */
  Aborted: 'ABORTED',
  /** The caller cancelled the operation. */
  Cancelled: 'CANCELLED',
  /** The server does not implement the method (version skew between processes). */
  Unimplemented: 'UNIMPLEMENTED',
  /** Data was lost or corrupted (e.g. a snapshot whose hash does not match). */
  DataLoss: 'DATA_LOSS',
  /** A bug or an unexpected failure; the details are in the server's log, not the message. */
  Internal: 'INTERNAL',
} as const;

/** One of the {@link ErrorCode} values. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * THE mapping from error code to gRPC status. `Record<ErrorCode, status>` makes the
 * compiler reject a code without a status.
 */
export const GRPC_STATUS_BY_ERROR_CODE: Readonly<Record<ErrorCode, status>> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  ABORTED: status.ABORTED,
  CANCELLED: status.CANCELLED,
  UNIMPLEMENTED: status.UNIMPLEMENTED,
  DATA_LOSS: status.DATA_LOSS,
  INTERNAL: status.INTERNAL,
};

/**
 * The way back, for clients: every non-OK gRPC status to the code a client sees. Statuses
 * dinofleet never sends itself (UNKNOWN, OUT_OF_RANGE) fold into the nearest code.
 * Complete by construction, like {@link GRPC_STATUS_BY_ERROR_CODE}.
 */
export const ERROR_CODE_BY_GRPC_STATUS: Readonly<Record<Exclude<status, status.OK>, ErrorCode>> = {
  [status.CANCELLED]: ErrorCode.Cancelled,
  // UNKNOWN comes from handlers that threw outside our wrappers, or from grpc-js itself.
  [status.UNKNOWN]: ErrorCode.Internal,
  [status.INVALID_ARGUMENT]: ErrorCode.InvalidArgument,
  [status.DEADLINE_EXCEEDED]: ErrorCode.DeadlineExceeded,
  [status.NOT_FOUND]: ErrorCode.NotFound,
  [status.ALREADY_EXISTS]: ErrorCode.AlreadyExists,
  [status.PERMISSION_DENIED]: ErrorCode.PermissionDenied,
  [status.RESOURCE_EXHAUSTED]: ErrorCode.ResourceExhausted,
  [status.FAILED_PRECONDITION]: ErrorCode.FailedPrecondition,
  [status.ABORTED]: ErrorCode.Aborted,
  // OUT_OF_RANGE is INVALID_ARGUMENT that may succeed once the system moves on; we have
  // no use for the distinction.
  [status.OUT_OF_RANGE]: ErrorCode.InvalidArgument,
  [status.UNIMPLEMENTED]: ErrorCode.Unimplemented,
  [status.INTERNAL]: ErrorCode.Internal,
  [status.UNAVAILABLE]: ErrorCode.Unavailable,
  [status.DATA_LOSS]: ErrorCode.DataLoss,
  [status.UNAUTHENTICATED]: ErrorCode.Unauthenticated,
};

/** Options every dinofleet error accepts. */
export interface DinofleetErrorOptions {
  /** The error that caused this one; kept for logs, never sent over the wire. */
  cause?: unknown;
}

/** Base class of every error with a stable {@link ErrorCode}. */
export abstract class DinofleetError extends Error {
  /** Stable machine-readable code; decides the gRPC status. */
  abstract readonly code: ErrorCode;

  constructor(message: string, options?: DinofleetErrorOptions) {
    // Only pass `cause` when given so `'cause' in err` stays false otherwise.
    super(message, options !== undefined && 'cause' in options ? { cause: options.cause } : undefined);
  }

  /** The gRPC status this error travels as. */
  get grpcStatus(): status {
    return GRPC_STATUS_BY_ERROR_CODE[this.code];
  }
}

/** The request is malformed or a field is out of range. */
export class InvalidArgumentError extends DinofleetError {
  override readonly name = 'InvalidArgumentError';
  readonly code = ErrorCode.InvalidArgument;
}

/** The named resource does not exist. */
export class NotFoundError extends DinofleetError {
  override readonly name = 'NotFoundError';
  readonly code = ErrorCode.NotFound;
}

/** The resource to create exists already. */
export class AlreadyExistsError extends DinofleetError {
  override readonly name = 'AlreadyExistsError';
  readonly code = ErrorCode.AlreadyExists;
}

/** The system is not in the state the request needs. */
export class FailedPreconditionError extends DinofleetError {
  override readonly name = 'FailedPreconditionError';
  readonly code = ErrorCode.FailedPrecondition;
}

/** The caller may not do this. */
export class PermissionDeniedError extends DinofleetError {
  override readonly name = 'PermissionDeniedError';
  readonly code = ErrorCode.PermissionDenied;
}

/** The caller did not authenticate. */
export class UnauthenticatedError extends DinofleetError {
  override readonly name = 'UnauthenticatedError';
  readonly code = ErrorCode.Unauthenticated;
}

/** A quota, size limit or queue is exhausted. */
export class ResourceExhaustedError extends DinofleetError {
  override readonly name = 'ResourceExhaustedError';
  readonly code = ErrorCode.ResourceExhausted;
}

/** The service cannot answer now; retryable. */
export class UnavailableError extends DinofleetError {
  override readonly name = 'UnavailableError';
  readonly code = ErrorCode.Unavailable;
}

/** The deadline passed. */
export class DeadlineExceededError extends DinofleetError {
  override readonly name = 'DeadlineExceededError';
  readonly code = ErrorCode.DeadlineExceeded;
}

/** A concurrency conflict (e.g. a stale generation). */
export class AbortedError extends DinofleetError {
  override readonly name = 'AbortedError';
  readonly code = ErrorCode.Aborted;
}

/** The operation was cancelled by the caller. */
export class CancelledError extends DinofleetError {
  override readonly name = 'CancelledError';
  readonly code = ErrorCode.Cancelled;
}

/** The method is not implemented by the server. */
export class UnimplementedError extends DinofleetError {
  override readonly name = 'UnimplementedError';
  readonly code = ErrorCode.Unimplemented;
}

/** Data was lost or corrupted. */
export class DataLossError extends DinofleetError {
  override readonly name = 'DataLossError';
  readonly code = ErrorCode.DataLoss;
}

/** An unexpected failure. */
export class InternalError extends DinofleetError {
  override readonly name = 'InternalError';
  readonly code = ErrorCode.Internal;
}

type DinofleetErrorClass = new (message: string, options?: DinofleetErrorOptions) => DinofleetError;

/** Which class to build for a code on the client side; complete by its type. */
const ERROR_CLASS_BY_CODE: Readonly<Record<ErrorCode, DinofleetErrorClass>> = {
  INVALID_ARGUMENT: InvalidArgumentError,
  NOT_FOUND: NotFoundError,
  ALREADY_EXISTS: AlreadyExistsError,
  FAILED_PRECONDITION: FailedPreconditionError,
  PERMISSION_DENIED: PermissionDeniedError,
  UNAUTHENTICATED: UnauthenticatedError,
  RESOURCE_EXHAUSTED: ResourceExhaustedError,
  UNAVAILABLE: UnavailableError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  ABORTED: AbortedError,
  CANCELLED: CancelledError,
  UNIMPLEMENTED: UnimplementedError,
  DATA_LOSS: DataLossError,
  INTERNAL: InternalError,
};

/** Message a client gets for an error the server did not anticipate. */
export const INTERNAL_ERROR_MESSAGE = 'internal error (details are in the server log)';

/** Metadata key carrying the {@link ErrorCode} next to the status, for log correlation. */
export const ERROR_CODE_METADATA_KEY = 'dinofleet-error-code';

/** True for the errors this module defines. */
export function isDinofleetError(err: unknown): err is DinofleetError {
  return err instanceof DinofleetError;
}

/** True for an error produced by a grpc-js call (it carries a numeric status `code`). */
export function isServiceError(err: unknown): err is ServiceError {
  return (
    err instanceof Error &&
    typeof (err as Partial<ServiceError>).code === 'number' &&
    typeof (err as Partial<ServiceError>).details === 'string'
  );
}

/**
 * Server side: what to hand grpc-js (a unary callback's error, or `call.destroy(...)` on a
 * stream) for anything a handler threw. A {@link DinofleetError} keeps its status and
 * message; anything else becomes INTERNAL with a fixed message, because its text may hold
 * paths, keys or stack details. Log `err` yourself when {@link isInternalError} says so.
 */
export function toServiceError(err: unknown): ServerErrorResponse {
  const known = isDinofleetError(err) ? err : undefined;
  const code: ErrorCode = known?.code ?? ErrorCode.Internal;
  const message = known?.message ?? INTERNAL_ERROR_MESSAGE;
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_METADATA_KEY, code);
  const serviceError: ServerErrorResponse = Object.assign(new Error(message), {
    code: GRPC_STATUS_BY_ERROR_CODE[code],
    details: message,
    metadata,
  });
  return serviceError;
}

/**
 * True when {@link toServiceError} would hide `err` behind INTERNAL, i.e. the caller must
 * log it (an {@link InternalError} thrown on purpose counts too).
 */
export function isInternalError(err: unknown): boolean {
  return !isDinofleetError(err) || err.code === ErrorCode.Internal;
}

/**
 * Client side: the {@link DinofleetError} for a failed call, with the grpc-js error as its
 * `cause` (status, metadata). A DinofleetError passes through; anything else that is not
 * a gRPC error becomes {@link InternalError} wrapping it.
 */
export function fromServiceError(err: unknown): DinofleetError {
  if (isDinofleetError(err)) return err;
  if (isServiceError(err) && err.code !== status.OK) {
    // A status number from a newer peer that this table does not know is still an error.
    const byStatus: Partial<Record<number, ErrorCode>> = ERROR_CODE_BY_GRPC_STATUS;
    const code = byStatus[err.code] ?? ErrorCode.Internal;
    const ErrorClass = ERROR_CLASS_BY_CODE[code];
    return new ErrorClass(err.details === '' ? err.message : err.details, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new InternalError(message, { cause: err });
}
