/**
 * @dinofleet/collective: the ring all-reduce between the ranks of one generation
 * (DESIGN.md step 3), over the `dinofleet.v1.Collective` Exchange stream.
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
  DEFAULT_ALL_REDUCE_TIMEOUT_MS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_STALL_TIMEOUT_MS,
  MAX_CHUNK_BYTES,
  RingAllReduce,
  resolveRingAllReduceConfig,
} from './ring-allreduce.ts';
export type { AllReduceStats, AllReduceTag, RingAllReduceConfig, RingAllReduceOptions } from './ring-allreduce.ts';
export {
  COLLECTIVE_EXCHANGE_DEFINITION,
  CollectiveExchangeClient,
  decodeExchangeRequest,
  encodeExchangeRequest,
} from './exchange-codec.ts';
export { segmentBounds } from './ring-schedule.ts';
export type { SegmentBounds } from './ring-schedule.ts';
