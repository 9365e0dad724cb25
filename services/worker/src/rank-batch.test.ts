import { describe, expect, it } from 'vitest';
import { rankBatch } from './step-loop.ts';

describe('rankBatch', () => {
  it('splits the global batch as the contract says: floor(B/W) + (r < B mod W), offsets in rank order', () => {
    expect([0, 1, 2].map((r) => rankBatch(8, 3, r))).toEqual([
      { offset: 0, size: 3 },
      { offset: 3, size: 3 },
      { offset: 6, size: 2 },
    ]);
    expect([0, 1].map((r) => rankBatch(5, 2, r))).toEqual([
      { offset: 0, size: 3 },
      { offset: 3, size: 2 },
    ]);
  });
});
