/**
 * The two ends of a TCP data link (docs/collective.md). A link carries frames one way: the
 * receiver dials the sender's data listener ({@link dialDataLink}), so the receiving end
 * can read with `onread` straight into buffers of its own (Node offers that only to the
 * socket that connects); the sender writes on the socket its listener accepted
 * ({@link OutboundLink}).
 *
 * Receiving: every read lands exactly where it belongs: a header into a 40-byte buffer,
 * a payload into a 4-byte-aligned buffer from a {@link FramePool}, so summing reads it as a
 * Float32Array with no copy and no per-read allocation. Sending: a payload is a view of
 * the caller's memory (or a pooled encode buffer) handed to the socket without a copy.
 *
 * Under mTLS both ends are TLS sockets (`dataLinkTlsOptions`): `tls.connect` takes the same
 * `onread` target, so payloads still land in place (decrypted into them), and the sender's
 * writes are encrypted from the caller's views. Without TLS the sockets are plain TCP,
 * exactly as before.
 */
import net from 'node:net';
import tls from 'node:tls';
import { AbortedError, DataLossError, FailedPreconditionError, UnavailableError } from '@dinofleet/proto';
import type { DinofleetError } from '@dinofleet/proto';
import {
  FRAME_HEADER_BYTES,
  FrameKind,
  HelloStatus,
  MAX_ABORT_BYTES,
  decodeAbortReason,
  encodeAbortReason,
  encodeHello,
  readFrameHeader,
  writeFrameHeader,
} from './data-frame.ts';
import type { DataLinkHello, FrameHeader } from './data-frame.ts';
import { InboundQueue } from './inbound-queue.ts';

/**
 * Where the payload of a frame should land, decided when its header arrives: a view of
 * exactly `header.payloadBytes` bytes (the payload is read straight into it, no copy), or
 * undefined for a pooled buffer.
 */
export type ReceivePlan = (header: FrameHeader) => Uint8Array | undefined;

/** The error a peer's abort message becomes: ABORTED stays ABORTED, anything else is UNAVAILABLE. */
function peerAbortError(label: string, reason: Uint8Array): DinofleetError {
  const { code, message } = decodeAbortReason(reason);
  const text = `${label} abandoned the generation: ${message}`;
  return code === 'ABORTED' ? new AbortedError(text) : new UnavailableError(text);
}

/** Destroys `socket` after `ms` unless it closed by then (an end() that the peer never acknowledges). */
/** Where an ended link's late bytes go (see `InboundLink.#nextTarget`). */
const DISCARD = new Uint8Array(64 * 1024);

