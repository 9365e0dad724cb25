/**
 * The FIFO between a rank's inbound stream or data link and the all-reduce that consumes
 * it.
 *
 * The source is read eagerly: messages for a collective this rank has not started yet (its
 * neighbour is ahead; ranks are not in lock-step) wait here instead of being dropped.
 * Reading eagerly also means a rank blocked on sending can never stop its own receiving, so
 * the ring cannot deadlock on flow control. The queue stays bounded by the ring's data
 * dependency: a neighbour can run at most one collective ahead (a data link also pauses
 * its socket past a frame limit).
 */

/** A FIFO of inbound items with one waiting consumer at a time. */
export class InboundQueue<T> {
  readonly #items: T[] = [];
  #head = 0;
  #failure: Error | undefined;
  #waiter: { resolve: (item: T) => void; reject: (err: Error) => void; timer: NodeJS.Timeout } | undefined;

  /** Items received and not yet taken. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Adds an item; hands it straight to a waiting consumer when there is one. Ignored once ended. */
  push(item: T): void {
    if (this.#failure !== undefined) return;
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      clearTimeout(waiter.timer);
      waiter.resolve(item);
      return;
    }
    this.#items.push(item);
  }

  /**
   * Ends the queue with `err`: the waiting consumer (who found it empty) and every take
   * that finds it empty from now on reject with `err`. Items already queued are still
   * handed out first, unless `drop`, which removes and returns them (to release them).
   */
  end(err: Error, drop = false): T[] {
    const dropped = drop ? this.#items.slice(this.#head) : [];
    if (drop) {
      this.#items.length = 0;
      this.#head = 0;
    }
    if (this.#failure !== undefined) return dropped;
    this.#failure = err;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    if (waiter !== undefined) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
    }
    return dropped;
  }

  /**
   * The next item. Waits at most `waitMs`; on timeout rejects with `onTimeout()` (which
   * names the peer and says which limit passed).
   */
  take(waitMs: number, onTimeout: () => Error): Promise<T> {
    if (this.#head < this.#items.length) {
      const item = this.#items[this.#head] as T;
      this.#items[this.#head++] = undefined as T; // let the payload be collected
      if (this.#head === this.#items.length) {
        this.#items.length = 0;
        this.#head = 0;
      }
      return Promise.resolve(item);
    }
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        reject(onTimeout());
      }, Math.max(0, waitMs));
      this.#waiter = { resolve, reject, timer };
    });
  }
}
