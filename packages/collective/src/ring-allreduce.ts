/**
 * RingAllReduce: the float32 sum all-reduce between the ranks of one generation
 * (DESIGN.md step 3; docs/collective.md). One class for the worker, two transports behind
 * it: `tcp` ({@link TcpAllReduce}, the default) and `grpc` ({@link GrpcRingAllReduce}).
 */

import { fromServiceError, isDinofleetError } from '@dinofleet/proto';
import { allReduceStats, checkTag, copyFloats, resolveRingAllReduceConfig, Transport } from './allreduce-options.ts';
import type {
  AllReduceAlgorithm,
  AllReduceStats,
  AllReduceTag,
  LinkBandwidth,
  RingAllReduceConfig,
  RingAllReduceOptions,
} from './allreduce-options.ts';
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
  /** Figures of the last successful call; undefined before the first. */
  lastStats: AllReduceStats | undefined;
  readonly #impl: TcpAllReduce | GrpcRingAllReduce;
  readonly #onStats: ((stats: AllReduceStats) => void) | undefined;
  /** Calls run one after another, in call order; this is the previous one's settlement. */
  #tail: Promise<unknown> = Promise.resolve();
  #closed: Promise<void> | undefined;

  constructor(options: RingAllReduceOptions) {
    const config = resolveRingAllReduceConfig(options);
    this.#impl = config.transport === Transport.Grpc ? new GrpcRingAllReduce(options) : new TcpAllReduce(options);
    this.config = this.#impl.config;
    this.#onStats = options.onStats;
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
    return this.#enqueue(data, tag, false);
  }

  /**
   * {@link allReduceSum} into `data` itself, which it resolves with: saves allocating and
   * first touching a result array as large as the gradients (on these VMs a page fault per
   * 4 KiB makes that cost as much as the copy). `data` must not be read or written until
   * the promise settles; after a rejection its contents are unspecified.
   */
  allReduceSumInPlace(data: Float32Array, tag: AllReduceTag): Promise<Float32Array> {
    return this.#enqueue(data, tag, true);
  }

  #enqueue(data: Float32Array, tag: AllReduceTag, inPlace: boolean): Promise<Float32Array> {
    const deadline = Date.now() + this.config.timeoutMs;
    const run = this.#tail.then(() => this.#run(data, tag, deadline, inPlace));
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #run(data: Float32Array, tag: AllReduceTag, deadline: number, inPlace: boolean): Promise<Float32Array> {
    checkTag(tag);
    const abandoned = this.#impl.abandonedError();
    if (abandoned !== undefined) throw abandoned;
    const startedAt = performance.now();
    let out = data;
    if (!inPlace) {
      out = new Float32Array(data.length);
      copyFloats(data, out);
    }
    let algorithm: AllReduceAlgorithm;
    try {
      algorithm = await this.#impl.reduce(out, tag, deadline);
    } catch (err) {
      // DESIGN.md: a failed collective abandons the generation on this rank.
      const failure = isDinofleetError(err) ? err : fromServiceError(err);
      this.#impl.fail(failure);
      throw failure;
    }
    const stats = allReduceStats(tag, this.config, out.byteLength, (performance.now() - startedAt) / 1000, algorithm);
    this.lastStats = stats;
    try {
      this.#onStats?.(stats);
    } catch {
      // A failing metrics hook must not fail a collective that succeeded on every rank.
    }
    return out;
  }

  /** Ends this rank's part in the generation: pending calls reject, links close. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.#impl.close();
      await this.#tail;
    })();
    return this.#closed;
  }

  /** `await using ring = new RingAllReduce(...)` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
