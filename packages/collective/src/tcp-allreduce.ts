/**
 * TcpAllReduce: the `tcp` transport of RingAllReduce (docs/collective.md). Chunks move on
 * raw TCP data links that each receiver opens through the sender's gRPC OpenDataLink; the
 * bulk bytes never pass through HTTP/2 or protobuf.
 *
 * Three algorithms, chosen by size and world size (the same on every rank):
 * - Recursive doubling for vectors up to `smallMessageBytes`: log2(p) rounds in which
 *   partners r and r xor 2^k swap whole vectors and both compute a + b (float addition
 *   is commutative, so both get the same bits); the ranks beyond the largest power of two
 *   p fold into a partner first and get the result back.
 * - Direct reduce-scatter + all-gather for worlds of up to `directMaxRanks`: each segment
 *   goes straight to its owner, which sums the contributions in a fixed order and sends
 *   the result straight back: the ring's bytes in two hops, every link busy at once.
 * - Ring reduce-scatter + all-gather (Patarasuk & Yuan 2009) beyond that, chunked and
 *   pipelined: a rank sends its own segment at once and forwards each chunk right after
 *   summing it, so sending, receiving and summing overlap. Every element is summed once,
 *   along the ring, by the rank that receives it; the all-gather copies that one result
 *   everywhere. Its links are the two ring neighbours only, however large the world.
 * Either way every rank ends with bit-identical results.
 *
 * Compression ("bf16"/"fp16"): each hop's payload is the 16-bit rounding of a float32
 * partial sum; sums are float32. The rank that completes a chunk rounds its own copy the
 * same way before the all-gather, so every rank still ends with the same bits.
 */
import type net from 'node:net';
import {
  AbortedError,
  CollectivePhase,
  DataLossError,
  DeadlineExceededError,
  FailedPreconditionError,
  UnavailableError,
  callUnary,
  createClient,
  fromServiceError,
  isDinofleetError,
} from '@dinofleet/proto';
import type { DinofleetError } from '@dinofleet/proto';
import type { CollectiveEndpoint, InboundStreamSink } from './collective-endpoint.ts';
import { AllReduceAlgorithm, resolveRingAllReduceConfig } from './allreduce-options.ts';
import type { AllReduceTag, LinkBandwidth, RingAllReduceConfig, RingAllReduceOptions } from './allreduce-options.ts';
import { Compression, addInto, decodeInto, encodeInto, quantizeInPlace, wireBytesPerElement } from './compression.ts';
import { addFloat32 } from './float-sum.ts';
import { DATA_LINK_TOKEN_BYTES, FrameKind, HelloStatus, encodeHelloReply } from './data-frame.ts';
import type { DataLinkHello, FrameHeader } from './data-frame.ts';
import { refuseDataLink } from './data-listener.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { initialSends, mod, receiveSchedule, segmentBounds } from './ring-schedule.ts';
import type { ScheduledChunk } from './ring-schedule.ts';
import { FramePool, MAX_PROBE_FRAME_BYTES, OutboundLink, dialDataLink } from './tcp-link.ts';
import type { InboundLink, ReceivedFrame } from './tcp-link.ts';

