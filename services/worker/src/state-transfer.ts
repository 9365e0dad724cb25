/**
 * StateTransfer (collective.proto): how a joining rank gets the training state at the
 * generation's start step from a rank that holds it (docs/cluster.md, "Elasticity and
 * failures", worker items 2-3). The server streams a header (size, SHA-256 of the bytes,
 * state hash, format), then the "dinofleet-state-v1" bytes in chunks of at most 1 MiB; the
 * client checks the transport (offsets, size, SHA-256) and hands the bytes on.
 */
import { createHash } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import {
  DataLossError,
  StateTransferClient,
  callOptions,
  channelCredentials,
  createClient,
  fromServiceError,
  serverStreamHandler,
  withRetry,
} from '@dinofleet/proto';
import type { FetchStateRequest, FetchStateResponse, HandlerOptions, StateHeader, StateTransferServer, TransportSecurity } from '@dinofleet/proto';
import { DINO_STATE_FORMAT } from './state-codec.ts';

/** Largest chunk of a transfer, in bytes (collective.proto: at most 1 MiB). */
export const STATE_CHUNK_BYTES = 1024 * 1024;
/** Deadline of a whole FetchState call by default, in ms (docs/cluster.md, worker item 2). */
export const FETCH_STATE_DEADLINE_MS = 60_000;

/** An encoded state ready to be served. */
export interface ServableState {
  /** "dinofleet-state-v1" bytes (`encodeDinoState`). */
  readonly bytes: Uint8Array;
  /** `stateHash` of the state the bytes encode. */
  readonly stateHash: Uint8Array;
}

/** Where the server takes the state from: the worker. */
export interface StateTransferSource {
  /**
   * The held state of `jobId` at acknowledged step `step`, encoded now.
   * @throws FailedPreconditionError when the worker holds no such state.
   */
  encodeHeldState(jobId: string, step: number, requester: string): Promise<ServableState>;
}

/** The StateTransfer service implementation over `source`; register it with `GrpcServer.addService(StateTransferService, …)`. */
export function stateTransferServer(source: StateTransferSource, options: HandlerOptions & { chunkBytes?: number } = {}): StateTransferServer {
  const chunkBytes = options.chunkBytes ?? STATE_CHUNK_BYTES;
  return {
    fetchState: serverStreamHandler<FetchStateRequest, FetchStateResponse>(async function* (request) {
      const { bytes, stateHash } = await source.encodeHeldState(request.jobId, request.step, request.workerId);
      const header: StateHeader = {
        jobId: request.jobId,
        step: request.step,
        sizeBytes: bytes.byteLength,
        sha256: createHash('sha256').update(bytes).digest(),
        stateHash: Buffer.from(stateHash),
        format: DINO_STATE_FORMAT,
      };
      yield { message: { $case: 'header', header } };
      const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let offset = 0; offset < view.byteLength; offset += chunkBytes) {
        yield { message: { $case: 'chunk', chunk: { offset, data: view.subarray(offset, offset + chunkBytes) } } };
      }
    }, options),
  };
}

/** What {@link fetchState} asks for. */
export interface FetchStateOptions {
  /** "host:port" of the source rank's Collective server. */
  readonly address: string;
  readonly jobId: string;
  readonly step: number;
  /** The asking worker (for the source's logs). */
  readonly workerId: string;
  /** How to dial the source (`channelCredentials(security)`; the source requires a fleet certificate under mTLS). */
  readonly security: TransportSecurity;
  /** Deadline of the whole call, in ms. @default 60000 */
  readonly deadlineMs?: number;
  /** Cancels the call. */
  readonly signal?: AbortSignal;
}

/** A fetched state: its header and the checked bytes. */
export interface FetchedState {
  readonly header: StateHeader;
  readonly bytes: Uint8Array;
}

/**
 * What the source may answer while it is still getting to the step: FAILED_PRECONDITION
 * (it is ending its previous generation and restoring its state, or has not taken its own
 * Assignment yet) and UNAVAILABLE (not reachable yet).
 */
