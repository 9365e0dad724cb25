/**
 * Helpers for this package's tests (not exported from index.ts): a ring of real
 * endpoints on 127.0.0.1:0 in one process, and reproducible float32 inputs.
 */
import { CollectiveEndpoint } from './collective-endpoint.ts';
import type { CollectiveEndpointOptions } from './collective-endpoint.ts';
import { RingAllReduce } from './ring-allreduce.ts';
import type { RingAllReduceOptions } from './allreduce-options.ts';

/** Ring settings a test may override. */
export type TestRingOptions = Partial<Omit<RingAllReduceOptions, 'endpoint' | 'rank' | 'peers'>>;

/** A started ring of `worldSize` ranks, closed by `await using`. */
export interface TestRing extends AsyncDisposable {
  readonly endpoints: CollectiveEndpoint[];
  readonly rings: RingAllReduce[];
  readonly peers: string[];
}

/**
 * Starts `worldSize` endpoints and builds one RingAllReduce per rank on them. `endpoint`
 * settings (e.g. `security`) apply to every rank; insecure by default.
 */
export async function startTestRing(
  worldSize: number,
  options: TestRingOptions = {},
  endpoint: Omit<CollectiveEndpointOptions, 'server'> = {},
): Promise<TestRing> {
  const endpoints = Array.from({ length: worldSize }, () => new CollectiveEndpoint({ unclaimedStreamTimeoutMs: 5_000, ...endpoint }));
  await Promise.all(endpoints.map((endpoint) => endpoint.start()));
  const peers = endpoints.map((endpoint) => endpoint.address);
  const rings = endpoints.map(
    (endpoint, rank) => new RingAllReduce({ job: 'test-job', generation: 1, ...options, endpoint, rank, peers }),
  );
  return {
    endpoints,
    rings,
    peers,
    async [Symbol.asyncDispose]() {
      await Promise.all(rings.map((ring) => ring.close()));
      await Promise.all(endpoints.map((endpoint) => endpoint.close()));
    },
  };
}

/**
 * `length` float32 values from a fixed-seed LCG, spread over several orders of magnitude
 * and both signs so rounding actually happens in the sums.
 */
export function testVector(length: number, seed: number): Float32Array {
  const values = new Float32Array(length);
  let state = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const unit = state / 2 ** 32; // [0, 1)
    values[i] = (unit - 0.5) * 10 ** ((i % 7) - 3);
  }
  return values;
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
