import { describe, expect, it } from 'vitest';
import { flowNestingDepth } from './nesting-depth.ts';

describe('flowNestingDepth', () => {
  it.each([
    ['a: 1', 0],
    ['{"a": [1, {"b": []}]}', 4],
    ['a: [1, [2]]\nb: {c: [3]}', 2],
    ['a: "[[[[" # [[[[\nb: \'{{\'', 0],
    ['a: "\\"[["', 0],
    ['[[[]]] [[]]', 3],
  ])('%j nests %i deep', (text, depth) => {
    expect(flowNestingDepth(text)).toBe(depth);
  });
});
