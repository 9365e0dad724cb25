import { Rng } from '@dinofleet/dino/augment';

/**
 * The order in which a shuffle window of `size` samples is handed out: a seeded
 * Fisher-Yates permutation of `0 … size − 1`. The same (size, seed) always gives the same
 * order, which is what lets a cursor store only (window start, samples consumed).
 * @param seed a 32-bit seed, e.g. a hash of (job seed, epoch, shard, window start).
 */
export function windowPermutation(size: number, seed: number): Uint32Array {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`window size must be a non-negative integer, got ${size}`);
  const order = new Uint32Array(size);
  for (let i = 0; i < size; i++) order[i] = i;
  const rng = new Rng(seed >>> 0);
  for (let i = size - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = order[i] as number;
    order[i] = order[j] as number;
    order[j] = t;
  }
  return order;
}
