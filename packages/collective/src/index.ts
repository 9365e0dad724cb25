/**
 * @dinofleet/collective: the all-reduce between the ranks of one generation (DESIGN.md
 * step 3; docs/collective.md): ring and recursive doubling over raw TCP data links opened
 * through the `dinofleet.v1.Collective` gRPC service (or the ring over its Exchange
 * streams), optional bf16/fp16 wire compression, and tensor fusion into buckets.
 *
 * A worker creates one {@link CollectiveEndpoint} for its life (on its own server or a
 * shared one) and one {@link RingAllReduce} per generation on it.
 */
export {
  CollectiveEndpoint,
  DEFAULT_UNCLAIMED_STREAM_TIMEOUT_MS,
} from './collective-endpoint.ts';
export type { CollectiveEndpointOptions, InboundExchangeStream, InboundStreamSink } from './collective-endpoint.ts';
export {
  AllReduceAlgorithm,
  DEFAULT_ALL_REDUCE_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_DIRECT_MAX_RANKS,
  DEFAULT_LINK_PROBE_BYTES,
  DEFAULT_SMALL_MESSAGE_BYTES,
  DEFAULT_STALL_TIMEOUT_MS,
  MAX_CHUNK_BYTES,
  MAX_SMALL_MESSAGE_BYTES,
  Transport,
  resolveRingAllReduceConfig,
} from './allreduce-options.ts';
export type {
  AllReduceStats,
  AllReduceTag,
  LinkBandwidth,
  RingAllReduceConfig,
  RingAllReduceOptions,
} from './allreduce-options.ts';
export { RingAllReduce } from './ring-allreduce.ts';
export {
  COMPRESSIONS,
  Compression,
  allReduceErrorBound,
  isCompression,
  quantizeInPlace,
  unitRoundoff,
  wireBytesPerElement,
} from './compression.ts';
export type { AllReduceErrorBound } from './compression.ts';
export { DEFAULT_FUSION_BUCKET_BYTES, allReduceFused, planFusionBuckets } from './tensor-fusion.ts';
export type {
  BucketReduce,
  FusedAllReduceOptions,
  FusedAllReduceResult,
  FusedAllReduceStats,
  FusedPart,
  FusionBucket,
  FusionPiece,
} from './tensor-fusion.ts';
export { DATA_LINK_TOKEN_TTL_MS } from './data-listener.ts';
export type { DataLinkRefusal } from './data-listener.ts';
export {
  COLLECTIVE_EXCHANGE_DEFINITION,
  CollectiveExchangeClient,
  decodeExchangeRequest,
  encodeExchangeRequest,
} from './exchange-codec.ts';
export { segmentBounds } from './ring-schedule.ts';
export type { SegmentBounds } from './ring-schedule.ts';
