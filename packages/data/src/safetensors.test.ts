import { describe, expect, it } from 'vitest';

import { decodeSafetensors, encodeSafetensors, SafetensorsError } from './safetensors.ts';
import type { NamedTensor } from './safetensors.ts';

/** A file built byte by byte: length prefix, JSON header, padding, little-endian floats. */
function buildFile(header: string, floats: readonly number[], padTo8 = true): Uint8Array {
  const json = new TextEncoder().encode(header);
  const headerBytes = padTo8 ? Math.ceil(json.length / 8) * 8 : json.length;
  const out = new Uint8Array(8 + headerBytes + floats.length * 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerBytes), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerBytes);
  floats.forEach((value, i) => view.setFloat32(8 + headerBytes + i * 4, value, true));
  return out;
}

function expectInvalid(bytes: Uint8Array, message: RegExp): void {
  let caught: unknown;
  try {
    decodeSafetensors(bytes);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(SafetensorsError);
  expect((caught as SafetensorsError).code).toBe('invalid_safetensors');
  expect((caught as SafetensorsError).message).toMatch(message);
}

describe('encodeSafetensors / decodeSafetensors', () => {
  it('round-trips tensors, shapes, metadata and exact float bits', () => {
    const awkward = new Float32Array([Number.NaN, -0, Infinity, -Infinity, 1e-45, 3.4028234663852886e38]);
    const tensors: Record<string, NamedTensor> = {
      'teacher/blocks.0.attn.qkv.weight': { shape: [2, 3], data: awkward },
      center: { shape: [4], data: new Float32Array([0.1, -0.2, 0.3, -0.4]) },
      scalar: { shape: [], data: new Float32Array([7.5]) },
      empty: { shape: [0, 5], data: new Float32Array(0) },
    };
    const bytes = encodeSafetensors(tensors, { format: 'pt', step: '12' });
    const headerBytes = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerBytes % 8).toBe(0);

    const decoded = decodeSafetensors(bytes);
    expect(decoded.metadata).toEqual({ format: 'pt', step: '12' });
    expect(Object.keys(decoded.tensors).sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, tensor] of Object.entries(tensors)) {
      const got = decoded.tensors[name] as NamedTensor;
      expect(got.shape).toEqual(tensor.shape);
      // Compare bits, so NaN and -0 count too.
      expect(new Uint32Array(got.data.buffer, got.data.byteOffset, got.data.length)).toEqual(
        new Uint32Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.length),
      );
    }
  });

  it('writes what the reference writer writes: sorted names, packed offsets, padded header', () => {
    const bytes = encodeSafetensors(
      { b: { shape: [1, 2], data: new Float32Array([3, 4]) }, a: { shape: [1], data: new Float32Array([1.5]) } },
      { k: 'v' },
    );
    const header =
      '{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1,2],"data_offsets":[4,12]}}';
    expect(bytes).toEqual(buildFile(header, [1.5, 3, 4]));
  });

  it('encodes a subarray view without its neighbours', () => {
    const backing = new Float32Array([9, 1, 2, 9]);
    const bytes = encodeSafetensors({ x: { shape: [2], data: backing.subarray(1, 3) } });
    expect(Array.from((decodeSafetensors(bytes).tensors.x as NamedTensor).data)).toEqual([1, 2]);
  });

  it('decodes a hand-built file', () => {
    // Unsorted keys, an unpadded header and tensors stored in another order than their names.
    const header = '{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]},"__metadata__":{"a":"b"},"bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    const decoded = decodeSafetensors(buildFile(header, [-1, 1, 2, 3, 4], false));
    expect(decoded.metadata).toEqual({ a: 'b' });
    expect(decoded.tensors.bias).toEqual({ shape: [1], data: new Float32Array([-1]) });
    expect(decoded.tensors.w).toEqual({ shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
  });

  it('decodes from a Node Buffer that is a slice of a larger pool', () => {
    const file = encodeSafetensors({ x: { shape: [3], data: new Float32Array([1, 2, 3]) } });
    // Small Buffers share one pooled ArrayBuffer at an arbitrary (often unaligned) offset.
    const pooled = Buffer.concat([Buffer.from('abc'), Buffer.from(file)]).subarray(3);
    const x = decodeSafetensors(pooled).tensors.x as NamedTensor;
    expect(Array.from(x.data)).toEqual([1, 2, 3]);
    expect(x.data.buffer.byteLength).toBe(12);
  });

  it('decodes a file with no tensors', () => {
    expect(decodeSafetensors(encodeSafetensors({}))).toEqual({ tensors: {}, metadata: {} });
  });

  it('rejects truncated input', () => {
    const good = encodeSafetensors({ x: { shape: [3], data: new Float32Array([1, 2, 3]) } });
    expectInvalid(good.subarray(0, 5), /truncated.*8-byte header length/);
    expectInvalid(good.subarray(0, 20), /truncated: the header claims/);
    expectInvalid(good.subarray(0, good.length - 4), /data_offsets \[0, 12\] lie outside the 8 data bytes/);
  });

  it('rejects a header length past the limit', () => {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setBigUint64(0, 2n ** 40n, true);
    expectInvalid(bytes, /exceeds the limit/);
  });

  it('rejects a header that is not JSON, or not an object', () => {
    expectInvalid(buildFile('{"x": ', []), /not UTF-8 JSON/);
    expectInvalid(buildFile('[1,2]', []), /must be a JSON object/);
  });

  it('rejects offsets outside the data', () => {
    expectInvalid(buildFile('{"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', [1, 2]), /"x": data_offsets \[4, 12\] lie outside the 8 data bytes/);
    expectInvalid(buildFile('{"x":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}', [1]), /lie outside/);
    expectInvalid(buildFile('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}}', [1]), /data_offsets must be \[begin, end\]/);
  });

  it('rejects a dtype other than F32', () => {
    expectInvalid(buildFile('{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', [1]), /"x": dtype "F16" is not supported \(only F32\)/);
  });

  it('rejects a shape that disagrees with the byte range', () => {
    expectInvalid(buildFile('{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', [1, 2]), /shape \[3\] needs 12 bytes, data_offsets \[0, 8\] hold 8/);
    expectInvalid(buildFile('{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', [1]), /non-negative integers/);
  });

  it('rejects gaps, overlaps and trailing bytes', () => {
    expectInvalid(
      buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', [1]),
      /overlap/,
    );
    expectInvalid(buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', [1, 2]), /leave a gap after byte 0/);
    expectInvalid(buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', [1, 2]), /size mismatch: the tensors cover 4 data bytes, the file holds 8/);
  });

  it('rejects metadata that is not a string map', () => {
    expectInvalid(buildFile('{"__metadata__":{"n":1}}', []), /__metadata__ "n" must be a string/);
  });

  it('refuses to encode a tensor whose data does not match its shape', () => {
    expect(() => encodeSafetensors({ x: { shape: [2, 2], data: new Float32Array(3) } })).toThrow(
      /tensor "x": shape \[2,2\] holds 4 values, data has 3/,
    );
    expect(() => encodeSafetensors({ __metadata__: { shape: [1], data: new Float32Array(1) } })).toThrow(SafetensorsError);
  });

  it('keeps a tensor named __proto__ as an ordinary entry', () => {
    const tensors: Record<string, NamedTensor> = {};
    Object.defineProperty(tensors, '__proto__', { value: { shape: [1], data: new Float32Array([5]) }, enumerable: true });
    const decoded = decodeSafetensors(encodeSafetensors(tensors));
    expect(Object.keys(decoded.tensors)).toEqual(['__proto__']);
    expect(Object.getPrototypeOf(decoded.tensors)).toBe(Object.prototype);
  });
});