/** Largest power of two <= n (n >= 1). */
function powerOfTwoBelow(n: number): number {
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

/** The ranks `rank` receives from in recursive doubling (and its fold partner). */
function doublingPartners(rank: number, worldSize: number): number[] {
  const p = powerOfTwoBelow(worldSize);
  if (rank >= p) return [rank - p];
  const partners: number[] = [];
  if (rank < worldSize - p) partners.push(rank + p);
  for (let bit = 1; bit < p; bit *= 2) partners.push(rank ^ bit);
  return partners;
}

/** One rank's side of the all-reduce over TCP data links for one generation. */
export class TcpAllReduce implements InboundStreamSink {
  readonly config: RingAllReduceConfig;
  linkBandwidth: LinkBandwidth | undefined;

  readonly #endpoint: CollectiveEndpoint;
  readonly #onLinkBandwidth: ((link: LinkBandwidth) => void) | undefined;
  readonly #unregister: () => void;
  readonly #leftRank: number;
  readonly #rightRank: number;
  readonly #bytesPerElement: 2 | 4;
  /** Links this rank receives on, by sending rank. */
  readonly #inbound = new Map<number, Promise<InboundLink>>();
  /** Links this rank sends on, by receiving rank. */
  readonly #outbound = new Map<number, OutboundLink>();
  readonly #receivePool: FramePool;
  readonly #sendPool: FramePool;
  readonly #settings: string;
  #probePending: boolean;
  #failure: DinofleetError | undefined;
  #closed: Promise<void> | undefined;

  constructor(options: RingAllReduceOptions) {
    this.config = resolveRingAllReduceConfig(options);
    this.#endpoint = options.endpoint;
    this.#onLinkBandwidth = options.onLinkBandwidth;
    const { rank, worldSize, chunkBytes, smallMessageBytes, compression } = this.config;
    this.#leftRank = mod(rank - 1, worldSize);
    this.#rightRank = mod(rank + 1, worldSize);
    this.#bytesPerElement = wireBytesPerElement(compression);
    const frameBytes = Math.max((chunkBytes / 4) * this.#bytesPerElement, (smallMessageBytes / 4) * this.#bytesPerElement, 4);
    this.#receivePool = new FramePool(frameBytes);
    this.#sendPool = new FramePool(frameBytes);
    this.#settings = `chunk=${chunkBytes} small=${smallMessageBytes} direct=${this.config.directMaxRanks} compression=${compression} probe=${this.config.linkProbeBytes}`;
    this.#probePending = this.config.linkProbeBytes > 0 && worldSize > 1;
    if (worldSize === 1) {
      this.#unregister = () => undefined;
      return;
    }
    this.#unregister = options.endpoint.register(this.config.job, this.config.generation, this);
    // Open the links now: connecting overlaps the step's compute instead of delaying its
    // first collective. Failures surface in the first call (and abandon the generation).
    const senders = new Set([this.#leftRank]);
    if (smallMessageBytes > 0) for (const peer of doublingPartners(rank, worldSize)) senders.add(peer);
    if (worldSize <= this.config.directMaxRanks) for (let peer = 0; peer < worldSize; peer++) if (peer !== rank) senders.add(peer);
    for (const peer of senders) this.#inboundFrom(peer).catch(() => undefined);
  }

  /**
   * TransportCollective: sums `out` in place over the ranks with the algorithm its size and
   * the world size pick, or rejects (the caller then calls {@link fail}). Calls come one at
   * a time, in tag order.
   */
  async reduce(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<AllReduceAlgorithm> {
    if (this.#failure !== undefined) throw this.#abandoned();
    const { worldSize, smallMessageBytes, directMaxRanks } = this.config;
    if (worldSize === 1 || out.length === 0) return AllReduceAlgorithm.Local;
    if (out.byteLength <= smallMessageBytes) {
      await this.#recursiveDoubling(out, tag, deadline);
      return AllReduceAlgorithm.RecursiveDoubling;
    }
    if (worldSize <= directMaxRanks) {
      await this.#direct(out, tag, deadline);
      return AllReduceAlgorithm.Direct;
    }
    await this.#ring(out, tag, deadline);
    return AllReduceAlgorithm.Ring;
  }

  /** TransportCollective: the error every call gets once the generation is abandoned here, else undefined. */
  abandonedError(): AbortedError | undefined {
    return this.#failure === undefined ? undefined : this.#abandoned();
  }

  /** TransportCollective: abandons the generation with `err` (idempotent). */
  fail(err: DinofleetError): void {
    this.#fail(err);
  }

  // ---- ring ----------------------------------------------------------------------------

  async #ring(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, compression } = this.config;
    const right = this.#outboundTo(this.#rightRank);
    const left = await this.#inboundFrom(this.#leftRank);
    const sequences = new Map<FrameKind, number>([
      [FrameKind.ReduceScatter, 0],
      [FrameKind.AllGather, 0],
    ]);
    const header = (kind: FrameKind, chunk: ScheduledChunk): FrameHeader => {
      const sequence = sequences.get(kind) as number;
      sequences.set(kind, sequence + 1);
      return { kind, step: tag.step, op: tag.op, sequence, segment: chunk.segment, offset: chunk.offset, payloadBytes: chunk.length * this.#bytesPerElement };
    };
    // Sends out[chunk] (encoded when compressing). An uncompressed payload is a view of
    // `out`: causality keeps it safe, since a region is changed only after receiving a chunk
    // that cannot exist before our message about that region reached the right neighbour,
    // and a region summed into is sent only after the sum. right.flush() at the end makes
    // sure nothing still reads `out` when the call returns.
    const send = (kind: FrameKind, chunk: ScheduledChunk): void => {
      if (compression === Compression.None) {
        right.send(header(kind, chunk), new Uint8Array(out.buffer, out.byteOffset + chunk.start * 4, chunk.length * 4));
        return;
      }
      const buffer = this.#sendPool.acquire();
      encodeInto(compression, out, chunk.start, chunk.length, new Uint16Array(buffer.buffer, buffer.byteOffset, chunk.length), 0);
      right.send(header(kind, chunk), buffer.subarray(0, chunk.length * 2), () => this.#sendPool.release(buffer));
    };

    if (compression === Compression.None) {
      // All-gather payloads of this call land straight in `out` (no copy). Safe: the
      // all-gather value of a region exists only after this rank summed and forwarded its
      // reduce-scatter part of that region, and its sends of that region are then done.
      const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      left.setPlan((h) => {
        if (h.kind !== FrameKind.AllGather || h.step !== tag.step || h.op !== tag.op) return undefined;
        const start = segmentBounds(out.length, n, h.segment).start + h.offset;
        if (start * 4 + h.payloadBytes > out.byteLength) return undefined;
        return outBytes.subarray(start * 4, start * 4 + h.payloadBytes);
      });
    }
    try {
      await this.#ringSteps(out, tag, deadline, left, send, header, right);
    } finally {
      left.setPlan(undefined);
    }
    await right.flush();
  }

  async #ringSteps(
    out: Float32Array,
    tag: AllReduceTag,
    deadline: number,
    left: InboundLink,
    send: (kind: FrameKind, chunk: ScheduledChunk) => void,
    header: (kind: FrameKind, chunk: ScheduledChunk) => FrameHeader,
    right: OutboundLink,
  ): Promise<void> {
    const { worldSize: n, rank, chunkBytes, compression } = this.config;
    const chunkElements = chunkBytes / 4;
    for (const chunk of initialSends(out.length, n, rank, chunkElements)) send(FrameKind.ReduceScatter, chunk);
    let heard = false;
    for (const expected of receiveSchedule(out.length, n, rank, chunkElements)) {
      const kind = expected.phase === CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER ? FrameKind.ReduceScatter : FrameKind.AllGather;
      const frame = await this.#take(left, this.#leftRank, tag, deadline, heard);
      heard = true;
      const forwardedPayload = this.#checkRingFrame(frame, kind, expected, tag);
      if (kind === FrameKind.ReduceScatter) {
        this.#accumulate(out, expected.start, expected.length, frame.payload);
        frame.release();
        if (expected.ringStep < n - 2) send(FrameKind.ReduceScatter, expected);
        else {
          // The chunk is fully reduced here: it starts the all-gather.
          quantizeInPlace(compression, out, expected.start, expected.length);
          send(FrameKind.AllGather, expected);
        }
      } else {
        this.#assign(out, expected.start, expected.length, frame.payload, frame.placed);
        if (expected.ringStep < n - 2) {
          if (compression === Compression.None) {
            frame.release();
            send(FrameKind.AllGather, expected);
          } else {
            // Forward the received encoding itself: same bits, no re-encode.
            right.send(header(FrameKind.AllGather, expected), forwardedPayload, () => frame.release());
          }
        } else frame.release();
      }
    }
  }

  #checkRingFrame(
    frame: ReceivedFrame,
    kind: FrameKind,
    expected: ScheduledChunk,
    tag: AllReduceTag,
  ): Uint8Array {
    const h = frame.header;
    const from = this.#peer(this.#leftRank);
    if (h.step !== tag.step || h.op !== tag.op) {
      throw new AbortedError(
        `${from} sent a frame of step ${h.step} op ${h.op} while ${this.#self()} runs step ${tag.step} op ${tag.op}: the ranks disagree on the sequence of collectives`,
      );
    }
    const payloadBytes = expected.length * this.#bytesPerElement;
    if (h.kind !== kind || h.sequence !== expected.sequence || h.segment !== expected.segment || h.offset !== expected.offset || h.payloadBytes !== payloadBytes) {
      throw new AbortedError(
        `${from} sent kind ${h.kind} frame ${h.sequence} (segment ${h.segment}, offset ${h.offset}, ${h.payloadBytes} bytes) where ${this.#self()} expects kind ${kind} frame ${expected.sequence} (segment ${expected.segment}, offset ${expected.offset}, ${payloadBytes} bytes): vector lengths differ between ranks`,
      );
    }
    return frame.payload;
  }

  /** out[start..start+length) += the payload (float32, or decoded 16-bit). */
  #accumulate(out: Float32Array, start: number, length: number, payload: Uint8Array): void {
    const { compression } = this.config;
    if (compression !== Compression.None) {
      addInto(compression, new Uint16Array(payload.buffer, payload.byteOffset, length), 0, length, out, start);
      return;
    }
    addFloat32(out, start, new Float32Array(payload.buffer, payload.byteOffset, length), length);
  }

  /** out[start..start+length) = the payload (nothing to do when it was read in place). */
  #assign(out: Float32Array, start: number, length: number, payload: Uint8Array, placed = false): void {
    if (placed) return;
    const { compression } = this.config;
    if (compression !== Compression.None) {
      decodeInto(compression, new Uint16Array(payload.buffer, payload.byteOffset, length), 0, length, out, start);
      return;
    }
    new Uint8Array(out.buffer, out.byteOffset + start * 4, length * 4).set(payload);
  }

  /**
   * Direct reduce-scatter + all-gather for small worlds: every rank sends each peer that
   * peer's segment at once (chunked), the owner of a segment sums the n−1 contributions of
   * each chunk in a fixed order (rank+1, rank+2, …, independent of arrival), and sends the
   * finished chunk to every peer right away. The same bytes as the ring (2(n−1)/n of the
   * vector per rank), but two hops instead of 2(n−1), and all links busy at once: fewer
   * sequential wake-ups, which is what a small all-reduce on a busy host waits on.
   */
  async #direct(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, rank, chunkBytes, compression } = this.config;
    const chunkElements = chunkBytes / 4;
    const peers: number[] = [];
    for (let k = 1; k < n; k++) peers.push((rank + k) % n);
    const links = new Map<number, InboundLink>();
    for (const peer of peers) links.set(peer, await this.#inboundFrom(peer));
    const chunksOf = (segment: number): ScheduledChunk[] => {
      const bounds = segmentBounds(out.length, n, segment);
      const chunks: ScheduledChunk[] = [];
      for (let offset = 0, index = 0; offset < bounds.length; offset += chunkElements, index++) {
        const length = Math.min(chunkElements, bounds.length - offset);
        chunks.push({ phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER, ringStep: 0, segment, chunkIndex: index, offset, start: bounds.start + offset, length, sequence: index });
      }
      return chunks;
    };
    const header = (kind: FrameKind, chunk: ScheduledChunk): FrameHeader => ({
      kind,
      step: tag.step,
      op: tag.op,
      sequence: chunk.sequence,
      segment: chunk.segment,
      offset: chunk.offset,
      payloadBytes: chunk.length * this.#bytesPerElement,
    });
    const send = (to: number, kind: FrameKind, chunk: ScheduledChunk): void => {
      const link = this.#outboundTo(to);
      if (compression === Compression.None) {
        link.send(header(kind, chunk), new Uint8Array(out.buffer, out.byteOffset + chunk.start * 4, chunk.length * 4));
        return;
      }
      const buffer = this.#sendPool.acquire();
      encodeInto(compression, out, chunk.start, chunk.length, new Uint16Array(buffer.buffer, buffer.byteOffset, chunk.length), 0);
      link.send(header(kind, chunk), buffer.subarray(0, chunk.length * 2), () => this.#sendPool.release(buffer));
    };
    const expect = (frame: ReceivedFrame, from: number, kind: FrameKind, chunk: ScheduledChunk): void => {
      const h = frame.header;
      const want = header(kind, chunk);
      if (h.step !== tag.step || h.op !== tag.op || h.kind !== kind || h.segment !== want.segment || h.offset !== want.offset || h.sequence !== want.sequence || h.payloadBytes !== want.payloadBytes) {
        frame.release();
        throw new AbortedError(
          `${this.#peer(from)} sent kind ${h.kind} step ${h.step} op ${h.op} segment ${h.segment} offset ${h.offset} (${h.payloadBytes} bytes) where ${this.#self()} expects kind ${kind} step ${tag.step} op ${tag.op} segment ${want.segment} offset ${want.offset} (${want.payloadBytes} bytes): the ranks disagree on the sequence or length of collectives`,
        );
      }
    };
    if (compression === Compression.None) {
      // All-gather payloads of this call land straight in `out`: the value of a peer's
      // segment exists only after that peer summed this rank's contribution, so this
      // rank's sends of that region are done by then.
      const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      for (const [peer, link] of links) {
        link.setPlan((h) => {
          if (h.kind !== FrameKind.AllGather || h.step !== tag.step || h.op !== tag.op || h.segment !== peer) return undefined;
          const start = segmentBounds(out.length, n, peer).start + h.offset;
          if (start * 4 + h.payloadBytes > out.byteLength) return undefined;
          return outBytes.subarray(start * 4, start * 4 + h.payloadBytes);
        });
      }
    }
    try {
      for (const peer of peers) for (const chunk of chunksOf(peer)) send(peer, FrameKind.ReduceScatter, chunk);
      let heard = false;
      for (const chunk of chunksOf(rank)) {
        for (const peer of peers) {
          const frame = await this.#take(links.get(peer) as InboundLink, peer, tag, deadline, heard);
          heard = true;
          expect(frame, peer, FrameKind.ReduceScatter, chunk);
          this.#accumulate(out, chunk.start, chunk.length, frame.payload);
          frame.release();
        }
        quantizeInPlace(compression, out, chunk.start, chunk.length);
        for (const peer of peers) send(peer, FrameKind.AllGather, chunk);
      }
      for (const peer of peers) {
        for (const chunk of chunksOf(peer)) {
          const frame = await this.#take(links.get(peer) as InboundLink, peer, tag, deadline, heard);
          expect(frame, peer, FrameKind.AllGather, chunk);
          this.#assign(out, chunk.start, chunk.length, frame.payload, frame.placed);
          frame.release();
        }
      }
    } finally {
      for (const link of links.values()) link.setPlan(undefined);
    }
    await Promise.all(peers.map((peer) => this.#outboundTo(peer).flush()));
  }

  // ---- recursive doubling --------------------------------------------------------------

  async #recursiveDoubling(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, rank, compression } = this.config;
    const p = powerOfTwoBelow(n);
    const length = out.length;
        const headerFor = (kind: FrameKind, sequence: number, segment: number): FrameHeader => ({
      kind,
      step: tag.step,
      op: tag.op,
      sequence,
      segment,
      offset: 0,
      payloadBytes: length * this.#bytesPerElement,
    });
    // Sends the whole vector and resolves once the socket has it (the caller then changes `out`).
    const sendWhole = async (to: number, header: FrameHeader): Promise<void> => {
      const link = this.#outboundTo(to);
      if (compression === Compression.None) {
        link.send(header, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
      } else {
        const buffer = this.#sendPool.acquire();
        encodeInto(compression, out, 0, length, new Uint16Array(buffer.buffer, buffer.byteOffset, length), 0);
        link.send(header, buffer.subarray(0, length * 2), () => this.#sendPool.release(buffer));
      }
      await link.flush();
    };
    const receiveWhole = async (from: number, kind: FrameKind, sequence: number, segment: number): Promise<ReceivedFrame> => {
      const frame = await this.#take(await this.#inboundFrom(from), from, tag, deadline, false);
      const h = frame.header;
      const want = headerFor(kind, sequence, segment);
      if (h.step !== tag.step || h.op !== tag.op || h.kind !== kind || h.sequence !== sequence || h.segment !== segment || h.payloadBytes !== want.payloadBytes) {
        frame.release();
        throw new AbortedError(
          `${this.#peer(from)} sent kind ${h.kind} step ${h.step} op ${h.op} (${h.payloadBytes} bytes) where ${this.#self()} expects kind ${kind} step ${tag.step} op ${tag.op} (${want.payloadBytes} bytes): the ranks disagree on the sequence or length of collectives`,
        );
      }
      return frame;
    };

    if (rank >= p) {
      // Fold into rank - p, then take the result back from it.
      const partner = rank - p;
      await sendWhole(partner, headerFor(FrameKind.Fold, 0, 0));
      const result = await receiveWhole(partner, FrameKind.Fold, 1, 0);
      this.#assign(out, 0, length, result.payload);
      result.release();
      return;
    }
    if (rank < n - p) {
      const folded = await receiveWhole(rank + p, FrameKind.Fold, 0, 0);
      this.#accumulate(out, 0, length, folded.payload);
      folded.release();
    }
    for (let bit = 1, round = 0; bit < p; bit *= 2, round++) {
      const partner = rank ^ bit;
      const [, frame] = await Promise.all([
        sendWhole(partner, headerFor(FrameKind.Exchange, 0, round)),
        receiveWhole(partner, FrameKind.Exchange, 0, round),
      ]);
      // Both partners compute q(mine) + q(theirs): the same float32 sum, in either order.
      quantizeInPlace(compression, out, 0, length);
      this.#accumulate(out, 0, length, frame.payload);
      frame.release();
    }
    quantizeInPlace(compression, out, 0, length);
    if (rank < n - p) await sendWhole(rank + p, headerFor(FrameKind.Fold, 1, 0));
  }

  // ---- links ---------------------------------------------------------------------------

  /** Takes the next frame of `link`, skipping (and measuring) a bandwidth probe. */
  async #take(link: InboundLink, from: number, tag: AllReduceTag, deadline: number, heard: boolean): Promise<ReceivedFrame> {
    for (;;) {
      const remainingMs = deadline - Date.now();
      const { stallTimeoutMs, timeoutMs } = this.config;
      const stalls = heard && stallTimeoutMs < remainingMs;
      const frame = await link.take(stalls ? stallTimeoutMs : remainingMs, () =>
        stalls
          ? new UnavailableError(`${this.#peer(from)} sent nothing for ${stallTimeoutMs} ms in the middle of step ${tag.step} op ${tag.op} (${this.#self()} waiting)`)
          : new DeadlineExceededError(`all-reduce step ${tag.step} op ${tag.op} on ${this.#self()} timed out after ${timeoutMs} ms waiting for ${this.#peer(from)}`),
      );
      if (frame.header.kind !== FrameKind.Probe) return frame;
      // The probe is sent at link set-up, not as part of this collective: it does not
      // count as the neighbour having started it (the stall timeout still waits).
      this.#onProbeFrame(frame, from);
    }
  }

  #probeStartedAt: number | undefined;
  #probeBytes = 0;

  #onProbeFrame(frame: ReceivedFrame, from: number): void {
    const { header } = frame;
    if (header.sequence === 0) {
      this.#probeStartedAt = frame.headerAtMs;
      this.#probeBytes = 0;
    }
    this.#probeBytes += header.payloadBytes;
    frame.release();
    if (header.sequence + 1 === header.segment && this.#probeStartedAt !== undefined) {
      const seconds = Math.max(frame.completedAtMs - this.#probeStartedAt, 1e-3) / 1000;
      const link: LinkBandwidth = { peerRank: from, peerAddress: this.config.peers[from] as string, bytes: this.#probeBytes, bandwidthGBps: this.#probeBytes / seconds / 1e9 };
      this.linkBandwidth = link;
      try {
        this.#onLinkBandwidth?.(link);
      } catch {
        // metrics hooks never fail the collective
      }
    }
  }

  #inboundFrom(peer: number): Promise<InboundLink> {
    let link = this.#inbound.get(peer);
    if (link === undefined) {
      link = this.#dial(peer);
      this.#inbound.set(peer, link);
    }
    return link;
  }

  async #dial(peer: number): Promise<InboundLink> {
    if (this.#failure !== undefined) throw this.#failure;
    const { job, generation, rank, worldSize, connectTimeoutMs } = this.config;
    const address = this.config.peers[peer] as string;
    const client = createClient(CollectiveExchangeClient, address, this.config.client);
    let port: number;
    let token: Uint8Array;
    try {
      const response = await callUnary(
        client,
        'openDataLink',
        { jobId: job, generation, senderRank: peer, receiverRank: rank },
        { deadlineMs: connectTimeoutMs },
      );
      port = response.port;
      token = response.token;
    } catch (err) {
      throw this.#peerFailure(peer, 'refused OpenDataLink', err);
    } finally {
      client.close();
    }
    if (token.byteLength !== DATA_LINK_TOKEN_BYTES) throw new DataLossError(`${this.#peer(peer)} returned a ${token.byteLength}-byte data link token`);
    const hello: DataLinkHello = { token, job, generation, senderRank: peer, receiverRank: rank, worldSize, settings: this.#settings };
    try {
      return await dialDataLink({
        host: address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, ''),
        port,
        hello,
        pool: this.#receivePool,
        connectTimeoutMs,
        label: this.#peer(peer),
      });
    } catch (err) {
      throw this.#peerFailure(peer, 'sends on a data link that could not be opened', err);
    }
  }

  #outboundTo(peer: number): OutboundLink {
    let link = this.#outbound.get(peer);
    if (link === undefined) {
      if (this.#failure !== undefined) throw this.#failure;
      link = new OutboundLink(this.#peer(peer));
      this.#outbound.set(peer, link);
    }
    return link;
  }

  /** InboundStreamSink: a receiver dialed in (token already checked by the endpoint). */
  acceptDataLink(socket: net.Socket, hello: DataLinkHello): void {
    const { worldSize, rank } = this.config;
    let refusal: string | undefined;
    let status: HelloStatus = HelloStatus.FailedPrecondition;
    if (this.#failure !== undefined) {
      refusal = this.#abandoned().message;
      status = HelloStatus.Aborted;
    }
    else if (hello.senderRank !== rank) refusal = `this is rank ${rank}, not ${hello.senderRank}`;
    else if (hello.worldSize !== worldSize) refusal = `world size differs: ${hello.worldSize} at the receiver, ${worldSize} here`;
    else if (hello.receiverRank >= worldSize || hello.receiverRank === rank) refusal = `receiver rank ${hello.receiverRank} is not a peer in a world of ${worldSize}`;
    else if (hello.settings !== this.#settings) refusal = `collective settings differ: "${hello.settings}" at rank ${hello.receiverRank}, "${this.#settings}" at rank ${rank}; every rank must use the same`;
    else if (this.#outbound.get(hello.receiverRank)?.attached === true) refusal = `rank ${hello.receiverRank} has a data link from rank ${rank} already`;
    if (refusal !== undefined) {
      refuseDataLink(socket, refusal, status);
      return;
    }
    socket.write(encodeHelloReply());
    const link = this.#outboundTo(hello.receiverRank);
    if (hello.receiverRank === this.#rightRank && this.#probePending) {
      this.#probePending = false;
      this.#sendProbe(link);
    }
    link.attach(socket);
  }

  /** Queues the probe ahead of everything else on the ring link (it is sent first on attach). */
  #sendProbe(link: OutboundLink): void {
    const frameBytes = MAX_PROBE_FRAME_BYTES;
    const frames = Math.max(1, Math.ceil(this.config.linkProbeBytes / frameBytes));
    const payload = Buffer.alloc(Math.min(frameBytes, this.config.linkProbeBytes));
    // sendFirst puts each frame at the front: queue them last to first.
    for (let sequence = frames - 1; sequence >= 0; sequence--) {
      link.sendFirst({ kind: FrameKind.Probe, step: 0, op: 0, sequence, segment: frames, offset: 0, payloadBytes: payload.byteLength }, payload);
    }
  }

  // ---- failure and close ---------------------------------------------------------------

  /**
   * Abandons the generation on this rank: pending and later calls reject, and every link
   * closes, so the peers on them fail at once rather than each waiting out a timeout.
   */
  #fail(err: DinofleetError): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    // Each peer learns the reason (an Abort frame downstream, a message upstream), so the
    // failure goes round with its cause instead of as a bare closed socket.
    for (const link of this.#outbound.values()) link.abort(err);
    for (const pending of this.#inbound.values()) pending.then((link) => link.abort(err)).catch(() => undefined);
  }

  /** InboundStreamSink: the endpoint is closing. */
  abort(err: DinofleetError): void {
    this.#fail(err);
  }

  #abandoned(): AbortedError {
    const reason = this.#failure?.message ?? 'closed';
    return new AbortedError(`${this.#self()} abandoned generation ${this.config.generation}: ${reason}`, { cause: this.#failure });
  }

  #self(): string {
    return `rank ${this.config.rank} (${this.config.peers[this.config.rank]})`;
  }

  #peer(rank: number): string {
    return `rank ${rank} (${this.config.peers[rank]})`;
  }

  #peerFailure(rank: number, what: string, err: unknown): DinofleetError {
    const cause = isDinofleetError(err) ? err : fromServiceError(err);
    const message = `${this.#peer(rank)} ${what}: ${cause.message}`;
    // ABORTED: the peer refused on purpose (stale generation, it abandoned the generation).
    // FAILED_PRECONDITION: the ranks' settings differ, which no retry fixes. Anything else
    // means the peer is gone or unreachable.
    if (cause.code === 'ABORTED') return new AbortedError(message, { cause: err });
    if (cause.code === 'FAILED_PRECONDITION') return new FailedPreconditionError(message, { cause: err });
    return new UnavailableError(message, { cause: err });
  }

  /** Ends this rank's part in the generation. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= Promise.resolve().then(() => {
      this.#unregister();
      this.#fail(new AbortedError(`${this.#self()} closed its collective for generation ${this.config.generation}`));
    });
    return this.#closed;
  }

  /** For tests: the endpoint this collective is registered with. */
  get endpoint(): CollectiveEndpoint {
    return this.#endpoint;
  }
}
