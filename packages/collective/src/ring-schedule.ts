/**
 * The ring all-reduce schedule: how a buffer is split into segments and chunks, and which
 * chunk a rank sends and receives at which point. Pure arithmetic, shared by the sender
 * and the receiver so both sides agree on every message without negotiating.
 *
 * The schedule is the classic bandwidth-optimal ring (Patarasuk & Yuan 2009; the one
 * Horovod and NCCL use): the buffer is cut into n segments; in reduce-scatter step t
 * (t = 0 .. n-2) rank r sends segment (r - t) mod n to rank r+1 and receives segment
 * (r - 1 - t) mod n from rank r-1, adding its own values into it. After n-1 steps rank r
 * holds segment (r + 1) mod n fully reduced. In all-gather step t rank r sends segment
 * (r + 1 - t) mod n and receives segment (r - t) mod n, which replaces its copy.
 */
import { CollectivePhase } from '@dinofleet/proto';

/** Where one segment lies in the buffer, in float32 elements. */
export interface SegmentBounds {
  /** First element of the segment. */
  readonly start: number;
  /** Elements in the segment (0 when the buffer is shorter than the world). */
  readonly length: number;
}

/** `a mod n` in [0, n) for any integer `a`. */
export function mod(a: number, n: number): number {
  return ((a % n) + n) % n;
}

/**
 * Segment `segment` of a buffer of `length` elements split over `worldSize` ranks: the
 * first `length mod worldSize` segments get one element more, so sizes differ by at most 1.
 */
export function segmentBounds(length: number, worldSize: number, segment: number): SegmentBounds {
  const base = Math.floor(length / worldSize);
  const remainder = length % worldSize;
  return {
    start: segment * base + Math.min(segment, remainder),
    length: base + (segment < remainder ? 1 : 0),
  };
}

/** One message of the schedule, as both its sender and its receiver see it. */
export interface ScheduledChunk {
  /** REDUCE_SCATTER or ALL_GATHER. */
  readonly phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER | CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER;
  /** Step within the phase, 0 .. n-2. */
  readonly ringStep: number;
  /** Ring segment the chunk belongs to. */
  readonly segment: number;
  /** Index of the chunk within its segment. */
  readonly chunkIndex: number;
  /** Offset of the chunk within the segment, in elements (the wire's `offset`). */
  readonly offset: number;
  /** First element of the chunk within the whole buffer. */
  readonly start: number;
  /** Elements in the chunk (> 0). */
  readonly length: number;
  /** Position among the sender's chunks of this phase of this collective (the wire's `sequence`). */
  readonly sequence: number;
}

/** The chunks of one segment, in order (`chunkIndex` is the chunk's place in it). */
export function* segmentChunks(
  length: number,
  worldSize: number,
  segment: number,
  chunkElements: number,
): Generator<{ chunkIndex: number; offset: number; start: number; length: number }> {
  const bounds = segmentBounds(length, worldSize, segment);
  for (let offset = 0, chunkIndex = 0; offset < bounds.length; offset += chunkElements, chunkIndex++) {
    yield { chunkIndex, offset, start: bounds.start + offset, length: Math.min(chunkElements, bounds.length - offset) };
  }
}

/**
 * Every chunk `rank` RECEIVES during one all-reduce, in the order they arrive on its
 * inbound stream. The order is total: the left neighbour sends all of reduce-scatter step
 * t before any of step t+1 (it forwards a step-t+1 chunk only after receiving the step-t
 * chunk it depends on, and sends step 0 up front), then all-gather likewise.
 */
export function* receiveSchedule(
  length: number,
  worldSize: number,
  rank: number,
  chunkElements: number,
): Generator<ScheduledChunk> {
  for (const phase of [CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER, CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER] as const) {
    let sequence = 0;
    for (let ringStep = 0; ringStep < worldSize - 1; ringStep++) {
      const segment =
        phase === CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER
          ? mod(rank - 1 - ringStep, worldSize)
          : mod(rank - ringStep, worldSize);
      for (const chunk of segmentChunks(length, worldSize, segment, chunkElements)) {
        yield { phase, ringStep, segment, sequence: sequence++, ...chunk };
      }
    }
  }
}

/**
 * The chunks `rank` sends in reduce-scatter step 0: its own segment, whole, before it has
 * received anything. Every later send forwards a chunk just received (see RingAllReduce).
 */
export function* initialSends(length: number, worldSize: number, rank: number, chunkElements: number): Generator<ScheduledChunk> {
  let sequence = 0;
  for (const chunk of segmentChunks(length, worldSize, rank, chunkElements)) {
    yield {
      phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER,
      ringStep: 0,
      segment: rank,
      sequence: sequence++,
      ...chunk,
    };
  }
}
