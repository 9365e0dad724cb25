/**
 * The FIFO between a rank's inbound Exchange stream and the all-reduce that consumes it.
 *
 * The stream is read eagerly, never paused: messages for a collective this rank has not
 * started yet (its left neighbour is ahead; ranks are not in lock-step) wait here instead
 * of being dropped. Reading eagerly also means a rank blocked on sending can never stop
 * its own receiving, so the ring cannot deadlock on HTTP/2 flow control. The queue stays
 * bounded by the ring's data dependency: a neighbour can run at most one collective ahead,
 * and within it at most the (n-1)/n of the buffer that does not depend on this rank.
 */
import type { ExchangeRequest } from '@dinofleet/proto';

/** Why a wait for the next message ended without one. */
export type InboundTimeout = 'deadline' | 'stall';

/** A FIFO of inbound chunks with one waiting consumer at a time. */
export class InboundQueue {
  readonly #messages: ExchangeRequest[] = [];
  #head = 0;
  #failure: Error | undefined;
  #waiter: { resolve: (message: ExchangeRequest) => void; reject: (err: Error) => void } | undefined;

  /** Messages received and not yet taken. */
  get size(): number {
    return this.#messages.length - this.#head;
  }

  /** Adds a message; hands it straight to a waiting consumer when there is one. */
  push(message: ExchangeRequest): void {
    if (this.#failure !== undefined) return;
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      waiter.resolve(message);
      return;
    }
    this.#messages.push(message);
  }

  /** Fails the waiting consumer and every later {@link take}; queued messages are dropped. */
  fail(err: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#messages.length = 0;
    this.#head = 0;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.reject(err);
  }

  /**
   * The next message. Waits at most `waitMs`; on timeout rejects with `onTimeout()`
   * (which names the peer and says which limit passed).
   */
  take(waitMs: number, onTimeout: () => Error): Promise<ExchangeRequest> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#head < this.#messages.length) {
      const message = this.#messages[this.#head] as ExchangeRequest;
      this.#messages[this.#head++] = undefined as unknown as ExchangeRequest; // let the payload be collected
      if (this.#head === this.#messages.length) {
        this.#messages.length = 0;
        this.#head = 0;
      }
      return Promise.resolve(message);
    }
    return new Promise<ExchangeRequest>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        reject(onTimeout());
      }, Math.max(0, waitMs));
      this.#waiter = {
        resolve: (message) => {
          clearTimeout(timer);
          resolve(message);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
  }
}
