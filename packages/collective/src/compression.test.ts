import { InvalidArgumentError } from '@dinofleet/proto';
import { describe, expect, it } from 'vitest';
import {
  COMPRESSIONS,
  Compression,
  addBf16,
  addFp16,
  addInto,
  allReduceErrorBound,
  decodeBf16,
  decodeFp16,
  decodeInto,
  encodeBf16,
  encodeFp16,
  encodeInto,
  isCompression,
  quantizeInPlace,
  unitRoundoff,
  wireBytesPerElement,
} from './compression.ts';

type Wire = typeof Compression.Bf16 | typeof Compression.Fp16;
const WIRE: readonly Wire[] = [Compression.Bf16, Compression.Fp16];

/** The textbook binary16 decoder (IEEE 754 §3.4), independent of the table the module builds. */
function referenceFp16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

function referenceBf16(h: number): number {
  const f = new Float32Array(new Uint32Array([h << 16]).buffer);
  return f[0]!;
}

const reference = { bf16: referenceBf16, fp16: referenceFp16 } as const;
/** Code of +Inf, i.e. one past the largest positive finite code. */
const INF_CODE = { bf16: 0x7f80, fp16: 0x7c00 } as const;
/** Where +Inf sits for rounding purposes: the next power of two after the largest finite. */
const INF_POSITION = { bf16: 2 ** 128, fp16: 2 ** 16 } as const;

/** Position of a positive code on the number line, with Inf at INF_POSITION. */
function position(c: Wire, h: number): number {
  return h === INF_CODE[c] ? INF_POSITION[c] : reference[c](h);
}

/**
 * The code a correctly rounded (RNE) encoder must give for a finite float32 x: a binary
 * search over the positive codes (their values increase with the code), then the nearer
 * neighbour, the even code on a tie. 2|x| is compared with a + b, both exact in float64.
 */
function oracle(c: Wire, x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  let lo = 0;
  let hi: number = INF_CODE[c];
  if (a >= INF_POSITION[c]) return sign | INF_CODE[c];
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (position(c, mid) <= a) lo = mid;
    else hi = mid;
  }
  // Now position(lo) <= a < position(hi), hi = lo + 1.
  const twice = 2 * a;
  const sum = position(c, lo) + position(c, hi);
  const h = twice < sum ? lo : twice > sum ? hi : lo % 2 === 0 ? lo : hi;
  return sign | h;
}

function encode(c: Wire, xs: ArrayLike<number>): Uint16Array {
  const src = Float32Array.from(xs);
  const dst = new Uint16Array(src.length);
  encodeInto(c, src, 0, src.length, dst, 0);
  return dst;
}

function decode(c: Wire, hs: ArrayLike<number>): Float32Array {
  const src = Uint16Array.from(hs);
  const dst = new Float32Array(src.length);
  decodeInto(c, src, 0, src.length, dst, 0);
  return dst;
}

function allCodes(): Uint16Array {
  return Uint16Array.from({ length: 65536 }, (_, h) => h);
}

function isNaNCode(c: Wire, h: number): boolean {
  const inf = INF_CODE[c];
  return (h & inf) === inf && (h & (inf ^ 0x7fff)) !== 0;
}

