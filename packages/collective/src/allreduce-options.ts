/**
 * Settings, tags and figures shared by both transports of the all-reduce
 * (docs/collective.md): `tcp` (the default: raw TCP data links, ring plus recursive
 * doubling, optional 16-bit compression) and `grpc` (the ring over Exchange streams).
 */
import { endianness } from 'node:os';
import { InvalidArgumentError } from '@dinofleet/proto';
import type { CreateClientOptions } from '@dinofleet/proto';
import type { CollectiveEndpoint } from './collective-endpoint.ts';
import { COMPRESSIONS, Compression, isCompression } from './compression.ts';

if (endianness() !== 'LE') {
  // The wire carries little-endian float32 and Float32Array uses the host's byte order.
  throw new Error('@dinofleet/collective needs a little-endian host');
}

/** Default of {@link RingAllReduceOptions.chunkBytes}: 1 MiB. */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
/** Default of {@link RingAllReduceOptions.timeoutMs}, in ms. */
export const DEFAULT_ALL_REDUCE_TIMEOUT_MS = 30_000;
/** Default of {@link RingAllReduceOptions.stallTimeoutMs}, in ms. */
export const DEFAULT_STALL_TIMEOUT_MS = 5_000;
/** Largest chunk, in bytes (well under the 64 MiB gRPC message limit). */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
/** Default of {@link RingAllReduceOptions.smallMessageBytes}: 256 KiB (see docs/collective.md for the measurement). */
export const DEFAULT_SMALL_MESSAGE_BYTES = 256 * 1024;
/** Largest {@link RingAllReduceOptions.smallMessageBytes}: 16 MiB. */
export const MAX_SMALL_MESSAGE_BYTES = 16 * 1024 * 1024;
/** Default of {@link RingAllReduceOptions.directMaxRanks}. */
export const DEFAULT_DIRECT_MAX_RANKS = 8;
/** Default of {@link RingAllReduceOptions.linkProbeBytes}: 8 MiB. */
export const DEFAULT_LINK_PROBE_BYTES = 8 * 1024 * 1024;
/** Default of {@link RingAllReduceOptions.connectTimeoutMs}, in ms. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** How chunks travel between ranks. */
export const Transport = {
  /** Raw TCP data links opened through gRPC's OpenDataLink (the default, ≈ socket speed). */
  Tcp: 'tcp',
  /** The ring over gRPC Exchange streams (HTTP/2): slower, needs only the gRPC port. */
  Grpc: 'grpc',
} as const;
/** {@link Transport} values. */
export type Transport = (typeof Transport)[keyof typeof Transport];

/** Which algorithm a call used. */
export const AllReduceAlgorithm = {
  /** Bandwidth-optimal ring reduce-scatter + all-gather, chunked and pipelined. */
  Ring: 'ring',
  /** Latency-optimal recursive doubling (log2 n rounds), for small vectors. */
  RecursiveDoubling: 'recursive-doubling',
  /**
   * Direct reduce-scatter + all-gather over a full mesh, for small worlds: the ring's bytes
   * in two hops instead of 2(n−1).
   */
  Direct: 'direct',
  /** One rank or an empty vector: nothing moved. */
  Local: 'local',
} as const;
/** {@link AllReduceAlgorithm} values. */
export type AllReduceAlgorithm = (typeof AllReduceAlgorithm)[keyof typeof AllReduceAlgorithm];

/** A measured link to a peer. */
export interface LinkBandwidth {
  /** The peer that sent the probe (this rank's left neighbour). */
  readonly peerRank: number;
  /** Its address. */
  readonly peerAddress: string;
  /** Probe bytes over the time from its first header to its last byte, in GB/s (10^9 B/s). */
  readonly bandwidthGBps: number;
  /** Probe size in bytes. */
  readonly bytes: number;
}

