/**
 * RingAllReduce: the float32 sum all-reduce between the ranks of one generation
 * (DESIGN.md step 3; docs/collective.md). One class for the worker, two transports behind
 * it: `tcp` ({@link TcpAllReduce}, the default) and `grpc` ({@link GrpcRingAllReduce}).
 */

import { resolveRingAllReduceConfig, Transport } from './allreduce-options.ts';
import type { AllReduceStats, AllReduceTag, LinkBandwidth, RingAllReduceConfig, RingAllReduceOptions } from './allreduce-options.ts';
import { GrpcRingAllReduce } from './grpc-ring-allreduce.ts';
import { TcpAllReduce } from './tcp-allreduce.ts';

/**
 * One rank's side of the all-reduce for one generation. Build one per generation on the
 * worker's CollectiveEndpoint; call {@link allReduceSum} with the same tags and vector
 * lengths on every rank; {@link close} it when the generation ends. After any failure the
 * instance is abandoned (every later call rejects): DESIGN.md aborts the generation rather
 * than retrying a collective. Errors name the peer (rank and address).
 */
export class RingAllReduce implements AsyncDisposable {
  /** The resolved settings. */
  readonly config: RingAllReduceConfig;
  readonly #impl: TcpAllReduce | GrpcRingAllReduce;

  constructor(options: RingAllReduceOptions) {
    const config = resolveRingAllReduceConfig(options);
    this.#impl = config.transport === Transport.Grpc ? new GrpcRingAllReduce(options) : new TcpAllReduce(options);
    this.config = this.#impl.config;
  }

  /** Figures of the last successful call; undefined before the first. */
  get lastStats(): AllReduceStats | undefined {
    return this.#impl.lastStats;
  }

  /** The ring link's measured bandwidth (tcp transport, once its probe arrived). */
  get linkBandwidth(): LinkBandwidth | undefined {
    return this.#impl instanceof TcpAllReduce ? this.#impl.linkBandwidth : undefined;
  }

  /**
   * The element-wise float32 sum of `data` over all ranks, as a new array (`data` is not
   * changed). Every rank gets bit-identical results. Rejects with a DinofleetError naming
   * the peer on a dead, silent or mismatched peer, and with DeadlineExceededError after
   * `timeoutMs`. Calls made before the previous one settled wait for it.
   */
  allReduceSum(data: Float32Array, tag: AllReduceTag): Promise<Float32Array> {
    return this.#impl.allReduceSum(data, tag);
  }

  /**
   * {@link allReduceSum} into `data` itself, which it resolves with: saves allocating and
   * first touching a result array as large as the gradients. `data` must not be read or
   * written until the promise settles; after a rejection its contents are unspecified.
   */
  allReduceSumInPlace(data: Float32Array, tag: AllReduceTag): Promise<Float32Array> {
    return this.#impl.allReduceSumInPlace(data, tag);
  }

  /** Ends this rank's part in the generation: pending calls reject, links close. Idempotent. */
  close(): Promise<void> {
    return this.#impl.close();
  }

  /** `await using ring = new RingAllReduce(...)` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}


