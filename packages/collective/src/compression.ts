/**
 * Payload compression for the all-reduce: 16-bit floats on the wire, float32 accumulation
 * ("mixed-precision communication", as in Horovod's `Compression.fp16` and PyTorch DDP's
 * `bf16_compress_hook`). Halves the bytes per hop; each rank still adds in float32.
 *
 * All codecs are integer bit manipulation over an `Int32Array` view of the float32 data,
 * with round to nearest, ties to even (RNE), the IEEE 754 default, so every rank that
 * encodes the same float32 bits sends the same 16 bits. No allocation per element: a call
 * makes two typed-array views (of its source and destination spans); the 65536-entry
 * decode tables (256 KiB each) are built on first use.
 */
import { InvalidArgumentError } from '@dinofleet/proto';

/** How the all-reduce encodes float32 payloads on the wire. */
export const Compression = {
  /** float32 as is: 4 bytes per element, exact. */
  None: 'none',
  /**
   * bfloat16: float32's sign and 8-bit exponent with 7 mantissa bits. Same range as
   * float32 (no overflow, no extra underflow), relative rounding error ≤ 2^-8.
   */
  Bf16: 'bf16',
  /**
   * IEEE 754 binary16: 5-bit exponent, 10 mantissa bits. Relative rounding error ≤ 2^-11
   * for |x| in [2^-14, 65504]; subnormals down to 2^-24 below that; |x| ≥ 65520 becomes ±Inf.
   */
  Fp16: 'fp16',
} as const;
/** One of the {@link Compression} values. */
export type Compression = (typeof Compression)[keyof typeof Compression];

/** Every {@link Compression}, in declaration order. */
export const COMPRESSIONS: readonly Compression[] = Object.values(Compression);

/** Whether `x` is one of the {@link Compression} strings. */
export function isCompression(x: unknown): x is Compression {
  return typeof x === 'string' && (COMPRESSIONS as readonly string[]).includes(x);
}

/** Bytes one float32 element takes on the wire under `c`: 4 for 'none', 2 otherwise. */
export function wireBytesPerElement(c: Compression): 4 | 2 {
  switch (c) {
    case Compression.None:
      return 4;
    case Compression.Bf16:
    case Compression.Fp16:
      return 2;
  }
}

/**
 * Unit roundoff u of `c` (half the distance from 1 to the next representable number):
 * 2^-24 for 'none' (float32), 2^-8 for 'bf16', 2^-11 for 'fp16'. A normal-range value x
 * rounds to x(1 + δ) with |δ| ≤ u.
 */
export function unitRoundoff(c: Compression): number {
  switch (c) {
    case Compression.None:
      return 2 ** -24;
    case Compression.Bf16:
      return 2 ** -8;
    case Compression.Fp16:
      return 2 ** -11;
  }
}

/** Bound returned by {@link allReduceErrorBound}. */
export interface AllReduceErrorBound {
  /** Multiplies Σ_r |x_r| (the sum of the inputs' magnitudes), dimensionless. */
  readonly relative: number;
  /** Added on top, in the data's own units (0 unless fp16 subnormals can occur). */
  readonly absolute: number;
}

/**
 * A first-order bound on the error of one element of a ring all-reduce sum over
 * `worldSize` ranks with payload compression `c`:
 *
 *   |result − Σ_r x_r| ≤ relative · Σ_r |x_r| + absolute
 *
 * with relative = (n−1)·2^-24 + (c = 'none' ? 0 : n·u(c)) and
 * absolute = (c = 'fp16' ? n·2^-25 : 0), where n = worldSize and u = {@link unitRoundoff}.
 *
 * Derivation (the standard recursive-summation bound, Higham, "Accuracy and Stability of
 * Numerical Algorithms", §4.2): the ring adds each element n−1 times in float32, each
 * addition rounding its partial sum s_k by a factor (1 + δ), |δ| ≤ 2^-24, and every partial
 * sum is at most Σ|x_r|, which gives the (n−1)·2^-24 term. With compression the partial
 * sum is also rounded to 16 bits before each of the n−1 reduce-scatter hops and once more
 * for the all-gather (the owner quantizes its result so that all ranks hold the same
 * bits): n roundings of relative size ≤ u(c) each. fp16 rounds numbers below 2^-14 on a
 * fixed grid of step 2^-24, so each of those n roundings may add half a step, 2^-25, in
 * absolute terms. Products of δs (second order, ≤ n²u² relative) are left out.
 *
 * Range: fp16 overflows to ±Inf for partial sums of magnitude ≥ 65520 (largest finite
 * 65504); the trainer's non-finite gradient check catches that and skips the step. bf16
 * keeps float32's exponent range, so it overflows only where float32 would.
 *
 * @param worldSize ranks in the ring, integer ≥ 1.
 */
