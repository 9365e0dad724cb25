/**
 * The wire format of a TCP data link (docs/collective.md): a hello from the receiver, one
 * status reply from the sender, then frames from the sender, each a fixed 40-byte header
 * followed by its payload. Everything little-endian; no protobuf, so a payload goes from
 * the sender's buffer to the socket without a copy and lands in a 4-byte-aligned buffer
 * on the receiver.
 */
import { InvalidArgumentError } from '@dinofleet/proto';

/** "DFC1": first bytes of a hello. */
export const HELLO_MAGIC = 0x31434644;
/** "DFF1": first bytes of every frame header. */
export const FRAME_MAGIC = 0x31464644;
/** Bytes of a frame header. */
export const FRAME_HEADER_BYTES = 40;
/** Bytes of the one-time token of OpenDataLink. */
export const DATA_LINK_TOKEN_BYTES = 32;
/** Largest hello, in bytes (the job id is at most 1 KiB). */
export const MAX_HELLO_BYTES = 4096;

/** What a frame carries (the `kind` field). */
export const FrameKind = {
  /** Ring reduce-scatter: a partial sum to add. */
  ReduceScatter: 1,
  /** Ring all-gather: a reduced chunk that replaces the receiver's copy. */
  AllGather: 2,
  /** Recursive doubling: the sender's whole vector, to add. */
  Exchange: 3,
  /** Recursive doubling, non-power-of-two world: a vector folded into a partner, or the result sent back. */
  Fold: 4,
  /** Link bandwidth probe sent once per link after the hello. */
  Probe: 5,
  /** The sender abandoned the generation; the payload is "CODE\nmessage" in UTF-8 (at most 4 KiB). */
  Abort: 6,
} as const;

/** Largest payload of an Abort frame (and of a receiver's abort message), in bytes. */
export const MAX_ABORT_BYTES = 4096;

/** "CODE\nmessage" of an error, cut to {@link MAX_ABORT_BYTES}. */
export function encodeAbortReason(code: string, message: string): Buffer {
  return Buffer.from(`${code}\n${message}`, 'utf8').subarray(0, MAX_ABORT_BYTES);
}

/** Splits an abort payload back into its code and message. */
export function decodeAbortReason(payload: Uint8Array): { code: string; message: string } {
  const text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8');
  const newline = text.indexOf('\n');
  return newline < 0 ? { code: 'UNAVAILABLE', message: text } : { code: text.slice(0, newline), message: text.slice(newline + 1) };
}
/** {@link FrameKind} values. */
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** A frame header. */
export interface FrameHeader {
  /** What the payload is. */
  kind: FrameKind;
  /** Optimizer step of the collective. */
  step: number;
  /** Which collective of the step. */
  op: number;
  /** Position of the frame among the sender's frames of this kind in this collective. */
  sequence: number;
  /** Ring segment (ring frames), or the doubling round (recursive doubling). */
  segment: number;
  /** Offset of the payload within its segment, in elements. */
  offset: number;
  /** Payload bytes that follow the header. */
  payloadBytes: number;
}

/** Writes `header` into `target` (at least {@link FRAME_HEADER_BYTES} bytes). */
export function writeFrameHeader(target: Buffer, header: FrameHeader): void {
  target.writeUInt32LE(FRAME_MAGIC, 0);
  target.writeUInt32LE(header.kind, 4);
  target.writeUInt32LE(header.step % 2 ** 32, 8);
  target.writeUInt32LE(Math.floor(header.step / 2 ** 32), 12);
  target.writeUInt32LE(header.op, 16);
  target.writeUInt32LE(header.sequence, 20);
  target.writeUInt32LE(header.segment, 24);
  target.writeUInt32LE(header.offset % 2 ** 32, 28);
  target.writeUInt32LE(Math.floor(header.offset / 2 ** 32), 32);
  target.writeUInt32LE(header.payloadBytes, 36);
}

/** Reads a frame header; throws InvalidArgumentError on a bad magic or kind. */
export function readFrameHeader(source: Buffer): FrameHeader {
  const magic = source.readUInt32LE(0);
  if (magic !== FRAME_MAGIC) throw new InvalidArgumentError(`data link: bad frame magic 0x${magic.toString(16)}`);
  const kind = source.readUInt32LE(4);
  if (kind < FrameKind.ReduceScatter || kind > FrameKind.Abort) throw new InvalidArgumentError(`data link: unknown frame kind ${kind}`);
  return {
    kind: kind as FrameKind,
    step: source.readUInt32LE(8) + source.readUInt32LE(12) * 2 ** 32,
    op: source.readUInt32LE(16),
    sequence: source.readUInt32LE(20),
    segment: source.readUInt32LE(24),
    offset: source.readUInt32LE(28) + source.readUInt32LE(32) * 2 ** 32,
    payloadBytes: source.readUInt32LE(36),
  };
}

/**
 * The receiver's hello: the token from OpenDataLink and the settings both ends must share.
 * A mismatch is refused with a message naming the field, instead of garbled sums later.
 */
