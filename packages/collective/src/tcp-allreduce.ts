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
import type { ConnectionOptions } from 'node:tls';
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
import type { CreateClientOptions, DinofleetError } from '@dinofleet/proto';
import type { InboundStreamSink } from './collective-endpoint.ts';
import { AllReduceAlgorithm, peerClientOptions, resolveRingAllReduceConfig } from './allreduce-options.ts';
import type { AllReduceTag, LinkBandwidth, RingAllReduceConfig, RingAllReduceOptions } from './allreduce-options.ts';
import { Compression, addInto, decodeInto, encodeInto, quantizeInPlace, wireBytesPerElement } from './compression.ts';
import { addFloat32 } from './float-sum.ts';
import { DATA_LINK_TOKEN_BYTES, FrameKind, HelloStatus, encodeHelloReply } from './data-frame.ts';
import type { DataLinkHello, FrameHeader } from './data-frame.ts';
import { refuseDataLink } from './data-listener.ts';
import { CollectiveExchangeClient } from './exchange-codec.ts';
import { initialSends, mod, receiveSchedule, segmentBounds, segmentChunks } from './ring-schedule.ts';
import type { ScheduledChunk } from './ring-schedule.ts';
import { FramePool, MAX_PROBE_FRAME_BYTES, OutboundLink, dialDataLink } from './tcp-link.ts';
import type { InboundLink, ReceivedFrame } from './tcp-link.ts';