export function allReduceErrorBound(worldSize: number, c: Compression): AllReduceErrorBound {
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) {
    throw new InvalidArgumentError(`worldSize must be an integer >= 1, got ${worldSize}`);
  }
  const n = worldSize;
  return {
    relative: (n - 1) * 2 ** -24 + (c === Compression.None ? 0 : n * unitRoundoff(c)),
    absolute: c === Compression.Fp16 ? n * 2 ** -25 : 0,
  };
}

// ---------------------------------------------------------------------------------------
// Range checks and views

function checkSpan(field: string, array: { length: number }, start: number, length: number): void {
  if (!Number.isSafeInteger(start) || start < 0 || start + length > array.length) {
    throw new InvalidArgumentError(
      `${field} must be an integer in 0..${array.length - length} for ${length} elements of ${array.length}, got ${start}`,
    );
  }
}

function checkSpans(
  src: { length: number },
  srcStart: number,
  length: number,
  dst: { length: number },
  dstStart: number,
): void {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new InvalidArgumentError(`length must be an integer >= 0, got ${length}`);
  }
  checkSpan('srcStart', src, srcStart, length);
  checkSpan('dstStart', dst, dstStart, length);
}

/**
 * The float32 bits of `a[start..start+length)`, as a view (a Float32Array's byteOffset is
 * always 4-aligned). Int32 rather than Uint32 so V8 keeps every value in a machine integer.
 */
function bitsOf(a: Float32Array, start: number, length: number): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset + start * 4, length);
}

// Every hot loop below indexes views from 0 to their own length (V8 compiles that tighter
// than `array[start + i]`) and is unrolled by 4 with the per-element work in a small
// function V8 inlines: the loop overhead, not the bit arithmetic, dominated the plain
// loops (measured on Node 20: encodeBf16 2.1 → 1.2 ns per element, addBf16 2.6 → 1.2).

// ---------------------------------------------------------------------------------------
// bfloat16

/** bfloat16 code of the float32 with bits `u` (as an int32), RNE. */
function bf16Code(u: number): number {
  // RNE on the top 16 bits: add 0x7fff plus the kept LSB, so an exact tie (low half
  // 0x8000) carries only when the kept part is odd. A carry out of the mantissa bumps the
  // exponent, which is the right result (and turns the largest finite values into Inf).
  // NaN must skip this: its payload could carry into the exponent or the sign.
  return (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x0040 : (u + 0x7fff + ((u >> 16) & 1)) >>> 16;
}

/**
 * Encodes `length` float32 values `src[srcStart..]` as bfloat16 codes into
 * `dst[dstStart..]`, rounding to nearest, ties to even. ±Inf stays ±Inf; values that round
 * past the largest finite bfloat16 (≈ 3.39e38) become ±Inf; NaN becomes a quiet NaN with the
 * same sign; ±0 and float32 subnormals keep their sign (subnormals round like any value).
 * Throws InvalidArgumentError when a span falls outside its array.
 */
export function encodeBf16(src: Float32Array, srcStart: number, length: number, dst: Uint16Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  const bits = bitsOf(src, srcStart, length);
  const out = dst.subarray(dstStart, dstStart + length);
  const n = bits.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    out[i] = bf16Code(bits[i]!);
    out[i + 1] = bf16Code(bits[i + 1]!);
    out[i + 2] = bf16Code(bits[i + 2]!);
    out[i + 3] = bf16Code(bits[i + 3]!);
  }
  for (; i < n; i++) out[i] = bf16Code(bits[i]!);
}