/** Settings for {@link RingAllReduce}. Every rank of a generation must use the same values. */
export interface RingAllReduceOptions {
  /** This worker's Collective endpoint, which delivers streams and data links from peers. */
  endpoint: CollectiveEndpoint;
  /** Job id; chunks of another job are refused. */
  job: string;
  /** Membership generation; chunks of another generation are refused (ABORTED). Safe integer >= 0. */
  generation: number;
  /** This rank's index in `peers`. */
  rank: number;
  /**
   * "host:port" of every rank's Collective endpoint (gRPC), in ring order (index = rank).
   * Rank r sends ring chunks to `peers[(r + 1) % n]` and receives from `peers[(r - 1 + n) % n]`.
   */
  peers: readonly string[];
  /** How chunks travel. @default "tcp" */
  transport?: Transport;
  /**
   * Bytes per chunk of the ring (float32 bytes before any compression): a multiple of 4 in
   * 4..16 MiB. Smaller chunks overlap sending and summing more finely, larger ones pay the
   * per-message cost less often. @default 1 MiB
   */
  chunkBytes?: number;
  /**
   * Vectors of at most this many bytes use recursive doubling (log2 n rounds of whole-vector
   * exchanges) instead of the ring's 2(n−1) steps; tcp transport only. 0 turns it off.
   * Multiple of 4 in 0..16 MiB. @default 256 KiB
   */
  smallMessageBytes?: number;
  /**
   * Worlds of at most this many ranks use the direct algorithm (every rank sends each peer
   * its segment, owners sum and send the result back: a full mesh of links, two hops)
   * instead of the ring for vectors above `smallMessageBytes`; tcp transport only. 0 turns
   * it off. Range 0..64. @default 8
   */
  directMaxRanks?: number;
  /**
   * 16-bit payloads on the wire with float32 accumulation ("bf16" or "fp16"); halves the bytes
   * moved, adds rounding (allReduceErrorBound); tcp transport only. @default "none"
   */
  compression?: Compression;
  /**
   * Bytes of the bandwidth probe each rank's left neighbour sends once per generation on the
   * ring link (tcp transport); 0 turns it off. Multiple of 4 in 0..256 MiB. @default 8 MiB
   */
  linkProbeBytes?: number;
  /**
   * Deadline of one call, counted from the call, in ms. Range 1..3600000. @default 30000
   */
  timeoutMs?: number;
  /**
   * Longest silence from a peer once it has started sending a collective, in ms. Until its
   * first chunk only `timeoutMs` applies, because ranks reach a collective at different times.
   * Range 1..timeoutMs. @default 5000
   */
  stallTimeoutMs?: number;
  /** Time to open a data link (OpenDataLink plus TCP connect and hello), in ms. Range 1..600000. @default 10000 */
  connectTimeoutMs?: number;
  /**
   * Channel settings of the gRPC clients to peers. Without `credentials` the clients use
   * the endpoint's (`endpoint.clientCredentials`: this rank's fleet certificate under mTLS).
   * @default createClient's, with the endpoint's credentials
   */
  client?: CreateClientOptions;
  /** Called with the figures of every successful call (also kept as `lastStats`). */
  onStats?: (stats: AllReduceStats) => void;
  /** Called once the ring link's probe has been measured (also kept as `linkBandwidth`). */
  onLinkBandwidth?: (link: LinkBandwidth) => void;
}

/** {@link RingAllReduceOptions} with every default applied and checked. */
export interface RingAllReduceConfig {
  readonly job: string;
  readonly generation: number;
  readonly rank: number;
  readonly peers: readonly string[];
  /** Ranks in the ring. */
  readonly worldSize: number;
  readonly transport: Transport;
  readonly chunkBytes: number;
  readonly smallMessageBytes: number;
  readonly directMaxRanks: number;
  readonly compression: Compression;
  readonly linkProbeBytes: number;
  readonly timeoutMs: number;
  readonly stallTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly client: CreateClientOptions;
}

