/**
 * GrpcRingAllReduce: the `grpc` transport of RingAllReduce: the float32 sum all-reduce
 * between the ranks of one generation, over one long-lived Exchange stream from each rank
 * to its right neighbour (collective.proto). Slower than the `tcp` transport (HTTP/2's
 * per-frame cost, docs/collective.md) but it needs only the gRPC port.
 *
 * Bit-identity across ranks: each element of segment s is summed exactly once, along the
 * ring path s, s+1, ..., s-1 (reduce-scatter), by the rank that receives it; the
 * all-gather then copies the bytes of that one result to everyone. So every rank ends
 * with the same bits whatever the timing, and the sum order of element i depends only on
 * which segment i falls in, never on message arrival. (Each addition is an IEEE float32
 * addition: a + b is computed in float64 and rounded once to float32 on store, which is
 * the correctly rounded float32 sum since 53 >= 2*24 + 2.)
 */
import { status as grpcStatus } from '@grpc/grpc-js';
import type { ClientDuplexStream, StatusObject } from '@grpc/grpc-js';
import {
  AbortedError,
  CollectivePhase,
  DeadlineExceededError,
  UnavailableError,
  createClient,
  fromServiceError,
  toServiceError,
} from '@dinofleet/proto';
import type {
  CollectiveClient,
  CreateClientOptions,
  DinofleetError,
  ExchangeRequest,
  ExchangeResponse,
} from '@dinofleet/proto';
import type { InboundExchangeStream, InboundStreamSink } from './collective-endpoint.ts';
import { AllReduceAlgorithm, peerClientOptions, resolveRingAllReduceConfig } from './allreduce-options.ts';
import type { AllReduceTag, RingAllReduceConfig, RingAllReduceOptions } from './allreduce-options.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { InboundQueue } from './inbound-queue.ts';
import { initialSends, receiveSchedule } from './ring-schedule.ts';
import type { ScheduledChunk } from './ring-schedule.ts';

type RingPhase = CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER | CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER;

interface FlushWaiter {
  resolve: () => void;
  reject: (err: Error) => void;
}


/**
 * One rank's side of the ring for one generation. Build one per generation with the
 * worker's {@link CollectiveEndpoint}; call {@link allReduceSum} with the same tags and
 * buffer lengths on every rank; {@link close} it when the generation ends. After any
 * failure the instance is abandoned (every later call rejects): DESIGN.md aborts the
 * generation rather than retrying a collective.
 *
 * The worker's step adapter (not here, to keep this package free of tfjs):
 * `reduceSum = async (local) => tf.tensor(await ring.allReduceSum(await local.data() as
 * Float32Array, { step, op: op++ }), local.shape)`.
 */
export class GrpcRingAllReduce implements InboundStreamSink, AsyncDisposable {
  /** The resolved settings. */
  readonly config: RingAllReduceConfig;
  readonly #leftRank: number;
  readonly #rightRank: number;
  readonly #inbound = new InboundQueue<ExchangeRequest>();
  readonly #unregister: () => void;
  readonly #clientOptions: CreateClientOptions;
  #inboundStream: InboundExchangeStream | undefined;
  #client: CollectiveClient | undefined;
  #outbound: ClientDuplexStream<ExchangeRequest, ExchangeResponse> | undefined;
  #pendingWrites = 0;
  #flushWaiters: FlushWaiter[] = [];
  #chunksConsumed = 0;
  #lastCompleted: AllReduceTag = { step: 0, op: 0 };
  #ackedChunks = 0;
  #scratch: Float32Array | undefined;
  #failure: DinofleetError | undefined;
  #closing = false;
  #closed: Promise<void> | undefined;

  constructor(options: RingAllReduceOptions) {
    this.config = resolveRingAllReduceConfig(options);
    this.#clientOptions = peerClientOptions(this.config, options.endpoint);
    const { rank, worldSize } = this.config;
    this.#leftRank = (rank - 1 + worldSize) % worldSize;
    this.#rightRank = (rank + 1) % worldSize;
    // A single rank never talks to anyone, so it claims no stream either.
    this.#unregister = worldSize === 1 ? () => undefined : options.endpoint.register(this.config.job, this.config.generation, this);
  }

  /** Chunks the right neighbour has acknowledged as consumed on this generation's stream. */
  get ackedChunks(): number {
    return this.#ackedChunks;
  }