/** The frame kinds of the ring's two passes. */
type RingKind = typeof FrameKind.ReduceScatter | typeof FrameKind.AllGather;

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
  readonly #clientOptions: CreateClientOptions;
  readonly #dataLinkTls: ConnectionOptions | undefined;
  #probePending: boolean;
  #failure: DinofleetError | undefined;
  #closed: Promise<void> | undefined;

  constructor(options: RingAllReduceOptions) {
    this.config = resolveRingAllReduceConfig(options);
    this.#clientOptions = peerClientOptions(this.config, options.endpoint);
    this.#dataLinkTls = options.endpoint.dataLinkTls;
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

  // ---- shared by the algorithms ------------------------------------------------------

  /** The header of a frame of the call `tag` carrying `elements` values. */
  #header(tag: AllReduceTag, kind: FrameKind, sequence: number, segment: number, offset: number, elements: number): FrameHeader {
    return { kind, step: tag.step, op: tag.op, sequence, segment, offset, payloadBytes: elements * this.#bytesPerElement };
  }

  /**
   * Sends out[start, start + length) on `link` as `header`: uncompressed, a view of `out`
   * (no copy; the caller keeps the region unchanged until the link is flushed or causality
   * guarantees the receiver has it); compressed, a pooled 16-bit encoding.
   */
  #sendRegion(link: OutboundLink, header: FrameHeader, out: Float32Array, start: number, length: number): void {
    const { compression } = this.config;
    if (compression === Compression.None) {
      link.send(header, new Uint8Array(out.buffer, out.byteOffset + start * 4, length * 4));
      return;
    }
    const buffer = this.#sendPool.acquire();
    encodeInto(compression, out, start, length, new Uint16Array(buffer.buffer, buffer.byteOffset, length), 0);
    link.send(header, buffer.subarray(0, length * 2), () => this.#sendPool.release(buffer));
  }

  /**
   * The next frame from `from`, which must be `want` (same call, kind, place and size); a
   * mismatch means the ranks disagree on the sequence or length of their collectives.
   */
  async #receive(from: number, want: FrameHeader, deadline: number, heard: boolean): Promise<ReceivedFrame> {
    const frame = await this.#take(await this.#inboundFrom(from), from, want, deadline, heard);
    const h = frame.header;
    if (
      h.step !== want.step ||
      h.op !== want.op ||
      h.kind !== want.kind ||
      h.sequence !== want.sequence ||
      h.segment !== want.segment ||
      h.offset !== want.offset ||
      h.payloadBytes !== want.payloadBytes
    ) {
      frame.release();
      const show = (x: FrameHeader): string =>
        `kind ${x.kind} step ${x.step} op ${x.op} frame ${x.sequence} (segment ${x.segment}, offset ${x.offset}, ${x.payloadBytes} bytes)`;
      throw new AbortedError(
        `${this.#peer(from)} sent ${show(h)} where ${this.#self()} expects ${show(want)}: the ranks disagree on the sequence or length of collectives`,
      );
    }
    return frame;
  }

  /**
   * Lets all-gather payloads of the call `tag` from `link` land straight in `out` (no copy;
   * uncompressed only), for segments `owns(segment)` accepts. The algorithms make this
   * safe: the all-gather value of a region exists only after this rank's contribution to
   * it was received, so nothing of this rank still reads the region.
   */
  #placeAllGathers(link: InboundLink, out: Float32Array, tag: AllReduceTag, owns: (segment: number) => boolean): void {
    if (this.config.compression !== Compression.None) return;
    const n = this.config.worldSize;
    const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    link.setPlan((h) => {
      if (h.kind !== FrameKind.AllGather || h.step !== tag.step || h.op !== tag.op || h.segment >= n || !owns(h.segment)) return undefined;
      const start = (segmentBounds(out.length, n, h.segment).start + h.offset) * 4;
      return start + h.payloadBytes > out.byteLength ? undefined : outBytes.subarray(start, start + h.payloadBytes);
    });
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

  /** out[start..start+length) = the frame's payload (nothing to do when it was read in place). */
  #assign(out: Float32Array, start: number, length: number, frame: ReceivedFrame): void {
    if (frame.placed) return;
    const { compression } = this.config;
    const { payload } = frame;
    if (compression !== Compression.None) {
      decodeInto(compression, new Uint16Array(payload.buffer, payload.byteOffset, length), 0, length, out, start);
      return;
    }
    new Uint8Array(out.buffer, out.byteOffset + start * 4, length * 4).set(payload);
  }

  // ---- ring ----------------------------------------------------------------------------

  /**
   * The ring. Causality keeps the views of `out` it sends safe: a region is changed only
   * after receiving a chunk that cannot exist before this rank's message about that region
   * reached the right neighbour, and a region summed into is sent only after the sum.
   */
  async #ring(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, rank, chunkBytes, compression } = this.config;
    const chunkElements = chunkBytes / 4;
    const right = this.#outboundTo(this.#rightRank);
    const left = await this.#inboundFrom(this.#leftRank);
    // What the receiver expects is in its receive schedule; what this rank sends is numbered
    // per kind in sending order (which is the right neighbour's receive order).
    const expectedHeader = (kind: FrameKind, chunk: ScheduledChunk): FrameHeader =>
      this.#header(tag, kind, chunk.sequence, chunk.segment, chunk.offset, chunk.length);
    const sent: Record<RingKind, number> = { [FrameKind.ReduceScatter]: 0, [FrameKind.AllGather]: 0 };
    const sendHeader = (kind: RingKind, chunk: ScheduledChunk): FrameHeader =>
      this.#header(tag, kind, sent[kind]++, chunk.segment, chunk.offset, chunk.length);
    const send = (kind: RingKind, chunk: ScheduledChunk): void =>
      this.#sendRegion(right, sendHeader(kind, chunk), out, chunk.start, chunk.length);
    this.#placeAllGathers(left, out, tag, () => true);
    try {
      for (const chunk of initialSends(out.length, n, rank, chunkElements)) send(FrameKind.ReduceScatter, chunk);
      let heard = false;
      for (const expected of receiveSchedule(out.length, n, rank, chunkElements)) {
        const kind: RingKind = expected.phase === CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER ? FrameKind.ReduceScatter : FrameKind.AllGather;
        const frame = await this.#receive(this.#leftRank, expectedHeader(kind, expected), deadline, heard);
        heard = true;
        const last = expected.ringStep === n - 2;
        if (kind === FrameKind.ReduceScatter) {
          this.#accumulate(out, expected.start, expected.length, frame.payload);
          frame.release();
          if (!last) send(FrameKind.ReduceScatter, expected);
          else {
            // The chunk is fully reduced here: it starts the all-gather.
            quantizeInPlace(compression, out, expected.start, expected.length);
            send(FrameKind.AllGather, expected);
          }
        } else {
          this.#assign(out, expected.start, expected.length, frame);
          if (last) frame.release();
          else if (compression === Compression.None) {
            frame.release();
            send(FrameKind.AllGather, expected);
          } else {
            // Forward the received encoding itself: same bits, no re-encode.
            right.send(sendHeader(FrameKind.AllGather, expected), frame.payload, () => frame.release());
          }
        }
      }
    } finally {
      left.setPlan(undefined);
    }
    await right.flush();
  }

  // ---- direct --------------------------------------------------------------------------

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
    const chunksOf = (segment: number) => segmentChunks(out.length, n, segment, chunkElements);
    const header = (kind: FrameKind, segment: number, chunk: { chunkIndex: number; offset: number; length: number }): FrameHeader =>
      this.#header(tag, kind, chunk.chunkIndex, segment, chunk.offset, chunk.length);
    const links = await Promise.all(peers.map((peer) => this.#inboundFrom(peer)));
    peers.forEach((peer, k) => this.#placeAllGathers(links[k] as InboundLink, out, tag, (segment) => segment === peer));
    try {
      for (const peer of peers) {
        for (const chunk of chunksOf(peer)) this.#sendRegion(this.#outboundTo(peer), header(FrameKind.ReduceScatter, peer, chunk), out, chunk.start, chunk.length);
      }
      let heard = false;
      for (const chunk of chunksOf(rank)) {
        for (const peer of peers) {
          const frame = await this.#receive(peer, header(FrameKind.ReduceScatter, rank, chunk), deadline, heard);
          heard = true;
          this.#accumulate(out, chunk.start, chunk.length, frame.payload);
          frame.release();
        }
        quantizeInPlace(compression, out, chunk.start, chunk.length);
        for (const peer of peers) this.#sendRegion(this.#outboundTo(peer), header(FrameKind.AllGather, rank, chunk), out, chunk.start, chunk.length);
      }
      for (const peer of peers) {
        for (const chunk of chunksOf(peer)) {
          const frame = await this.#receive(peer, header(FrameKind.AllGather, peer, chunk), deadline, heard);
          this.#assign(out, chunk.start, chunk.length, frame);
          frame.release();
        }
      }
    } finally {
      for (const link of links) link.setPlan(undefined);
    }
    await Promise.all(peers.map((peer) => this.#outboundTo(peer).flush()));
  }

  // ---- recursive doubling --------------------------------------------------------------

  async #recursiveDoubling(out: Float32Array, tag: AllReduceTag, deadline: number): Promise<void> {
    const { worldSize: n, rank, compression } = this.config;
    const p = powerOfTwoBelow(n);
    const length = out.length;
    const header = (kind: FrameKind, sequence: number, round: number): FrameHeader => this.#header(tag, kind, sequence, round, 0, length);
    // Sends the whole vector and resolves once the socket has it (the caller then changes `out`).
    const sendWhole = async (to: number, frameHeader: FrameHeader): Promise<void> => {
      const link = this.#outboundTo(to);
      this.#sendRegion(link, frameHeader, out, 0, length);
      await link.flush();
    };
    if (rank >= p) {
      // Fold into rank - p, then take the result back from it.
      const partner = rank - p;
      await sendWhole(partner, header(FrameKind.Fold, 0, 0));
      const result = await this.#receive(partner, header(FrameKind.Fold, 1, 0), deadline, false);
      this.#assign(out, 0, length, result);
      result.release();
      return;
    }
    if (rank < n - p) {
      const folded = await this.#receive(rank + p, header(FrameKind.Fold, 0, 0), deadline, false);
      this.#accumulate(out, 0, length, folded.payload);
      folded.release();
    }
    for (let bit = 1, round = 0; bit < p; bit *= 2, round++) {
      const partner = rank ^ bit;
      const [, frame] = await Promise.all([
        sendWhole(partner, header(FrameKind.Exchange, 0, round)),
        this.#receive(partner, header(FrameKind.Exchange, 0, round), deadline, false),
      ]);
      // Both partners compute q(mine) + q(theirs): the same float32 sum, in either order.
      quantizeInPlace(compression, out, 0, length);
      this.#accumulate(out, 0, length, frame.payload);
      frame.release();
    }
    quantizeInPlace(compression, out, 0, length);
    if (rank < n - p) await sendWhole(rank + p, header(FrameKind.Fold, 1, 0));
  }

  // ---- links ---------------------------------------------------------------------------

  /** Takes the next frame of `link`, skipping (and measuring) a bandwidth probe. */
  async #take(link: InboundLink, from: number, tag: { step: number; op: number }, deadline: number, heard: boolean): Promise<ReceivedFrame> {
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
    const client = createClient(CollectiveExchangeClient, address, this.#clientOptions);
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
        ...(this.#dataLinkTls !== undefined && { tls: this.#dataLinkTls }),
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
}