/** Throws InvalidArgumentError unless `value` is an integer in min..max. */
export function checkRange(field: string, value: number, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${field} must be an integer in ${min}..${max}, got ${value}`);
  }
}

function checkMultipleOf4(field: string, value: number): void {
  if (value % 4 !== 0) throw new InvalidArgumentError(`${field} must be a multiple of 4, got ${value}`);
}

/** Applies the defaults of {@link RingAllReduceOptions} and checks every field's range. */
export function resolveRingAllReduceConfig(
  options: Omit<RingAllReduceOptions, 'endpoint' | 'onStats' | 'onLinkBandwidth'>,
): RingAllReduceConfig {
  if (options.job === '') throw new InvalidArgumentError('job must not be empty');
  const worldSize = options.peers.length;
  if (worldSize < 1) throw new InvalidArgumentError('peers must name at least one rank');
  options.peers.forEach((address, rank) => {
    if (address === '') throw new InvalidArgumentError(`peers[${rank}] is empty`);
  });
  checkRange('rank', options.rank, 0, worldSize - 1);
  checkRange('generation', options.generation, 0, Number.MAX_SAFE_INTEGER);
  const transport = options.transport ?? Transport.Tcp;
  if (transport !== Transport.Tcp && transport !== Transport.Grpc) {
    throw new InvalidArgumentError(`transport must be "tcp" or "grpc", got "${String(transport)}"`);
  }
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  checkRange('chunkBytes', chunkBytes, 4, MAX_CHUNK_BYTES);
  checkMultipleOf4('chunkBytes', chunkBytes);
  const smallMessageBytes = options.smallMessageBytes ?? (transport === Transport.Tcp ? DEFAULT_SMALL_MESSAGE_BYTES : 0);
  checkRange('smallMessageBytes', smallMessageBytes, 0, MAX_SMALL_MESSAGE_BYTES);
  checkMultipleOf4('smallMessageBytes', smallMessageBytes);
  const directMaxRanks = options.directMaxRanks ?? (transport === Transport.Tcp ? DEFAULT_DIRECT_MAX_RANKS : 0);
  checkRange('directMaxRanks', directMaxRanks, 0, 64);
  const compression = options.compression ?? Compression.None;
  if (!isCompression(compression)) {
    throw new InvalidArgumentError(`compression must be one of ${COMPRESSIONS.join(', ')}, got "${String(compression)}"`);
  }
  const linkProbeBytes = options.linkProbeBytes ?? (transport === Transport.Tcp ? DEFAULT_LINK_PROBE_BYTES : 0);
  checkRange('linkProbeBytes', linkProbeBytes, 0, 256 * 1024 * 1024);
  checkMultipleOf4('linkProbeBytes', linkProbeBytes);
  if (transport === Transport.Grpc) {
    if (compression !== Compression.None) throw new InvalidArgumentError(`compression "${compression}" needs transport "tcp"`);
    if (smallMessageBytes !== 0) throw new InvalidArgumentError('smallMessageBytes (recursive doubling) needs transport "tcp"; use 0 with "grpc"');
    if (linkProbeBytes !== 0) throw new InvalidArgumentError('linkProbeBytes needs transport "tcp"; use 0 with "grpc"');
    if (directMaxRanks !== 0) throw new InvalidArgumentError('directMaxRanks (the direct algorithm) needs transport "tcp"; use 0 with "grpc"');
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_ALL_REDUCE_TIMEOUT_MS;
  checkRange('timeoutMs', timeoutMs, 1, 3_600_000);
  const stallTimeoutMs = options.stallTimeoutMs ?? Math.min(DEFAULT_STALL_TIMEOUT_MS, timeoutMs);
  checkRange('stallTimeoutMs', stallTimeoutMs, 1, timeoutMs);
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  checkRange('connectTimeoutMs', connectTimeoutMs, 1, 600_000);
  return {
    job: options.job,
    generation: options.generation,
    rank: options.rank,
    peers: [...options.peers],
    worldSize,
    transport,
    chunkBytes,
    smallMessageBytes,
    directMaxRanks,
    compression,
    linkProbeBytes,
    timeoutMs,
    stallTimeoutMs,
    connectTimeoutMs,
    client: options.client ?? {},
  };
}

/**
 * The options of the gRPC clients a collective opens to its peers: `config.client`, with
 * the endpoint's credentials unless it names its own.
 */
export function peerClientOptions(config: RingAllReduceConfig, endpoint: Pick<CollectiveEndpoint, 'clientCredentials'>): CreateClientOptions {
  return config.client.credentials === undefined ? { ...config.client, credentials: endpoint.clientCredentials } : config.client;
}

/** Names one collective of a step; every rank runs the same tags in the same order. */
export interface AllReduceTag {
  /** Optimizer step. Safe integer >= 0. */
  step: number;
  /** Which collective of the step, in program order (the wire's `round`). 0..2^32-1. */
  op: number;
}

/** Checks a tag's ranges. */
export function checkTag(tag: AllReduceTag): void {
  checkRange('tag.step', tag.step, 0, Number.MAX_SAFE_INTEGER);
  checkRange('tag.op', tag.op, 0, 2 ** 32 - 1);
}

/** Figures of one all-reduce call. */
export interface AllReduceStats {
  /** The call's step. */
  readonly step: number;
  /** The call's op. */
  readonly op: number;
  /** Ranks in the ring. */
  readonly worldSize: number;
  /** Size of the reduced buffer, in bytes (float32). */
  readonly sizeBytes: number;
  /** Which algorithm ran. */
  readonly algorithm: AllReduceAlgorithm;
  /** Payload encoding on the wire. */
  readonly compression: Compression;
  /** Wall time of the collective (not of waiting behind an earlier call), in seconds. */
  readonly seconds: number;
  /** Algorithm bandwidth sizeBytes / seconds, in GB/s (10^9 bytes per second). */
  readonly algbwGBps: number;
  /**
   * Bus bandwidth algbw × 2(n−1)/n in GB/s, as nccl-tests defines it: comparable across
   * world sizes and with MPI's figures. 0 for a single rank.
   */
  readonly busbwGBps: number;
}

/** The figures of a call that moved `sizeBytes` in `seconds`. */
export function allReduceStats(
  tag: AllReduceTag,
  config: RingAllReduceConfig,
  sizeBytes: number,
  seconds: number,
  algorithm: AllReduceAlgorithm,
): AllReduceStats {
  const n = config.worldSize;
  const algbwGBps = seconds > 0 ? sizeBytes / seconds / 1e9 : 0;
  return {
    step: tag.step,
    op: tag.op,
    worldSize: n,
    sizeBytes,
    algorithm,
    compression: config.compression,
    seconds,
    algbwGBps,
    busbwGBps: (algbwGBps * 2 * (n - 1)) / n,
  };
}

/** `Buffer#copy` of `source` into `target` (a memcpy; typed-array `set` is slower in Node 20's V8). */
export function copyFloats(source: Float32Array, target: Float32Array): void {
  Buffer.from(source.buffer, source.byteOffset, source.byteLength).copy(Buffer.from(target.buffer, target.byteOffset, target.byteLength));
}