/** Decodes `length` bfloat16 codes `src[srcStart..]` into float32 `dst[dstStart..]` (exact). */
export function decodeBf16(src: Uint16Array, srcStart: number, length: number, dst: Float32Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  const codes = src.subarray(srcStart, srcStart + length);
  const bits = bitsOf(dst, dstStart, length);
  const n = codes.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    bits[i] = codes[i]! << 16;
    bits[i + 1] = codes[i + 1]! << 16;
    bits[i + 2] = codes[i + 2]! << 16;
    bits[i + 3] = codes[i + 3]! << 16;
  }
  for (; i < n; i++) bits[i] = codes[i]! << 16;
}

/**
 * Adds `length` bfloat16 values `src[srcStart..]` into float32 `dst[dstStart..]`:
 * `dst[i] = fround(dst[i] + decoded)`, one float32 rounding per element.
 */
export function addBf16(src: Uint16Array, srcStart: number, length: number, dst: Float32Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  // The float value of a code needs a trip through memory (JS has no bit casts); the
  // 65536-entry table is that trip done once (faster than decoding blocks into a scratch).
  addDecoded(bf16Table().values, src, srcStart, length, dst, dstStart);
}

/**
 * `dst[i] = dst[i] + values[code]` over the spans. A double sum of two float32s, rounded
 * once to float32 on store, is the correctly rounded float32 sum (53 >= 2*24 + 2).
 */
function addDecoded(
  values: Float32Array,
  src: Uint16Array,
  srcStart: number,
  length: number,
  dst: Float32Array,
  dstStart: number,
): void {
  const codes = src.subarray(srcStart, srcStart + length);
  const out = dst.subarray(dstStart, dstStart + length);
  const n = codes.length;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    out[i] = out[i]! + values[codes[i]!]!;
    out[i + 1] = out[i + 1]! + values[codes[i + 1]!]!;
    out[i + 2] = out[i + 2]! + values[codes[i + 2]!]!;
    out[i + 3] = out[i + 3]! + values[codes[i + 3]!]!;
    out[i + 4] = out[i + 4]! + values[codes[i + 4]!]!;
    out[i + 5] = out[i + 5]! + values[codes[i + 5]!]!;
    out[i + 6] = out[i + 6]! + values[codes[i + 6]!]!;
    out[i + 7] = out[i + 7]! + values[codes[i + 7]!]!;
  }
  for (; i < n; i++) out[i] = out[i]! + values[codes[i]!]!;
}

/** `bits[i] = table[codes[i]]` over the spans: a decode by look-up, bit-exact. */
function decodeByTable(
  table: Int32Array,
  src: Uint16Array,
  srcStart: number,
  length: number,
  dst: Float32Array,
  dstStart: number,
): void {
  const codes = src.subarray(srcStart, srcStart + length);
  const bits = bitsOf(dst, dstStart, length);
  const n = codes.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    bits[i] = table[codes[i]!]!;
    bits[i + 1] = table[codes[i + 1]!]!;
    bits[i + 2] = table[codes[i + 2]!]!;
    bits[i + 3] = table[codes[i + 3]!]!;
  }
  for (; i < n; i++) bits[i] = table[codes[i]!]!;
}

// ---------------------------------------------------------------------------------------
// IEEE binary16

/**
 * Encoder tables over the 9-bit sign+exponent of a float32 (index u >>> 23): the fp16
 * code of the smallest value with that sign and exponent before rounding (`base`), and
 * how far right to shift the 24-bit significand (`shift`), so that
 * code = base + RNE(significand >> shift), with the carry of the rounding running into
 * the exponent field (and into Inf above 65504). This is the base/shift table scheme of
 * van der Zijp, "Fast Half Float Conversions" (2008), with the rounding it leaves out.
 */