/** Random float32s of magnitude under 2^maxExponent, exponents spread over 50 binades, both signs. */
function randomFloats(count: number, seed: number, maxExponent = 20): Float32Array {
  let state = seed;
  const next = (): number => {
    // xorshift32: deterministic, so a failure reproduces.
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  return Float32Array.from({ length: count }, () => (next() - 0.5) * 2 ** (Math.floor(next() * 50) - 50 + maxExponent));
}

describe('Compression', () => {
  it('lists the three modes and recognises them', () => {
    expect(COMPRESSIONS).toEqual(['none', 'bf16', 'fp16']);
    expect(COMPRESSIONS.every(isCompression)).toBe(true);
    expect(isCompression('fp32')).toBe(false);
    expect(isCompression(undefined)).toBe(false);
    expect(COMPRESSIONS.map(wireBytesPerElement)).toEqual([4, 2, 2]);
    expect(COMPRESSIONS.map(unitRoundoff)).toEqual([2 ** -24, 2 ** -8, 2 ** -11]);
  });
});

describe('fp16 decode', () => {
  it('matches the textbook decoder for all 65536 codes, signed zeros included', () => {
    const got = decode(Compression.Fp16, allCodes());
    let mismatches = 0;
    for (let h = 0; h < 65536; h++) {
      const want = referenceFp16(h);
      if (Number.isNaN(want) ? !Number.isNaN(got[h]) : !Object.is(got[h], want)) mismatches++;
    }
    expect(mismatches).toBe(0);
    expect(got[0x0001]).toBe(2 ** -24);
    expect(got[0x03ff]).toBe(1023 * 2 ** -24);
    expect(got[0x0400]).toBe(2 ** -14);
    expect(got[0x7bff]).toBe(65504);
    expect(got[0x3c00]).toBe(1);
    expect(Object.is(got[0x8000], -0)).toBe(true);
  });
});

describe.each(WIRE)('%s round trip', (c) => {
  it('encode(decode(h)) === h for every non-NaN code', () => {
    const codes = allCodes();
    const back = encode(c, decode(c, codes));
    let mismatches = 0;
    let nanCodes = 0;
    for (let h = 0; h < 65536; h++) {
      if (isNaNCode(c, h)) {
        nanCodes++;
        continue;
      }
      if (back[h] !== h) mismatches++;
    }
    expect(mismatches).toBe(0);
    expect(nanCodes).toBe(c === Compression.Fp16 ? 2 * 1023 : 2 * 127);
  });

  it('turns every NaN code into a quiet NaN of the same sign', () => {
    const nans = allCodes().filter((h) => isNaNCode(c, h));
    const back = encode(c, decode(c, nans));
    const quiet = c === Compression.Fp16 ? 0x0200 : 0x0040;
    for (let i = 0; i < nans.length; i++) {
      const h = back[i]!;
      expect(isNaNCode(c, h) && (h & quiet) !== 0 && (h & 0x8000) === (nans[i]! & 0x8000)).toBe(true);
    }
  });
});

describe.each(WIRE)('%s rounding', (c) => {
  it('sends every midpoint between neighbouring codes to the even code, and its float32 neighbours to the nearer code', () => {
    // Every positive finite code h and the next one (h + 1, Inf for the largest finite),
    // with the midpoint (exact in float32: both formats have at most 11 significant bits)
    // and the float32 values just below and above it; negated copies too.
    const count = INF_CODE[c];
    const mids = new Float32Array(count);
    for (let h = 0; h < count; h++) mids[h] = (position(c, h) + position(c, h + 1)) / 2;
    const bits = new Uint32Array(mids.buffer);
    const below = new Float32Array(new Uint32Array(bits.map((b) => b - 1)).buffer);
    const above = new Float32Array(new Uint32Array(bits.map((b) => b + 1)).buffer);
    const [atMid, atBelow, atAbove] = [mids, below, above].map((xs) => encode(c, xs));
    const [negMid] = [mids.map((x) => -x)].map((xs) => encode(c, xs));
    let wrong = 0;
    for (let h = 0; h < count; h++) {
      const even = h % 2 === 0 ? h : h + 1;
      if (mids[h] !== (position(c, h) + position(c, h + 1)) / 2) wrong++; // midpoint not exact
      if (atMid![h] !== even || negMid![h] !== (even | 0x8000)) wrong++;
      if (atBelow![h] !== h || atAbove![h] !== h + 1) wrong++;
    }
    expect(wrong).toBe(0);
  });

  it('agrees with the oracle on 20000 random float32 values and keeps the error within u·|x|', () => {
    const xs = randomFloats(20_000, c === Compression.Fp16 ? 7 : 11);
    const codes = encode(c, xs);
    const back = decode(c, codes);
    const u = unitRoundoff(c);
    let disagreements = 0;
    let overBound = 0;
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i]!;
      if (codes[i] !== oracle(c, x)) disagreements++;
      // fp16 below 2^-14 rounds on a fixed grid of 2^-24: half a step absolute on top.
      const allowance = u * Math.abs(x) + (c === Compression.Fp16 ? 2 ** -25 : 0);
      if (Math.abs(x) < 65504 && Math.abs(back[i]! - x) > allowance) overBound++;
    }
    expect(disagreements).toBe(0);
    expect(overBound).toBe(0);
  });

  it('keeps signed zeros, infinities and NaN', () => {
    const got = encode(c, [0, -0, Infinity, -Infinity, NaN, -NaN]);
    const inf = INF_CODE[c];
    expect(Array.from(got.subarray(0, 4))).toEqual([0, 0x8000, inf, inf | 0x8000]);
    expect(isNaNCode(c, got[4]!)).toBe(true);
    const back = decode(c, got);
    expect(Object.is(back[1], -0)).toBe(true);
    expect(back[2]).toBe(Infinity);
    expect(back[3]).toBe(-Infinity);
    expect(Number.isNaN(back[4])).toBe(true);
  });
});