function destroyLater(socket: net.Socket, ms: number): void {
  const timer = setTimeout(() => socket.destroy(), ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Largest payload of one bandwidth-probe frame, in bytes. */
export const MAX_PROBE_FRAME_BYTES = 1024 * 1024;

/** A frame as received: its header and its payload in a pooled buffer. */
export interface ReceivedFrame {
  readonly header: FrameHeader;
  /**
   * The payload: a view of a pooled, 4-byte-aligned buffer, valid until {@link release};
   * or, when a {@link ReceivePlan} placed it, the planned view itself.
   */
  readonly payload: Uint8Array;
  /** Whether the payload was read into the planned view (nothing to copy). */
  readonly placed: boolean;
  /** Gives the buffer back to the pool; call once, after the last use of `payload`. */
  release(): void;
  /** performance.now() when the header was read. */
  readonly headerAtMs: number;
  /** performance.now() when the last payload byte was read. */
  readonly completedAtMs: number;
}

/**
 * Fixed-size, 4-byte-aligned payload buffers, reused. Allocation of a fresh buffer per
 * frame would make every frame fault in new pages; reuse keeps them warm.
 */
export class FramePool {
  readonly #free: Buffer[] = [];
  readonly bufferBytes: number;

  constructor(bufferBytes: number) {
    this.bufferBytes = bufferBytes;
  }

  acquire(): Buffer {
    // Buffer.allocUnsafeSlow: its own ArrayBuffer at offset 0, so Float32Array views fit.
    return this.#free.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes);
  }

  release(buffer: Buffer): void {
    if (this.#free.length < 64) this.#free.push(buffer);
  }
}

/** Settings of {@link dialDataLink}. */
export interface DialDataLinkOptions {
  /** Host of the sender's data listener. */
  host: string;
  /** Port of the sender's data listener. */
  port: number;
  /** The hello (token and settings) to present. */
  hello: DataLinkHello;
  /** Payload buffers. Frames larger than `pool.bufferBytes` are refused. */
  pool: FramePool;
  /**
   * Pause reading while this many pool buffers hold frames nobody took yet (TCP then
   * pushes back on the sender). @default 64
   */
  maxQueuedFrames?: number;
  /** Time to connect and get the sender's reply, in ms. */
  connectTimeoutMs: number;
  /** Names the sender in errors, e.g. "rank 2 (10.0.0.7:7100)". */
  label: string;
  /**
   * TLS client options (`dataLinkTlsOptions(material)`): the link is then TLS 1.3 with
   * both sides' fleet certificates checked. @default plain TCP
   */
  tls?: tls.ConnectionOptions;
}

type ReadTarget =
  | { kind: 'reply-head' }
  | { kind: 'reply-message'; bytes: number }
  | { kind: 'header' }
  | { kind: 'payload'; header: FrameHeader; buffer: Uint8Array; pooled: Buffer | undefined; headerAtMs: number };

/**
 * The receiving end: frames in arrival order. {@link take} hands out one at a time; frames
 * not taken yet wait (the sender may be a whole collective ahead).
 *
 * When the socket ends (the sender closed its side of the generation, was killed, or the
 * connection broke) the frames already read are still handed out; only a take that finds
 * nothing left rejects, at once. A link is thus a failure only to a rank that needs more
 * from that peer, and that rank's own failure then closes its links, so a dead rank stops
 * the ring within milliseconds without a rank that finished its work failing its peers.
 */
export class InboundLink {
  readonly #socket: net.Socket;
  readonly #pool: FramePool;
  readonly #maxQueued: number;
  readonly #label: string;
  readonly #headerBuffer = Buffer.alloc(Math.max(FRAME_HEADER_BYTES, 8));
  #replyMessage = Buffer.alloc(0);
  #replyStatus = 0;
  #target: ReadTarget = { kind: 'reply-head' };
  #filled = 0;
  readonly #frames = new InboundQueue<ReceivedFrame>();
  #failure: DinofleetError | undefined;
  #paused = false;
  #plan: ReceivePlan | undefined;
  #probeBuffer: Buffer | undefined;
  #connected: { resolve: () => void; reject: (err: DinofleetError) => void } | undefined;

  /** Use {@link dialDataLink}. */
  constructor(options: DialDataLinkOptions, connected: { resolve: () => void; reject: (err: DinofleetError) => void }) {
    this.#pool = options.pool;
    this.#maxQueued = options.maxQueuedFrames ?? 64;
    this.#connected = connected;
    this.#label = options.label;
    const connect = {
      host: options.host,
      port: options.port,
      noDelay: true,
      onread: { buffer: () => this.#nextTarget(), callback: (bytes: number) => this.#onRead(bytes) },
    };
    if (options.tls === undefined) {
      this.#socket = net.connect(connect);
      this.#socket.once('connect', () => {
        this.#socket.write(encodeHello(options.hello));
      });
    } else {
      this.#socket = tls.connect({ ...options.tls, ...connect });
      // The hello (and its token) goes out only once the sender's certificate checked out.
      this.#socket.once('secureConnect', () => {
        this.#socket.write(encodeHello(options.hello));
      });
      this.#socket.setNoDelay(true);
    }
    this.#socket.setKeepAlive(true, 5_000);
    this.#socket.on('error', (err) => this.#fail(new UnavailableError(`${this.#label}: data link error: ${err.message}`, { cause: err })));
    this.#socket.on('close', () =>
      this.#fail(new UnavailableError(`${this.#label} closed the data link it sends on (it left, died or abandoned the generation)`)),
    );
  }

  /**
   * Sets (or clears) where payloads land from the next header on. The caller must make
   * sure the memory a plan names may be overwritten as soon as such a frame arrives.
   */
  setPlan(plan: ReceivePlan | undefined): void {
    this.#plan = plan;
  }

  #nextTarget(): Uint8Array {
    // After the end, bytes still arriving (a TLS socket keeps decrypting what it buffered
    // until it is destroyed) are discarded. The buffer must never be empty: Node's TLS read
    // loop spins forever on a zero-length onread buffer while it holds decrypted data.
    if (this.#failure !== undefined) return DISCARD;
    const target = this.#target;
    switch (target.kind) {
      case 'reply-head':
        return this.#headerBuffer.subarray(this.#filled, 8);
      case 'reply-message':
        return this.#replyMessage.subarray(this.#filled, target.bytes);
      case 'header':
        return this.#headerBuffer.subarray(this.#filled, FRAME_HEADER_BYTES);
      case 'payload':
        return target.buffer.subarray(this.#filled, target.header.payloadBytes);
    }
  }

  #onRead(bytes: number): boolean {
    if (this.#failure !== undefined) return false;
    this.#filled += bytes;
    try {
      this.#advance();
    } catch (err) {
      const message = `${this.#label}: ${(err as Error).message}`;
      let failure: DinofleetError;
      if (err instanceof FailedPreconditionError) failure = new FailedPreconditionError(message, { cause: err });
      else if (err instanceof AbortedError) failure = new AbortedError(message, { cause: err });
      else if (err instanceof UnavailableError) failure = new UnavailableError(message, { cause: err });
      else failure = new DataLossError(message, { cause: err });
      this.#fail(failure);
      return false;
    }
    if (this.#frames.size >= this.#maxQueued) {
      this.#paused = true;
      return false;
    }
    return true;
  }

  /** Moves the read state machine on once the current target is full. */
  #advance(): void {
    const target = this.#target;
    switch (target.kind) {
      case 'reply-head': {
        if (this.#filled < 8) return;
        const status = this.#headerBuffer.readUInt32LE(0);
        const bytes = this.#headerBuffer.readUInt32LE(4);
        if (bytes > 4096) throw new DataLossError(`data link: reply of ${bytes} bytes`);
        this.#replyStatus = status;
        if (status === 0 && bytes === 0) {
          this.#startHeader();
          const connected = this.#connected;
          this.#connected = undefined;
          connected?.resolve();
          return;
        }
        this.#replyMessage = Buffer.alloc(bytes);
        this.#filled = 0;
        this.#target = { kind: 'reply-message', bytes };
        if (bytes === 0) this.#advance();
        return;
      }
      case 'reply-message': {
        if (this.#filled < target.bytes) return;
        const text = `the sender refused the data link: ${this.#replyMessage.toString('utf8')}`;
        if (this.#replyStatus === HelloStatus.Aborted) throw new AbortedError(text);
        if (this.#replyStatus === HelloStatus.Unavailable) throw new UnavailableError(text);
        throw new FailedPreconditionError(text);
      }
      case 'header': {
        if (this.#filled < FRAME_HEADER_BYTES) return;
        const header = readFrameHeader(this.#headerBuffer);
        const limit = header.kind === FrameKind.Abort ? MAX_ABORT_BYTES : header.kind === FrameKind.Probe ? MAX_PROBE_FRAME_BYTES : this.#pool.bufferBytes;
        if (header.payloadBytes > limit) {
          throw new DataLossError(`data link: a frame of kind ${header.kind} with ${header.payloadBytes} bytes, over the ${limit}-byte limit both ends agreed on`);
        }
        const now = performance.now();
        if (header.payloadBytes === 0) {
          this.#deliver(header, Buffer.alloc(0), undefined, now);
          this.#startHeader();
          return;
        }
        this.#filled = 0;
        if (header.kind === FrameKind.Abort) {
          const buffer = Buffer.alloc(header.payloadBytes);
          this.#target = { kind: 'payload', header, buffer, pooled: undefined, headerAtMs: now };
          return;
        }
        if (header.kind === FrameKind.Probe) {
          // Probe bytes are only timed, never used: one scratch buffer, whatever the pool.
          this.#probeBuffer ??= Buffer.allocUnsafeSlow(MAX_PROBE_FRAME_BYTES);
          this.#target = { kind: 'payload', header, buffer: this.#probeBuffer.subarray(0, header.payloadBytes), pooled: undefined, headerAtMs: now };
          return;
        }
        const planned = this.#plan?.(header);
        if (planned !== undefined && planned.byteLength === header.payloadBytes) {
          this.#target = { kind: 'payload', header, buffer: planned, pooled: undefined, headerAtMs: now };
        } else {
          const pooled = this.#pool.acquire();
          this.#target = { kind: 'payload', header, buffer: pooled, pooled, headerAtMs: now };
        }
        return;
      }
      case 'payload': {
        if (this.#filled < target.header.payloadBytes) return;
        if (target.header.kind === FrameKind.Abort) {
          this.#fail(peerAbortError(this.#label, target.buffer));
          return;
        }
        this.#deliver(target.header, target.buffer.subarray(0, target.header.payloadBytes), target.pooled, target.headerAtMs);
        this.#startHeader();
        return;
      }
    }
  }

  #startHeader(): void {
    this.#filled = 0;
    this.#target = { kind: 'header' };
  }

  #deliver(header: FrameHeader, payload: Uint8Array, pooled: Buffer | undefined, headerAtMs: number): void {
    let released = false;
    const frame: ReceivedFrame = {
      header,
      payload,
      placed: pooled === undefined && payload.byteLength > 0,
      headerAtMs,
      completedAtMs: performance.now(),
      release: () => {
        if (released || pooled === undefined) return;
        released = true;
        this.#pool.release(pooled);
      },
    };
    this.#frames.push(frame);
  }

  /**
   * The next frame. Waits at most `waitMs`; then rejects with `onTimeout()`. Rejects with
   * the link's failure once it failed.
   */
  take(waitMs: number, onTimeout: () => Error): Promise<ReceivedFrame> {
    const frame = this.#frames.take(waitMs, onTimeout);
    if (this.#paused && this.#frames.size < this.#maxQueued / 2) {
      this.#paused = false;
      this.#socket.resume();
    }
    return frame;
  }

  /**
   * Ends the link with `err`: frames already read are still handed out unless the owner
   * closed it (`drop`), in which case they go back to the pool.
   */
  #fail(err: DinofleetError, drop = false): void {
    this.#end(err, drop);
    this.#socket.destroy();
  }

  #end(err: DinofleetError, drop: boolean): void {
    for (const frame of this.#frames.end(err, drop)) frame.release();
    if (this.#failure !== undefined) return;
    this.#failure = err;
    if (this.#target.kind === 'payload' && this.#target.pooled !== undefined) this.#pool.release(this.#target.pooled);
    this.#target = { kind: 'header' };
    this.#filled = 0;
    const connected = this.#connected;
    this.#connected = undefined;
    connected?.reject(err);
  }

  /**
   * Tells the sender why this rank gives up (it fails with that reason rather than a bare
   * closed socket), then closes like {@link close}.
   */
  abort(reason: DinofleetError): void {
    const established = this.#failure === undefined && !this.#socket.destroyed && this.#connected === undefined;
    this.#end(reason, true);
    if (!established) {
      this.#socket.destroy();
      return;
    }
    this.#socket.end(encodeAbortReason(reason.code, reason.message));
    destroyLater(this.#socket, 1_000);
  }

  /** Closes the link and drops what it holds; pending and later takes reject with `reason`. Idempotent. */
  close(reason: DinofleetError): void {
    this.#fail(reason, true);
  }
}

/** Dials a sender's data listener and resolves once the sender accepted the hello. */
export function dialDataLink(options: DialDataLinkOptions): Promise<InboundLink> {
  return new Promise<InboundLink>((resolve, reject) => {
    let link: InboundLink | undefined = undefined;
    const timer = setTimeout(() => {
      link?.close(new UnavailableError(`${options.label}: no data link reply from ${options.host}:${options.port} within ${options.connectTimeoutMs} ms`));
    }, options.connectTimeoutMs);
    link = new InboundLink(options, {
      resolve: () => {
        clearTimeout(timer);
        resolve(link as InboundLink);
      },
      reject: (err) => {
        clearTimeout(timer);
        reject(err);
      },
    });
  });
}

interface QueuedFrame {
  readonly header: FrameHeader;
  readonly payload: Uint8Array | undefined;
  readonly onWritten: (() => void) | undefined;
}

/**
 * The sending end. Frames sent before the receiver has dialed wait in order and go out
 * when {@link attach} hands over the socket. {@link flush} resolves once every frame so far
 * has been handed to the kernel, after which the caller may reuse the payload memory. When
 * the receiver goes away, later sends throw and pending flushes reject; a link nobody
 * sends on any more fails nobody.
 */
export class OutboundLink {
  #socket: net.Socket | undefined;
  #queued: QueuedFrame[] = [];
  #pendingWrites = 0;
  #flushWaiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  #failure: DinofleetError | undefined;
  readonly #label: string;
  #peerReason = Buffer.alloc(0);

  /** `label` names the receiver in errors, e.g. "rank 3 (10.0.0.8:7100)". */
  constructor(label: string) {
    this.#label = label;
  }

  /** Whether the receiver has dialed in. */
  get attached(): boolean {
    return this.#socket !== undefined;
  }

  /** Hands over the accepted, hello-checked socket; queued frames go out now. */
  attach(socket: net.Socket): void {
    if (this.#failure !== undefined) {
      socket.destroy();
      return;
    }
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 5_000);
    socket.on('error', (err) => this.#fail(new UnavailableError(`${this.#label}: data link error: ${err.message}`, { cause: err })));
    socket.on('close', () =>
      this.#fail(
        this.#peerReason.byteLength > 0
          ? peerAbortError(this.#label, this.#peerReason)
          : new UnavailableError(`${this.#label} closed the data link it receives on (it left, died or abandoned the generation)`),
      ),
    );
    // The receiver's only message on this direction: why it gave up, before it closes.
    socket.on('data', (data: Buffer) => {
      if (this.#peerReason.byteLength < MAX_ABORT_BYTES) this.#peerReason = Buffer.concat([this.#peerReason, data]).subarray(0, MAX_ABORT_BYTES);
    });
    const queued = this.#queued;
    this.#queued = [];
    socket.cork();
    for (const frame of queued) this.#write(socket, frame);
    socket.uncork();
  }

  /**
   * Sends one frame; `payload` (may be undefined for an empty one) must stay unchanged
   * until `onWritten` runs or {@link flush} resolves.
   */
  send(header: FrameHeader, payload: Uint8Array | undefined, onWritten?: () => void): void {
    if (this.#failure !== undefined) throw this.#failure;
    this.#pendingWrites++;
    const frame: QueuedFrame = { header, payload, onWritten };
    if (this.#socket === undefined) {
      this.#queued.push(frame);
      return;
    }
    this.#socket.cork();
    this.#write(this.#socket, frame);
    this.#socket.uncork();
  }

  /** Like {@link send}, but ahead of every frame queued so far; only before {@link attach}. */
  sendFirst(header: FrameHeader, payload: Uint8Array): void {
    if (this.#socket !== undefined) throw new FailedPreconditionError('OutboundLink.sendFirst after attach');
    this.#pendingWrites++;
    this.#queued.unshift({ header, payload, onWritten: undefined });
  }

  #write(socket: net.Socket, frame: QueuedFrame): void {
    const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
    writeFrameHeader(head, frame.header);
    const done = (err?: Error | null): void => {
      this.#pendingWrites--;
      if (err !== null && err !== undefined) {
        this.#fail(new UnavailableError(`${this.#label}: data link write failed: ${err.message}`, { cause: err }));
        return;
      }
      frame.onWritten?.();
      if (this.#pendingWrites === 0) {
        const waiters = this.#flushWaiters;
        this.#flushWaiters = [];
        for (const waiter of waiters) waiter.resolve();
      }
    };
    // An empty payload: the header write's completion is the frame's.
    if (frame.payload === undefined || frame.payload.byteLength === 0) socket.write(head, done);
    else {
      socket.write(head);
      socket.write(frame.payload, done);
    }
  }

  /** Resolves once every frame sent so far is in the kernel; rejects if the link fails. */
  flush(): Promise<void> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    if (this.#pendingWrites === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.#flushWaiters.push({ resolve, reject }));
  }

  #fail(err: DinofleetError): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#queued = [];
    const waiters = this.#flushWaiters;
    this.#flushWaiters = [];
    for (const waiter of waiters) waiter.reject(err);
    this.#socket?.destroy();
  }

  /**
   * Tells the receiver why this rank gives up (an Abort frame after what is queued), then
   * closes; later sends throw `reason`.
   */
  abort(reason: DinofleetError): void {
    const socket = this.#socket;
    if (this.#failure !== undefined || socket === undefined || socket.destroyed) {
      this.#fail(reason);
      return;
    }
    this.#failure = reason;
    this.#queued = [];
    const waiters = this.#flushWaiters;
    this.#flushWaiters = [];
    for (const waiter of waiters) waiter.reject(reason);
    const payload = encodeAbortReason(reason.code, reason.message);
    const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
    writeFrameHeader(head, { kind: FrameKind.Abort, step: 0, op: 0, sequence: 0, segment: 0, offset: 0, payloadBytes: payload.byteLength });
    socket.end(Buffer.concat([head, payload]));
    destroyLater(socket, 1_000);
  }

  /** Closes the link; later sends throw `reason`. Idempotent. */
  close(reason: DinofleetError): void {
    this.#fail(reason);
  }
}
