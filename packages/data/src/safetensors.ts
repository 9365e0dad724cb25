/**
 * The safetensors format (huggingface/safetensors, "Format" in its README), float32 only:
 * an 8-byte little-endian u64 N, N bytes of JSON header, then the tensors' bytes.
 *
 * The header maps each tensor name to `{"dtype":"F32","shape":[…],"data_offsets":[b,e]}`
 * (offsets relative to the first byte after the header) and may hold `"__metadata__"`, a
 * string-to-string map. As the reference writer does, the header is padded with spaces so
 * the data starts 8-byte aligned, and the tensors are laid out in sorted-name order with no
 * gaps, so PyTorch (`safetensors.torch.load_file`) and numpy read these files unchanged.
 */

/** A float32 tensor: row-major `data` of `shape`. */
export interface NamedTensor {
  /** Dimensions, outermost first; `[]` is a scalar (one value). */
  readonly shape: readonly number[];
  /** The values, row-major; length = product of `shape`. */
  readonly data: Float32Array;
}

/** What {@link decodeSafetensors} returns. */
export interface DecodedSafetensors {
  /** Tensors by name; each owns a fresh (aligned) copy of its values. */
  readonly tensors: Record<string, NamedTensor>;
  /** The `__metadata__` map; `{}` when the file has none. */
  readonly metadata: Record<string, string>;
}

/** Thrown for bytes that are not a float32 safetensors file, or tensors that cannot be one. */
export class SafetensorsError extends Error {
  override readonly name = 'SafetensorsError';
  /** Stable code for callers that map errors. */
  readonly code = 'invalid_safetensors';
}

/** The header key holding the string metadata map. */
export const SAFETENSORS_METADATA_KEY = '__metadata__';

/**
 * Largest header accepted, in bytes (the reference implementation's limit): a corrupt length
 * must not make a reader allocate or parse gigabytes.
 */
export const MAX_SAFETENSORS_HEADER_BYTES = 100_000_000;

const F32_BYTES = 4;
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

interface HeaderEntry {
  readonly dtype: 'F32';
  readonly shape: number[];
  readonly data_offsets: [number, number];
}

function elementCount(shape: readonly number[], where: string): number {
  let count = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new SafetensorsError(`${where}: shape ${JSON.stringify(shape)} must hold non-negative integers`);
    }
    count *= dim;
  }
  if (!Number.isSafeInteger(count)) throw new SafetensorsError(`${where}: shape ${JSON.stringify(shape)} is too large`);
  return count;
}

/** Byte order of the file is little-endian whatever the host's. */
function float32Bytes(data: Float32Array): Uint8Array {
  if (HOST_IS_LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const bytes = new Uint8Array(data.length * F32_BYTES);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < data.length; i++) view.setFloat32(i * F32_BYTES, data[i] as number, true);
  return bytes;
}

function readFloat32(bytes: Uint8Array, start: number, end: number): Float32Array {
  // Copied into a fresh buffer, so the result is aligned and does not pin `bytes`. (Not
  // `bytes.slice()`: on a Node Buffer that is a view into the shared pool.)
  if (HOST_IS_LITTLE_ENDIAN) return new Float32Array(new Uint8Array(bytes.subarray(start, end)).buffer);
  const values = new Float32Array((end - start) / F32_BYTES);
  const view = new DataView(bytes.buffer, bytes.byteOffset + start, end - start);
  for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(i * F32_BYTES, true);
  return values;
}

/**
 * Encodes float32 tensors (and an optional string `metadata` map) as one safetensors file.
 * Tensor names must be non-empty and not `__metadata__`; each tensor's data length must
 * equal the product of its shape.
 *
 * @throws SafetensorsError naming the tensor when one cannot be encoded.
 */