describe('overflow and underflow', () => {
  it('fp16: 65504 stays, 65519.99 rounds down, 65520 and above become Inf', () => {
    const below65520 = new Float32Array(new Uint32Array([0x477fefff]).buffer)[0]!; // largest float32 < 65520
    const got = encode(Compression.Fp16, [65504, below65520, 65520, -65520, 1e5, 3e38, -3e38]);
    expect(Array.from(got)).toEqual([0x7bff, 0x7bff, 0x7c00, 0xfc00, 0x7c00, 0x7c00, 0xfc00]);
  });

  it('fp16: subnormals down to 2^-24, values at or under 2^-25 to signed zero', () => {
    const justAbove = new Float32Array(new Uint32Array([0x33000001]).buffer)[0]!; // 2^-25 (1 + 2^-23)
    const step = 2 ** -24;
    const got = encode(Compression.Fp16, [
      step,
      step / 2,
      -step / 2,
      justAbove,
      1.5 * step,
      2.5 * step,
      1e-30,
      -1e-45,
      2 ** -14 - step / 2,
    ]);
    // 1.5 and 2.5 steps are ties: to the even 2 steps. 2^-14 - half a step ties to 0x400 (even).
    expect(Array.from(got)).toEqual([0x0001, 0x0000, 0x8000, 0x0001, 0x0002, 0x0002, 0x0000, 0x8000, 0x0400]);
  });

  it('bf16: keeps float32 range; the largest float32 values round to Inf', () => {
    const maxFloat32 = new Float32Array(new Uint32Array([0x7f7fffff]).buffer)[0]!;
    const maxBf16 = referenceBf16(0x7f7f);
    const got = encode(Compression.Bf16, [maxFloat32, -maxFloat32, maxBf16, 1e38, 1e-40, 2 ** -149]);
    expect(Array.from(got.subarray(0, 3))).toEqual([0x7f80, 0xff80, 0x7f7f]);
    expect(referenceBf16(got[3]!) / 1e38).toBeCloseTo(1, 2);
    expect(got[4]).toBe(oracle(Compression.Bf16, Math.fround(1e-40)));
    expect(got[5]).toBe(0); // the smallest float32 subnormal: low half 1 < 0x8000
  });
});

describe.each(WIRE)('%s add', (c) => {
  it('adds with exactly one float32 rounding per element', () => {
    const xs = randomFloats(5000, 3);
    const codes = encode(c, randomFloats(5000, 5));
    const decoded = decode(c, codes);
    const dst = Float32Array.from(xs);
    addInto(c, codes, 0, codes.length, dst, 0);
    let wrong = 0;
    for (let i = 0; i < xs.length; i++) if (dst[i] !== Math.fround(xs[i]! + decoded[i]!)) wrong++;
    expect(wrong).toBe(0);
    // The direct export is the same function.
    const again = Float32Array.from(xs);
    (c === Compression.Bf16 ? addBf16 : addFp16)(codes, 0, codes.length, again, 0);
    expect(again).toEqual(dst);
  });
});

describe.each(WIRE)('%s spans and views', (c) => {
  it('honours srcStart, dstStart, odd lengths and views with a non-zero byteOffset', () => {
    const values = randomFloats(37, 13);
    // Float32 view at byte 12 of its buffer; Uint16 view at byte 6 (2-aligned only).
    const src = new Float32Array(new ArrayBuffer(4 * 60), 12, 45);
    src.set(values, 5);
    const wire = new Uint16Array(new ArrayBuffer(2 * 70), 6, 60);
    wire.fill(0xabcd);
    encodeInto(c, src, 5, 37, wire, 9);
    expect(Array.from(wire.subarray(9, 46))).toEqual(Array.from(encode(c, values)));
    expect(wire[8]).toBe(0xabcd);
    expect(wire[46]).toBe(0xabcd);

    const out = new Float32Array(new ArrayBuffer(4 * 50), 8, 41);
    out.fill(-7);
    decodeInto(c, wire, 9, 37, out, 3);
    expect(Array.from(out.subarray(3, 40))).toEqual(Array.from(decode(c, encode(c, values))));
    expect([out[2], out[40]]).toEqual([-7, -7]);

    addInto(c, wire, 9, 37, out, 3);
    expect(Array.from(out.subarray(3, 40))).toEqual(Array.from(decode(c, encode(c, values)), (v) => Math.fround(2 * v)));
    expect([out[2], out[40]]).toEqual([-7, -7]);

    const direct = new Uint16Array(37);
    (c === Compression.Bf16 ? encodeBf16 : encodeFp16)(src, 5, 37, direct, 0);
    expect(Array.from(direct)).toEqual(Array.from(wire.subarray(9, 46)));
    const directOut = new Float32Array(37);
    (c === Compression.Bf16 ? decodeBf16 : decodeFp16)(wire, 9, 37, directOut, 0);
    expect(Array.from(directOut)).toEqual(Array.from(decode(c, encode(c, values))));
  });

  it('rejects spans outside the arrays', () => {
    const f = new Float32Array(8);
    const h = new Uint16Array(8);
    expect(() => encodeInto(c, f, 4, 5, h, 0)).toThrow(InvalidArgumentError);
    expect(() => encodeInto(c, f, 0, 5, h, 4)).toThrow(/dstStart/);
    expect(() => decodeInto(c, h, -1, 2, f, 0)).toThrow(/srcStart/);
    expect(() => addInto(c, h, 0, 1.5, f, 0)).toThrow(/length/);
    expect(() => quantizeInPlace(c, f, 6, 3)).toThrow(InvalidArgumentError);
  });
});

