/**
 * The all-reduce bench's inputs: element i of rank r is a pseudo-random float32 in
 * [−1, 1) computed from (r, i) alone, so any rank can regenerate any other rank's input
 * to check its result. mpi/allreduce.c computes the same values.
 */

/** murmur3's 32-bit finalizer (MurmurHash3 fmix32, Austin Appleby): a cheap bijective mix. */
function fmix32(value: number): number {
  let h = value >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Per-rank seed, mixed so that neighbouring ranks' streams are unrelated. */
function rankSeed(rank: number): number {
  return fmix32(Math.imul(rank + 1, 0x9e3779b9));
}

function valueFromSeed(seed: number, index: number): number {
  // The top 24 bits as a signed multiple of 2^−23: exactly representable in float32, so
  // the float64 reference sums the very values the ranks hold.
  return ((fmix32(index ^ seed) >>> 8) - 0x800000) * 2 ** -23;
}

/** Element `index` of rank `rank`'s input, in [−1, 1). */
export function inputValue(rank: number, index: number): number {
  return valueFromSeed(rankSeed(rank), index);
}

/** Fills `out` with rank `rank`'s input. */
export function fillRankInput(rank: number, out: Float32Array): void {
  const seed = rankSeed(rank);
  for (let i = 0; i < out.length; i++) out[i] = valueFromSeed(seed, i);
}
