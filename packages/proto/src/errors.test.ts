import { Metadata, status } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  DinofleetError,
  ERROR_CODE_BY_GRPC_STATUS,
  ErrorCode,
  GRPC_STATUS_BY_ERROR_CODE,
  INTERNAL_ERROR_MESSAGE,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  fromServiceError,
  isInternalError,
  toServiceError,
} from './errors.ts';

function serviceError(code: status, details: string): ServiceError {
  return Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata: new Metadata() });
}

// Every numeric gRPC status grpc-js defines, from its enum object (numeric enums map both ways).
const ALL_STATUSES = Object.values(status).filter((v): v is status => typeof v === 'number');

describe('error code <-> gRPC status mapping', () => {
  it('maps every error code to the status of the same name', () => {
    const codes = Object.values(ErrorCode);
    expect(Object.keys(GRPC_STATUS_BY_ERROR_CODE).sort()).toEqual([...codes].sort());
    for (const code of codes) expect(status[GRPC_STATUS_BY_ERROR_CODE[code]]).toBe(code);
  });

  it('maps every non-OK status back to a code, and round-trips every code', () => {
    expect(ALL_STATUSES).toHaveLength(17);
    const byStatus: Partial<Record<number, ErrorCode>> = ERROR_CODE_BY_GRPC_STATUS;
    for (const s of ALL_STATUSES) {
      if (s === status.OK) continue;
      expect(byStatus[s], status[s]).toBeDefined();
    }
    for (const code of Object.values(ErrorCode)) {
      expect(ERROR_CODE_BY_GRPC_STATUS[GRPC_STATUS_BY_ERROR_CODE[code] as Exclude<status, status.OK>]).toBe(code);
    }
  });
});

describe('error classes', () => {
  it('have a fixed name, a stable code and keep their cause', () => {
    const cause = new Error('redis said no');
    const err = new NotFoundError('job "j-1" not found', { cause });
    expect(err).toBeInstanceOf(DinofleetError);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('NotFoundError');
    expect(err.code).toBe('NOT_FOUND');
    expect(err.grpcStatus).toBe(status.NOT_FOUND);
    expect(err.cause).toBe(cause);
    expect('cause' in new NotFoundError('x')).toBe(false);
  });
});

describe('toServiceError', () => {
  it('keeps the status and message of a DinofleetError', () => {
    const e = toServiceError(new InvalidArgumentError('spec.batch must be >= 1'));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toBe('spec.batch must be >= 1');
    expect(e.metadata?.get('dinofleet-error-code')).toEqual(['INVALID_ARGUMENT']);
  });

  it('hides anything else behind INTERNAL without leaking its message', () => {
    for (const thrown of [new TypeError('cannot read x of undefined at /srv/secret.ts:12'), 'a string', undefined]) {
      const e = toServiceError(thrown);
      expect(e.code).toBe(status.INTERNAL);
      expect(e.details).toBe(INTERNAL_ERROR_MESSAGE);
      expect(isInternalError(thrown)).toBe(true);
    }
    expect(isInternalError(new UnavailableError('draining'))).toBe(false);
    expect(isInternalError(new InternalError('invariant broken'))).toBe(true);
  });
});

describe('fromServiceError', () => {
  it('builds the class for the status, with the details as message and the grpc error as cause', () => {
    const raw = serviceError(status.NOT_FOUND, 'job "j-9" not found');
    const err = fromServiceError(raw);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toBe('job "j-9" not found');
    expect(err.cause).toBe(raw);
  });

  it('folds UNKNOWN into Internal and OUT_OF_RANGE into InvalidArgument', () => {
    expect(fromServiceError(serviceError(status.UNKNOWN, 'x')).code).toBe('INTERNAL');
    expect(fromServiceError(serviceError(status.OUT_OF_RANGE, 'x')).code).toBe('INVALID_ARGUMENT');
  });

  it('passes DinofleetErrors through and wraps anything else as Internal', () => {
    const own = new UnavailableError('down');
    expect(fromServiceError(own)).toBe(own);
    const wrapped = fromServiceError(new Error('socket hang up'));
    expect(wrapped).toBeInstanceOf(InternalError);
    expect(wrapped.message).toBe('socket hang up');
  });
});