describe('quantizeInPlace', () => {
  it.each(WIRE)('%s: gives the bits every rank decodes, NaN and Inf included', (c) => {
    const xs = Float32Array.from([...randomFloats(1001, 17), NaN, Infinity, -0, 70000, 1e-9]);
    const want = decode(c, encode(c, xs));
    const got = Float32Array.from(xs);
    quantizeInPlace(c, got, 0, got.length);
    expect(new Uint32Array(got.buffer)).toEqual(new Uint32Array(want.buffer));
    // Only the span changes.
    const partial = Float32Array.from(xs);
    quantizeInPlace(c, partial, 10, 20);
    expect(Array.from(partial.subarray(0, 10))).toEqual(Array.from(xs.subarray(0, 10)));
    expect(Array.from(partial.subarray(10, 30))).toEqual(Array.from(want.subarray(10, 30)));
    expect(Array.from(partial.subarray(30, 40))).toEqual(Array.from(xs.subarray(30, 40)));
  });

  it("is a no-op for 'none', for which the wire codecs refuse", () => {
    const xs = Float32Array.from([0.1, 1e-30, 7]);
    quantizeInPlace(Compression.None, xs, 0, 3);
    expect(Array.from(xs)).toEqual([Math.fround(0.1), Math.fround(1e-30), 7]);
    expect(() => encodeInto(Compression.None, xs, 0, 1, new Uint16Array(1), 0)).toThrow(InvalidArgumentError);
    expect(() => decodeInto(Compression.None, new Uint16Array(1), 0, 1, xs, 0)).toThrow(/bf16 or fp16/);
    expect(() => addInto(Compression.None, new Uint16Array(1), 0, 1, xs, 0)).toThrow(InvalidArgumentError);
  });
});

describe('allReduceErrorBound', () => {
  it('has the documented terms', () => {
    expect(allReduceErrorBound(1, Compression.None)).toEqual({ relative: 0, absolute: 0 });
    expect(allReduceErrorBound(4, Compression.None)).toEqual({ relative: 3 * 2 ** -24, absolute: 0 });
    expect(allReduceErrorBound(4, Compression.Bf16)).toEqual({ relative: 3 * 2 ** -24 + 4 * 2 ** -8, absolute: 0 });
    expect(allReduceErrorBound(4, Compression.Fp16)).toEqual({ relative: 3 * 2 ** -24 + 4 * 2 ** -11, absolute: 4 * 2 ** -25 });
    expect(() => allReduceErrorBound(0, Compression.None)).toThrow(/worldSize/);
  });

  it.each(COMPRESSIONS)('%s: holds for a simulated compressed ring of 8 ranks', (c) => {
    // Each element's path through the ring: the partial sum goes over the wire (encode,
    // decode + add on the receiver) n - 1 times, then the owner quantizes for the
    // all-gather. Values mix magnitudes (fp16 subnormals, cancellation); all sums stay
    // under fp16's 65504.
    const n = 8;
    const length = 4000;
    const inputs = Array.from({ length: n }, (_, r) => randomFloats(length, 100 + r, 12));
    const partial = Float32Array.from(inputs[0]!);
    const wire = new Uint16Array(length);
    for (let r = 1; r < n; r++) {
      const next = Float32Array.from(inputs[r]!);
      if (c === Compression.None) {
        for (let i = 0; i < length; i++) next[i] = next[i]! + partial[i]!;
      } else {
        encodeInto(c, partial, 0, length, wire, 0);
        addInto(c, wire, 0, length, next, 0);
      }
      partial.set(next);
    }
    quantizeInPlace(c, partial, 0, length);
    const { relative, absolute } = allReduceErrorBound(n, c);
    let worstRatio = 0;
    for (let i = 0; i < length; i++) {
      let exact = 0;
      let magnitude = 0;
      for (let r = 0; r < n; r++) {
        exact += inputs[r]![i]!;
        magnitude += Math.abs(inputs[r]![i]!);
      }
      worstRatio = Math.max(worstRatio, Math.abs(partial[i]! - exact) / (relative * magnitude + absolute || 1));
    }
    expect(worstRatio).toBeLessThanOrEqual(1);
    if (c !== Compression.None) expect(worstRatio).toBeGreaterThan(0.01); // the bound is not vacuous
  });
});