const FP16_BASE = new Uint16Array(512);
const FP16_SHIFT = new Uint8Array(512);
/** (1 << (shift - 1)) - 1: the round-half-down bias; adding the kept LSB makes it RNE. */
const FP16_BIAS = new Int32Array(512);
for (let i = 0; i < 256; i++) {
  const e = i - 127; // unbiased float32 exponent (e = -127: zero / float32 subnormal)
  let base: number;
  let shift: number;
  if (e < -25) {
    // Below 2^-25, half the smallest subnormal: rounds to ±0. A shift of 25 leaves nothing
    // of a 24-bit significand even after adding the bias.
    base = 0;
    shift = 25;
  } else if (e < -14) {
    // fp16 subnormal: code = value · 2^24 = significand · 2^(e + 1), a right shift by
    // -e - 1 (14..24). Exactly 2^-25 is a tie between 0 and 2^-24 and goes to 0 (even);
    // rounding up from 1023 gives 0x400, the smallest normal.
    base = 0;
    shift = -e - 1;
  } else if (e <= 15) {
    // Normal: the significand's implicit bit (0x400 after the shift) adds one to the
    // exponent field, so the base holds biased exponent e + 15 - 1.
    base = (e + 14) << 10;
    shift = 13;
  } else {
    // ≥ 65536, Inf, NaN: Inf (fp16Code turns NaN into a quiet NaN).
    base = 0x7c00;
    shift = 25;
  }
  FP16_BASE[i] = base;
  FP16_BASE[i | 0x100] = base | 0x8000;
  FP16_SHIFT[i] = FP16_SHIFT[i | 0x100] = shift;
  FP16_BIAS[i] = FP16_BIAS[i | 0x100] = 2 ** (shift - 1) - 1;
}

/** binary16 code of the float32 with bits `u` (as an int32), RNE; tables passed for speed. */
function fp16Code(u: number, base: Uint16Array, shift: Uint8Array, bias: Int32Array): number {
  const k = u >>> 23;
  const s = shift[k]!;
  const m = (u & 0x7fffff) | 0x800000;
  // RNE as in bf16Code: bias (half - 1) plus the kept LSB. NaN: for |u| > 0x7f800000 the
  // difference is negative, and its bit 31 sets the quiet bit 0x200 on 0x7c00 (branch-free).
  return (base[k]! + ((m + bias[k]! + ((m >>> s) & 1)) >>> s)) | (((0x7f800000 - (u & 0x7fffffff)) >>> 31) << 9);
}

/**
 * Encodes `length` float32 values `src[srcStart..]` as IEEE binary16 codes into
 * `dst[dstStart..]`, rounding to nearest, ties to even: |x| ≥ 65520 becomes ±Inf,
 * |x| < 2^-14 goes to subnormals (step 2^-24), |x| ≤ 2^-25 to ±0, NaN to a quiet NaN with
 * the same sign; signed zeros are kept. Throws InvalidArgumentError when a span falls
 * outside its array.
 */
export function encodeFp16(src: Float32Array, srcStart: number, length: number, dst: Uint16Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  const bits = bitsOf(src, srcStart, length);
  const out = dst.subarray(dstStart, dstStart + length);
  const base = FP16_BASE;
  const shift = FP16_SHIFT;
  const bias = FP16_BIAS;
  const n = bits.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    out[i] = fp16Code(bits[i]!, base, shift, bias);
    out[i + 1] = fp16Code(bits[i + 1]!, base, shift, bias);
    out[i + 2] = fp16Code(bits[i + 2]!, base, shift, bias);
    out[i + 3] = fp16Code(bits[i + 3]!, base, shift, bias);
  }
  for (; i < n; i++) out[i] = fp16Code(bits[i]!, base, shift, bias);
}

interface DecodeTable {
  /** float32 bits of every 16-bit code (exact, NaN payloads included). */
  readonly bits: Int32Array;
  /** The same table as float32 values, over the same memory. */
  readonly values: Float32Array;
}

let fp16TableCache: DecodeTable | undefined;
let bf16TableCache: DecodeTable | undefined;

/** The 65536-entry binary16 → float32 table (256 KiB), built on first use. */
function fp16Table(): DecodeTable {
  if (fp16TableCache !== undefined) return fp16TableCache;
  const bits = new Int32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exponent = (h >>> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    let u: number;
    if (exponent === 0x1f) {
      u = sign | 0x7f800000 | (mantissa << 13); // Inf, NaN (payload kept)
    } else if (exponent !== 0) {
      u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa === 0) {
      u = sign;
    } else {
      // Subnormal mantissa · 2^-24: normalise so the leading 1 becomes the implicit bit.
      const lead = 31 - Math.clz32(mantissa); // 0..9
      u = sign | ((lead + 103) << 23) | ((mantissa << (23 - lead)) & 0x7fffff);
    }
    bits[h] = u;
  }
  fp16TableCache = { bits, values: new Float32Array(bits.buffer) };
  return fp16TableCache;
}

