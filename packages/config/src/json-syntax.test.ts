import { describe, expect, it } from 'vitest';
import { jsonSyntaxErrorOffset } from './json-syntax.ts';

describe('jsonSyntaxErrorOffset', () => {
  it('finds nothing wrong with valid JSON', () => {
    for (const text of ['{}', '[]', ' {"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"]} ', '"s"', '0']) {
      expect(jsonSyntaxErrorOffset(text), text).toBeUndefined();
      expect(() => JSON.parse(text) as unknown).not.toThrow();
    }
  });

  it.each([
    ['{"a": }', 6],
    ['{"a": 1,}', 8],
    ['[1 2]', 3],
    ['{"a": 1', 7],
    ["{'a': 1}", 1],
    ['{"a": 01}', 7],
    ['{"a": 1} x', 9],
    ['{"a": "\u0001"}', 7],
  ])('%j goes wrong at offset %i', (text, offset) => {
    expect(jsonSyntaxErrorOffset(text)).toBe(offset);
    expect(() => JSON.parse(text) as unknown).toThrow(SyntaxError);
  });
});
