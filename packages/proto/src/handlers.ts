/**
 * Adapters from async functions to grpc-js handlers, so service code can `return` a
 * response or `throw` a DinofleetError and the status mapping happens in one place.
 */
import type { handleServerStreamingCall, handleUnaryCall, ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import { isInternalError, toServiceError } from './errors.ts';

/** Options shared by the handler adapters. */
export interface HandlerOptions {
  /**
   * Called with every error that becomes INTERNAL on the wire (anything that is not a
   * DinofleetError, and InternalError), so its cause reaches the log the client cannot
   * see. @default none
   */
  onInternalError?: (err: unknown, path: string) => void;
}

function report(err: unknown, path: string, options: HandlerOptions): void {
  if (!isInternalError(err)) return;
  try {
    options.onInternalError?.(err, path);
  } catch {
    // A failing logger must not turn one error into an unanswered call.
  }
}

/**
 * A grpc-js unary handler running `fn`: its result is the response, whatever it throws
 * goes through {@link toServiceError}.
 */
export function unaryHandler<Req, Res>(
  fn: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>,
  options: HandlerOptions = {},
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request, call).then(
      (response) => callback(null, response),
      (err: unknown) => {
        report(err, call.getPath(), options);
        callback(toServiceError(err), null);
      },
    );
  };
}

/**
 * A grpc-js server-streaming handler that writes everything `fn` yields, honouring
 * back-pressure, and ends the call when `fn` returns. A throw ends the call with the
 * mapped status. When the client cancels (or its deadline passes) `signal` aborts and the
 * generator's `return()` runs its cleanup.
 */
export function serverStreamHandler<Req, Res>(
  fn: (request: Req, signal: AbortSignal, call: ServerWritableStream<Req, Res>) => AsyncIterable<Res>,
  options: HandlerOptions = {},
): handleServerStreamingCall<Req, Res> {
  return (call) => {
    const abort = new AbortController();
    const onCancelled = (): void => abort.abort();
    call.on('cancelled', onCancelled);
    const pump = async (): Promise<void> => {
      for await (const message of fn(call.request, abort.signal, call)) {
        if (abort.signal.aborted) break;
        if (!call.write(message)) {
          // Wait for the client to catch up (or go away) before producing more.
          await new Promise<void>((resolve) => {
            const done = (): void => {
              call.off('drain', done);
              abort.signal.removeEventListener('abort', done);
              resolve();
            };
            call.once('drain', done);
            abort.signal.addEventListener('abort', done, { once: true });
          });
        }
      }
    };
    pump().then(
      () => {
        call.off('cancelled', onCancelled);
        if (!abort.signal.aborted) call.end();
      },
      (err: unknown) => {
        call.off('cancelled', onCancelled);
        report(err, call.getPath(), options);
        // grpc-js turns an 'error' event on a server stream into the trailing status;
        // destroy(err) would tear the stream down without sending one.
        if (!abort.signal.aborted) call.emit('error', toServiceError(err));
      },
    );
  };
}