/** The 65536-entry bfloat16 → float32 table (256 KiB), built on first use. */
function bf16Table(): DecodeTable {
  if (bf16TableCache !== undefined) return bf16TableCache;
  const bits = new Int32Array(65536);
  for (let h = 0; h < 65536; h++) bits[h] = h << 16;
  bf16TableCache = { bits, values: new Float32Array(bits.buffer) };
  return bf16TableCache;
}

/** Decodes `length` binary16 codes `src[srcStart..]` into float32 `dst[dstStart..]` (exact). */
export function decodeFp16(src: Uint16Array, srcStart: number, length: number, dst: Float32Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  decodeByTable(fp16Table().bits, src, srcStart, length, dst, dstStart);
}

/**
 * Adds `length` binary16 values `src[srcStart..]` into float32 `dst[dstStart..]`:
 * `dst[i] = fround(dst[i] + decoded)`, one float32 rounding per element.
 */
export function addFp16(src: Uint16Array, srcStart: number, length: number, dst: Float32Array, dstStart: number): void {
  checkSpans(src, srcStart, length, dst, dstStart);
  addDecoded(fp16Table().values, src, srcStart, length, dst, dstStart);
}

// ---------------------------------------------------------------------------------------
// Dispatch by Compression

function noWireCodec(c: Compression, what: string): never {
  throw new InvalidArgumentError(`${what} needs a 16-bit compression (bf16 or fp16), got '${c}'`);
}

/**
 * {@link encodeBf16} or {@link encodeFp16} by `c`. Throws InvalidArgumentError for 'none'
 * (float32 payloads are sent as they are).
 */
export function encodeInto(
  c: Compression,
  src: Float32Array,
  srcStart: number,
  length: number,
  dst: Uint16Array,
  dstStart: number,
): void {
  switch (c) {
    case Compression.Bf16:
      return encodeBf16(src, srcStart, length, dst, dstStart);
    case Compression.Fp16:
      return encodeFp16(src, srcStart, length, dst, dstStart);
    case Compression.None:
      return noWireCodec(c, 'encodeInto');
  }
}

/** {@link decodeBf16} or {@link decodeFp16} by `c`. Throws InvalidArgumentError for 'none'. */
export function decodeInto(
  c: Compression,
  src: Uint16Array,
  srcStart: number,
  length: number,
  dst: Float32Array,
  dstStart: number,
): void {
  switch (c) {
    case Compression.Bf16:
      return decodeBf16(src, srcStart, length, dst, dstStart);
    case Compression.Fp16:
      return decodeFp16(src, srcStart, length, dst, dstStart);
    case Compression.None:
      return noWireCodec(c, 'decodeInto');
  }
}

/** {@link addBf16} or {@link addFp16} by `c`. Throws InvalidArgumentError for 'none'. */
export function addInto(
  c: Compression,
  src: Uint16Array,
  srcStart: number,
  length: number,
  dst: Float32Array,
  dstStart: number,
): void {
  switch (c) {
    case Compression.Bf16:
      return addBf16(src, srcStart, length, dst, dstStart);
    case Compression.Fp16:
      return addFp16(src, srcStart, length, dst, dstStart);
    case Compression.None:
      return noWireCodec(c, 'addInto');
  }
}

/**
 * Rounds `values[start..start+length)` in place to what travels on the wire under `c`:
 * values[i] = decode(encode(values[i])), bit for bit the float32 every other rank decodes
 * (so the rank that owns a reduced segment ends with the same bits as the rest). A no-op
 * for 'none'. Throws InvalidArgumentError when the span falls outside `values`.
 */
export function quantizeInPlace(c: Compression, values: Float32Array, start: number, length: number): void {
  checkSpans(values, start, length, values, start);
  switch (c) {
    case Compression.None:
      return;
    case Compression.Bf16: {
      // As encodeBf16 then decodeBf16 (NaN: its top 16 bits plus the quiet bit).
      const bits = bitsOf(values, start, length);
      for (let i = 0; i < bits.length; i++) bits[i] = bf16Code(bits[i]!) << 16;
      return;
    }
    case Compression.Fp16: {
      const bits = bitsOf(values, start, length);
      const table = fp16Table().bits;
      for (let i = 0; i < bits.length; i++) bits[i] = table[fp16Code(bits[i]!, FP16_BASE, FP16_SHIFT, FP16_BIAS)]!;
      return;
    }
  }
}