  /**
   * TransportCollective: sums `out` in place over the ranks by the ring, or rejects (the
   * caller then calls {@link fail}). Calls come one at a time, in tag order.
   */
  async reduce(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<AllReduceAlgorithm> {
    const abandoned = this.abandonedError();
    if (abandoned !== undefined) throw abandoned;
    if (this.config.worldSize === 1 || out.length === 0) return AllReduceAlgorithm.Local;
    await this.#ringAllReduce(out, tag, deadline);
    this.#lastCompleted = tag;
    return AllReduceAlgorithm.Ring;
  }

  /** TransportCollective: the error every call gets once the generation is abandoned here, else undefined. */
  abandonedError(): AbortedError | undefined {
    if (this.#failure === undefined) return undefined;
    return new AbortedError(`${this.#self()} abandoned generation ${this.config.generation}: ${this.#failure.message}`, { cause: this.#failure });
  }

  /** TransportCollective: abandons the generation with `err` (idempotent). */
  fail(err: DinofleetError): void {
    this.#fail(err);
  }

  async #ringAllReduce(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, rank, chunkBytes } = this.config;
    const chunkElements = chunkBytes / 4;
    const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    const sequences = { [CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER]: 0, [CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER]: 0 };
    const send = (phase: RingPhase, chunk: ScheduledChunk): void => {
      this.#write({
        jobId: this.config.job,
        generation: this.config.generation,
        step: tag.step,
        round: tag.op,
        phase,
        sequence: sequences[phase]++,
        fromRank: rank,
        segment: chunk.segment,
        offset: chunk.offset,
        // A view, not a copy: the region is not written again before grpc-js serialises
        // it (see the causality note below), and #flush() waits for that before returning.
        payload: Buffer.from(out.buffer, out.byteOffset + chunk.start * 4, chunk.length * 4),
      });
    };

    // Reduce-scatter step 0: our own segment depends on nobody, so all of it goes at once.
    for (const chunk of initialSends(out.length, n, rank, chunkElements)) send(chunk.phase, chunk);

    // Every later send forwards the chunk just received, so sending, receiving and summing
    // overlap chunk by chunk. Causality keeps the views sent above safe: a region of `out`
    // is overwritten (all-gather) or summed into (reduce-scatter) only after receiving a
    // chunk that could not exist before our earlier message about that region reached
    // the right neighbour, and a region summed into is sent only after the sum.
    let heardFromLeft = false;
    for (const expected of receiveSchedule(out.length, n, rank, chunkElements)) {
      const message = await this.#receive(tag, deadline, heardFromLeft);
      heardFromLeft = true;
      this.#check(message, expected, tag);
      if (expected.phase === CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER) {
        this.#addInto(out, expected.start, message.payload);
        // After the last reduce-scatter step the chunk is fully reduced: it starts the all-gather.
        if (expected.ringStep < n - 2) send(CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER, expected);
        else send(CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER, expected);
      } else {
        outBytes.set(message.payload, expected.start * 4);
        if (expected.ringStep < n - 2) send(CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER, expected);
      }
      this.#acknowledge();
    }
    // The caller may reuse `out` as soon as we return, so every view must be serialised.
    await this.#flush(tag, deadline);
  }

  /** out[start + i] += payload[i], reading the payload even when it is not 4-byte aligned. */
  #addInto(out: Float32Array, start: number, payload: Buffer): void {
    const length = payload.byteLength / 4;
    let partial: Float32Array;
    if (payload.byteOffset % 4 === 0) {
      partial = new Float32Array(payload.buffer, payload.byteOffset, length);
    } else {
      // The decoder hands out views into grpc-js's message buffer; after the protobuf
      // header they are usually unaligned. One memcpy into scratch beats a DataView loop.
      if (this.#scratch === undefined || this.#scratch.length < length) this.#scratch = new Float32Array(this.config.chunkBytes / 4);
      new Uint8Array(this.#scratch.buffer, 0, payload.byteLength).set(payload);
      partial = this.#scratch;
    }
    for (let i = 0; i < length; i++) {
      out[start + i] = (out[start + i] as number) + (partial[i] as number);
    }
  }

  #receive(tag: AllReduceTag, deadline: number, heardFromLeft: boolean): Promise<ExchangeRequest> {
    const remainingMs = deadline - Date.now();
    const { stallTimeoutMs, timeoutMs } = this.config;
    const stalls = heardFromLeft && stallTimeoutMs < remainingMs;
    return this.#inbound.take(stalls ? stallTimeoutMs : remainingMs, () =>
      stalls
        ? new UnavailableError(
            `${this.#peer(this.#leftRank)} sent nothing for ${stallTimeoutMs} ms in the middle of step ${tag.step} op ${tag.op} (${this.#self()} waiting)`,
          )
        : new DeadlineExceededError(
            `all-reduce step ${tag.step} op ${tag.op} on ${this.#self()} timed out after ${timeoutMs} ms waiting for ${this.#peer(this.#leftRank)}`,
          ),
    );
  }

