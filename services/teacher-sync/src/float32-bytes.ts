/**
 * The wire encoding of centers and sums: raw little-endian float32 (teacher_sync.proto).
 */
import { InvalidArgumentError } from '@dinofleet/proto';

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Decodes `bytes` as little-endian float32 values into a fresh, aligned array.
 * @throws InvalidArgumentError naming `field` when the length is not a multiple of 4.
 */
export function float32FromBytes(bytes: Uint8Array, field: string): Float32Array {
  if (bytes.length % 4 !== 0) {
    throw new InvalidArgumentError(`${field} must be little-endian float32 values (a multiple of 4 bytes), got ${bytes.length} bytes`);
  }
  if (HOST_IS_LITTLE_ENDIAN) return new Float32Array(new Uint8Array(bytes).buffer);
  const values = new Float32Array(bytes.length / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(i * 4, true);
  return values;
}

/** Encodes float32 values as little-endian bytes (a view on `values` where the host allows). */
export function float32ToBytes(values: Float32Array): Buffer {
  if (HOST_IS_LITTLE_ENDIAN) return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const bytes = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) bytes.writeFloatLE(values[i] as number, i * 4);
  return bytes;
}