export function encodeSafetensors(
  tensors: Readonly<Record<string, NamedTensor>>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  // Sorted by UTF-16 code unit, which for the ASCII names used here is byte order too.
  const names = Object.keys(tensors).sort();
  const header: Record<string, HeaderEntry | Record<string, string>> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    const copy: Record<string, string> = {};
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw new SafetensorsError(`metadata ${JSON.stringify(key)} must be a string, got ${typeof value}`);
      copy[key] = value;
    }
    header[SAFETENSORS_METADATA_KEY] = copy;
  }
  let offset = 0;
  for (const name of names) {
    const tensor = tensors[name] as NamedTensor;
    const where = `tensor ${JSON.stringify(name)}`;
    if (name === '' || name === SAFETENSORS_METADATA_KEY) throw new SafetensorsError(`${where}: name is reserved or empty`);
    if (!(tensor.data instanceof Float32Array)) throw new SafetensorsError(`${where}: data must be a Float32Array`);
    const count = elementCount(tensor.shape, where);
    if (count !== tensor.data.length) {
      throw new SafetensorsError(`${where}: shape ${JSON.stringify(tensor.shape)} holds ${count} values, data has ${tensor.data.length}`);
    }
    const end = offset + count * F32_BYTES;
    // Object.defineProperty keeps a name like "__proto__" an ordinary key.
    Object.defineProperty(header, name, {
      value: { dtype: 'F32', shape: [...tensor.shape], data_offsets: [offset, end] },
      enumerable: true,
      writable: true,
      configurable: true,
    });
    offset = end;
  }

  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerBytes + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerBytes);
  let position = 8 + headerBytes;
  for (const name of names) {
    const bytes = float32Bytes((tensors[name] as NamedTensor).data);
    out.set(bytes, position);
    position += bytes.length;
  }
  return out;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseEntry(name: string, value: unknown, dataBytes: number): { shape: number[]; begin: number; end: number } {
  const where = `tensor ${JSON.stringify(name)}`;
  if (!isPlainObject(value)) throw new SafetensorsError(`${where}: header entry must be an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (dtype !== 'F32') {
    throw new SafetensorsError(`${where}: dtype ${JSON.stringify(dtype)} is not supported (only F32)`);
  }
  if (!Array.isArray(shape)) throw new SafetensorsError(`${where}: shape must be an array`);
  const dims = shape as number[];
  const count = elementCount(dims, where);
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((offset) => Number.isSafeInteger(offset) && (offset as number) >= 0)
  ) {
    throw new SafetensorsError(`${where}: data_offsets must be [begin, end] with non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end || end > dataBytes) {
    throw new SafetensorsError(`${where}: data_offsets [${begin}, ${end}] lie outside the ${dataBytes} data bytes`);
  }
  if (end - begin !== count * F32_BYTES) {
    throw new SafetensorsError(
      `${where}: shape ${JSON.stringify(dims)} needs ${count * F32_BYTES} bytes, data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { shape: [...dims], begin, end };
}

/**
 * Decodes a safetensors file of float32 tensors.
 *
 * @throws SafetensorsError (code `invalid_safetensors`) when the bytes are truncated, the
 *   header is not JSON, a dtype is not F32, offsets lie outside the data or disagree with
 *   the shape, or the tensors leave gaps or overlap.
 */
export function decodeSafetensors(bytes: Uint8Array): DecodedSafetensors {
  if (bytes.length < 8) throw new SafetensorsError(`truncated: ${bytes.length} bytes, the 8-byte header length is missing`);
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_SAFETENSORS_HEADER_BYTES)) {
    throw new SafetensorsError(`header length ${headerLength} exceeds the limit of ${MAX_SAFETENSORS_HEADER_BYTES} bytes`);
  }
  const headerBytes = Number(headerLength);
  if (8 + headerBytes > bytes.length) {
    throw new SafetensorsError(`truncated: the header claims ${headerBytes} bytes, only ${bytes.length - 8} follow the length`);
  }
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerBytes));
    header = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(`header is not UTF-8 JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (!isPlainObject(header)) throw new SafetensorsError('header must be a JSON object');

  const dataStart = 8 + headerBytes;
  const dataBytes = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { name: string; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === SAFETENSORS_METADATA_KEY) {
      if (!isPlainObject(value)) throw new SafetensorsError('__metadata__ must be an object of strings');
      for (const [key, item] of Object.entries(value)) {
        if (typeof item !== 'string') throw new SafetensorsError(`__metadata__ ${JSON.stringify(key)} must be a string`);
        Object.defineProperty(metadata, key, { value: item, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    entries.push({ name, ...parseEntry(name, value, dataBytes) });
  }

  // The reference reader insists the tensors tile the data exactly: no overlap (two
  // tensors aliasing bytes) and no gap or trailing bytes (a file cut or padded wrongly).
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const entry of byOffset) {
    if (entry.begin !== expected) {
      throw new SafetensorsError(
        `tensor ${JSON.stringify(entry.name)}: data_offsets [${entry.begin}, ${entry.end}] ${entry.begin < expected ? 'overlap the previous tensor' : `leave a gap after byte ${expected}`}`,
      );
    }
    expected = entry.end;
  }
  if (expected !== dataBytes) {
    throw new SafetensorsError(`size mismatch: the tensors cover ${expected} data bytes, the file holds ${dataBytes}`);
  }

  const tensors: Record<string, NamedTensor> = {};
  for (const entry of entries) {
    const tensor: NamedTensor = { shape: entry.shape, data: readFloat32(bytes, dataStart + entry.begin, dataStart + entry.end) };
    Object.defineProperty(tensors, entry.name, { value: tensor, enumerable: true, writable: true, configurable: true });
  }
  return { tensors, metadata };
}