  #check(message: ExchangeRequest, expected: ScheduledChunk, tag: AllReduceTag): void {
    const from = this.#peer(this.#leftRank);
    if (message.step !== tag.step || message.round !== tag.op) {
      throw new AbortedError(
        `${from} sent a chunk of step ${message.step} op ${message.round} while ${this.#self()} runs step ${tag.step} op ${tag.op}: the ranks disagree on the sequence of collectives`,
      );
    }
    if (
      message.phase !== expected.phase ||
      message.sequence !== expected.sequence ||
      message.segment !== expected.segment ||
      message.offset !== expected.offset ||
      message.payload.byteLength !== expected.length * 4
    ) {
      throw new AbortedError(
        `${from} sent phase ${message.phase} chunk ${message.sequence} (segment ${message.segment}, offset ${message.offset}, ${message.payload.byteLength} bytes) where ${this.#self()} expects phase ${expected.phase} chunk ${expected.sequence} (segment ${expected.segment}, offset ${expected.offset}, ${expected.length * 4} bytes): buffer lengths or chunkBytes differ between ranks`,
      );
    }
  }

  #acknowledge(): void {
    this.#chunksConsumed++;
    // Flow-control information only (collective.proto); nobody waits on it for correctness.
    this.#inboundStream?.write({
      step: this.#lastCompleted.step,
      round: this.#lastCompleted.op,
      chunksConsumed: this.#chunksConsumed,
    });
  }

  #write(message: ExchangeRequest): void {
    // A failure may land between an await and this write; never reopen a torn-down stream.
    if (this.#failure !== undefined) throw this.#failure;
    const stream = this.#outbound ?? this.#openOutbound();
    this.#pendingWrites++;
    // No waiting for 'drain': every queued message is a view of the caller's buffer, so
    // the queue costs no memory beyond it, and the ring's data dependency bounds it to one
    // collective. The callback tells when grpc-js has serialised the message.
    stream.write(message, (err: Error | null | undefined) => {
      this.#pendingWrites--;
      if (err !== null && err !== undefined) {
        this.#fail(this.#peerFailure(this.#rightRank, 'could not be written to', err));
        return;
      }
      if (this.#pendingWrites === 0) {
        const waiters = this.#flushWaiters;
        this.#flushWaiters = [];
        for (const waiter of waiters) waiter.resolve();
      }
    });
  }

  #flush(tag: AllReduceTag, deadline: number): Promise<void> {
    if (this.#pendingWrites === 0) return Promise.resolve();
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new DeadlineExceededError(
              `all-reduce step ${tag.step} op ${tag.op} on ${this.#self()} timed out after ${this.config.timeoutMs} ms sending to ${this.#peer(this.#rightRank)}`,
            ),
          ),
        Math.max(0, deadline - Date.now()),
      );
      this.#flushWaiters.push({
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
    });
  }

  #openOutbound(): ClientDuplexStream<ExchangeRequest, ExchangeResponse> {
    const address = this.config.peers[this.#rightRank] as string;
    this.#client = createClient(CollectiveExchangeClient, address, this.#clientOptions);
    // No deadline on the stream itself: it lives as long as the generation. Every
    // collective carried on it has its own deadline and stall timeout, and keepalive
    // pings (createClient's defaults) find a vanished peer between collectives.
    const stream = this.#client.exchange();
    stream.on('data', (ack: ExchangeResponse) => {
      this.#ackedChunks = ack.chunksConsumed;
    });
    stream.on('error', (err: Error) => this.#fail(this.#peerFailure(this.#rightRank, 'failed the ring stream', err)));
    stream.on('status', (status: StatusObject) => {
      if (status.code === grpcStatus.OK) {
        this.#fail(new UnavailableError(`${this.#peer(this.#rightRank)} ended the ring stream (it left generation ${this.config.generation})`));
      }
    });
    this.#outbound = stream;
    return stream;
  }

  /** InboundStreamSink: the endpoint hands over the stream from the left neighbour. */
  attachInbound(stream: InboundExchangeStream, received: readonly ExchangeRequest[]): void {
    if (this.#failure !== undefined) {
      stream.emit('error', toServiceError(this.#abandonedError()));
      return;
    }
    if (this.#inboundStream !== undefined) {
      stream.emit(
        'error',
        toServiceError(new AbortedError(`${this.#self()} has an inbound ring stream for generation ${this.config.generation} already`)),
      );
      return;
    }
    this.#inboundStream = stream;
    stream.on('data', (message: ExchangeRequest) => this.#onInbound(message));
    stream.on('end', () => {
      this.#fail(new UnavailableError(`${this.#peer(this.#leftRank)} closed its ring stream (it left generation ${this.config.generation})`));
    });
    stream.on('cancelled', () => {
      this.#fail(new UnavailableError(`${this.#peer(this.#leftRank)} cancelled its ring stream (it left or failed generation ${this.config.generation})`));
    });
    stream.on('error', (err: Error) => this.#fail(this.#peerFailure(this.#leftRank, 'failed the ring stream', err)));
    for (const message of received) this.#onInbound(message);
  }

  #onInbound(message: ExchangeRequest): void {
    if (this.#failure !== undefined) return;
    const { job, generation } = this.config;
    if (message.jobId !== job || message.generation !== generation) {
      // collective.proto: ranks of different generations must never mix sums.
      this.#fail(
        new AbortedError(
          `stale generation: ${this.#peer(this.#leftRank)} sent a chunk of job ${message.jobId} generation ${message.generation} to ${this.#self()} of job ${job} generation ${generation}`,
        ),
      );
      return;
    }
    if (message.fromRank !== this.#leftRank) {
      this.#fail(
        new AbortedError(
          `${this.#self()} got a chunk from rank ${message.fromRank} on the stream of its left neighbour ${this.#peer(this.#leftRank)}: the ranks disagree on the ring order`,
        ),
      );
      return;
    }
    this.#inbound.push(message);
  }

  /** InboundStreamSink: the endpoint is closing. */
  abort(err: DinofleetError): void {
    this.#fail(err);
  }

  /**
   * Abandons the generation on this rank: pending and later calls reject with `err`, the
   * left neighbour's stream ends with ABORTED and this reason, the right neighbour's
   * stream is cancelled. Both neighbours then fail too, so a failure anywhere stops the
   * whole ring within milliseconds instead of each rank waiting out its own timeout.
   */
  #fail(err: DinofleetError): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#inbound.end(err, true);
    const waiters = this.#flushWaiters;
    this.#flushWaiters = [];
    for (const waiter of waiters) waiter.reject(err);
    const inbound = this.#inboundStream;
    if (inbound !== undefined && !inbound.cancelled && inbound.writable) {
      inbound.removeAllListeners('data');
      if (this.#closing) inbound.end();
      else inbound.emit('error', toServiceError(this.#abandonedError()));
    }
    this.#outbound?.cancel();
    this.#client?.close();
  }

  #abandonedError(): AbortedError {
    const reason = this.#failure?.message ?? 'closed';
    return new AbortedError(`${this.#self()} abandoned generation ${this.config.generation}: ${reason}`);
  }

  #self(): string {
    return `rank ${this.config.rank} (${this.config.peers[this.config.rank]})`;
  }

  #peer(rank: number): string {
    return `rank ${rank} (${this.config.peers[rank]})`;
  }

  #peerFailure(rank: number, what: string, err: unknown): DinofleetError {
    const cause = fromServiceError(err);
    const message = `${this.#peer(rank)} ${what}: ${cause.message}`;
    // ABORTED means the peer refused on purpose (stale generation, it abandoned the
    // generation); anything else means it is gone or unreachable.
    return cause.code === 'ABORTED' ? new AbortedError(message, { cause: err }) : new UnavailableError(message, { cause: err });
  }

  /**
   * Ends this rank's part in the generation: pending calls reject, both streams close,
   * the endpoint stops routing to it. Idempotent; every call returns the same promise.
   */
  close(): Promise<void> {
    this.#closed ??= Promise.resolve().then(() => this.#shutdown());
    return this.#closed;
  }

  #shutdown(): void {
    this.#closing = true;
    this.#unregister();
    this.#fail(new AbortedError(`${this.#self()} closed its collective for generation ${this.config.generation}`));
  }

  /** `await using ring = new RingAllReduce(...)` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