const FETCH_RETRYABLE: ReadonlySet<status> = new Set([status.FAILED_PRECONDITION, status.UNAVAILABLE]);

/**
 * Streams the state of `jobId` at `step` from `address` and checks it arrived whole.
 * FAILED_PRECONDITION and UNAVAILABLE are retried with backoff within the deadline: the
 * source rank may get its Abort or Assignment after the joiner asks.
 *
 * @throws the source's last error (FAILED_PRECONDITION: it holds another step),
 *   DataLossError for a broken stream (offsets, size, SHA-256), DeadlineExceededError
 *   after `deadlineMs`; the signal's reason when it aborts.
 */
export function fetchState(options: FetchStateOptions): Promise<FetchedState> {
  const deadline = Date.now() + (options.deadlineMs ?? FETCH_STATE_DEADLINE_MS);
  return withRetry(({ deadlineMs }) => fetchStateOnce(options, deadlineMs), {
    maxAttempts: 100,
    initialBackoffMs: 250,
    maxBackoffMs: 2_000,
    deadline,
    retryableStatuses: FETCH_RETRYABLE,
    ...(options.signal !== undefined && { signal: options.signal }),
  });
}

async function fetchStateOnce(options: FetchStateOptions, notAfterMs: number): Promise<FetchedState> {
  const client = createClient(StateTransferClient, options.address, { credentials: channelCredentials(options.security) });
  const call = client.fetchState(
    { jobId: options.jobId, step: options.step, workerId: options.workerId },
    callOptions({ deadlineMs: Math.max(1, notAfterMs - Date.now()), notAfterMs }),
  );
  const onAbort = (): void => call.cancel();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let header: StateHeader | undefined;
    let bytes: Buffer | undefined;
    let received = 0;
    try {
      for await (const message of call as AsyncIterable<FetchStateResponse>) {
        const m = message.message;
        if (m?.$case === 'header') {
          if (header !== undefined) throw new DataLossError('the state transfer sent a second header');
          header = m.header;
          if (header.jobId !== options.jobId || header.step !== options.step) {
            throw new DataLossError(`asked for job ${options.jobId} step ${options.step}, the source sent job ${header.jobId} step ${header.step}`);
          }
          if (header.format !== DINO_STATE_FORMAT) throw new DataLossError(`the source sent format ${JSON.stringify(header.format)}, expected ${DINO_STATE_FORMAT}`);
          bytes = Buffer.alloc(header.sizeBytes);
        } else if (m?.$case === 'chunk') {
          if (bytes === undefined) throw new DataLossError('the state transfer sent a chunk before its header');
          if (m.chunk.offset !== received || received + m.chunk.data.byteLength > bytes.byteLength) {
            throw new DataLossError(`the state transfer sent ${m.chunk.data.byteLength} bytes at offset ${m.chunk.offset}, expected offset ${received} of ${bytes.byteLength}`);
          }
          bytes.set(m.chunk.data, received);
          received += m.chunk.data.byteLength;
        }
      }
    } catch (err) {
      if (options.signal?.aborted === true) throw options.signal.reason instanceof Error ? options.signal.reason : err;
      throw err instanceof DataLossError ? err : fromServiceError(err);
    }
    if (header === undefined || bytes === undefined) throw new DataLossError('the state transfer ended without a header');
    if (received !== bytes.byteLength) throw new DataLossError(`the state transfer ended after ${received} of ${bytes.byteLength} bytes`);
    if (!createHash('sha256').update(bytes).digest().equals(Buffer.from(header.sha256))) {
      throw new DataLossError('the state transfer arrived with another SHA-256 than its header says');
    }
    return { header, bytes };
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    if (stillOpen(call)) call.cancel();
    client.close();
  }
}

/** Whether the call is still open (a check threw before it ended). */
function stillOpen(call: { readableEnded?: boolean }): boolean {
  return call.readableEnded !== true;
}