export interface DataLinkHello {
  /** The one-time token. */
  token: Uint8Array;
  /** Job. */
  job: string;
  /** Generation. */
  generation: number;
  /** Rank that sends on the link. */
  senderRank: number;
  /** Rank that receives on the link (the dialer). */
  receiverRank: number;
  /** Ranks in the generation. */
  worldSize: number;
  /** The collective settings that must match, as a canonical string (e.g. "chunk=1048576 compression=none small=262144"). */
  settings: string;
}

/** Serialises a hello, length-prefixed. */
export function encodeHello(hello: DataLinkHello): Buffer {
  if (hello.token.byteLength !== DATA_LINK_TOKEN_BYTES) throw new InvalidArgumentError(`data link token must be ${DATA_LINK_TOKEN_BYTES} bytes`);
  const job = Buffer.from(hello.job, 'utf8');
  const settings = Buffer.from(hello.settings, 'utf8');
  const size = 8 + DATA_LINK_TOKEN_BYTES + 8 + 12 + 4 + job.byteLength + 4 + settings.byteLength;
  if (size > MAX_HELLO_BYTES) throw new InvalidArgumentError(`data link hello of ${size} bytes is over ${MAX_HELLO_BYTES}`);
  const buffer = Buffer.alloc(size);
  let at = 0;
  buffer.writeUInt32LE(HELLO_MAGIC, at);
  buffer.writeUInt32LE(size, (at += 4));
  Buffer.from(hello.token).copy(buffer, (at += 4));
  at += DATA_LINK_TOKEN_BYTES;
  buffer.writeUInt32LE(hello.generation % 2 ** 32, at);
  buffer.writeUInt32LE(Math.floor(hello.generation / 2 ** 32), (at += 4));
  buffer.writeUInt32LE(hello.senderRank, (at += 4));
  buffer.writeUInt32LE(hello.receiverRank, (at += 4));
  buffer.writeUInt32LE(hello.worldSize, (at += 4));
  buffer.writeUInt32LE(job.byteLength, (at += 4));
  job.copy(buffer, (at += 4));
  buffer.writeUInt32LE(settings.byteLength, (at += job.byteLength));
  settings.copy(buffer, (at += 4));
  return buffer;
}

/**
 * Bytes of the hello that starts `source`, or undefined while fewer than 8 bytes are in.
 * Throws on a bad magic or size (the peer is not a dinofleet rank).
 */
export function helloSize(source: Buffer): number | undefined {
  if (source.byteLength < 8) return undefined;
  const magic = source.readUInt32LE(0);
  if (magic !== HELLO_MAGIC) throw new InvalidArgumentError(`data link: bad hello magic 0x${magic.toString(16)} (not a dinofleet rank?)`);
  const size = source.readUInt32LE(4);
  if (size < 8 + DATA_LINK_TOKEN_BYTES + 28 || size > MAX_HELLO_BYTES) throw new InvalidArgumentError(`data link: hello of ${size} bytes`);
  return size;
}

/** Parses a complete hello ({@link helloSize} bytes). */
export function decodeHello(source: Buffer): DataLinkHello {
  const size = helloSize(source);
  if (size === undefined || source.byteLength < size) throw new InvalidArgumentError('data link: truncated hello');
  let at = 8;
  const token = Uint8Array.from(source.subarray(at, (at += DATA_LINK_TOKEN_BYTES)));
  const generation = source.readUInt32LE(at) + source.readUInt32LE((at += 4)) * 2 ** 32;
  const senderRank = source.readUInt32LE((at += 4));
  const receiverRank = source.readUInt32LE((at += 4));
  const worldSize = source.readUInt32LE((at += 4));
  const jobBytes = source.readUInt32LE((at += 4));
  at += 4;
  if (at + jobBytes + 4 > size) throw new InvalidArgumentError('data link: hello job id overruns the hello');
  const job = source.toString('utf8', at, (at += jobBytes));
  const settingsBytes = source.readUInt32LE(at);
  at += 4;
  if (at + settingsBytes !== size) throw new InvalidArgumentError('data link: hello settings do not end the hello');
  const settings = source.toString('utf8', at, at + settingsBytes);
  return { token, job, generation, senderRank, receiverRank, worldSize, settings };
}

/**
 * Status of a hello reply: why a link was refused decides how the receiver reports it
 * (FAILED_PRECONDITION for what no retry fixes, ABORTED for a generation that is over,
 * UNAVAILABLE for a sender that is shutting down).
 */
export const HelloStatus = {
  Accepted: 0,
  /** Bad hello or token, or settings that differ between the ranks. */
  FailedPrecondition: 1,
  /** The generation is stale or abandoned on the sender. */
  Aborted: 2,
  /** The sender is closing. */
  Unavailable: 3,
} as const;
/** {@link HelloStatus} values. */
export type HelloStatus = (typeof HelloStatus)[keyof typeof HelloStatus];

/** The sender's reply to a hello: status 0 and an empty message, or a refusal. */
export function encodeHelloReply(refusal?: string, status: HelloStatus = HelloStatus.FailedPrecondition): Buffer {
  const message = Buffer.from(refusal ?? '', 'utf8').subarray(0, 2048);
  const buffer = Buffer.alloc(8 + message.byteLength);
  buffer.writeUInt32LE(refusal === undefined ? HelloStatus.Accepted : status, 0);
  buffer.writeUInt32LE(message.byteLength, 4);
  message.copy(buffer, 8);
  return buffer;
}
