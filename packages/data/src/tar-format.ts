/**
 * Tar archives read as a stream of 512-byte blocks, for WebDataset shards: POSIX ustar
 * headers (with the `prefix` field), pax extended headers (`x`, keys `path` and `size`) and
 * GNU long names (`L`). Every header's checksum is verified, so a corrupt or misaligned
 * archive fails at the first bad header instead of yielding garbage members. The member
 * layout follows POSIX.1-2001 `pax` ("ustar Interchange Format") and GNU tar's manual
 * ("Basic Tar Format"); which member types carry data follows CPython's `tarfile`.
 */

/** Size of a tar block (header or data unit), bytes. */
export const TAR_BLOCK_BYTES = 512;
/** Default largest extended header (pax `x`/`g`, GNU `L`/`K`) accepted, bytes. */
export const DEFAULT_MAX_TAR_EXTENSION_BYTES = 1024 * 1024;

/** Thrown for bytes that are not a well-formed tar archive (corrupt, truncated, misaligned). */
export class TarFormatError extends Error {
  override readonly name = 'TarFormatError';
  /** Stable code. */
  readonly code = 'invalid_tar';
  /** The archive, as named by the reader (e.g. `s3://bucket/shard-0001.tar`). */
  readonly archive: string;
  /** Byte offset in the archive where the damage was found. */
  readonly offset: number;

  constructor(archive: string, offset: number, reason: string, options?: ErrorOptions) {
    super(`${archive} at byte ${offset}: ${reason}`, options);
    this.archive = archive;
    this.offset = offset;
  }
}

/** What a tar member is, as far as a dataset reader cares. */
export const TarMemberType = {
  /** A regular file (typeflag `0`, NUL or `7`): its data are the file's bytes. */
  File: 'file',
  /** A directory (typeflag `5`); no data. */
  Directory: 'directory',
  /** A hard or symbolic link (typeflag `1`, `2`); no data. */
  Link: 'link',
  /** Anything else: devices and FIFOs (no data) or a type this reader does not know (its data are skipped). */
  Other: 'other',
} as const;
/** What a tar member is, as far as a dataset reader cares. */
export type TarMemberType = (typeof TarMemberType)[keyof typeof TarMemberType];

/** One member of an archive, with its extended headers already applied. */
export interface TarMember {
  /** Offset of the member's first header, its pax / GNU long-name headers included: reading from here yields this member first. */
  readonly headerOffset: number;
  /** Offset of the first data byte (right after the member's own header). */
  readonly dataOffset: number;
  /** Member path: pax `path`, else the GNU long name, else ustar `prefix/name`. */
  readonly path: string;
  /** Member type. */
  readonly type: TarMemberType;
  /** Data size, bytes (pax `size` where given); 0 for types that carry no data. */
  readonly sizeBytes: number;
  /** Offset of the next header: `dataOffset` plus the data rounded up to whole blocks. */
  readonly nextOffset: number;
}

/** A member as {@link readTarMembers} yields it, with a way to read its data. */
export interface TarEntry extends TarMember {
  /**
   * Reads the member's data (a new array the caller owns). Call it at most once, before
   * asking the generator for the next entry; entries whose data are not read are skipped
   * without copying. Throws {@link TarFormatError} when the archive ends inside the data.
   */
  readData(): Promise<Uint8Array>;
}

/** Sequential access to an archive's bytes, from which {@link readTarMembers} parses members. */
export interface TarByteSource {
  /** Size of the whole archive object, bytes. */
  readonly sizeBytes: number;
  /** Offset of the next byte {@link TarByteSource.read} returns. */
  readonly position: number;
  /** The next `length` bytes as a new array the caller owns; `position + length` must not exceed `sizeBytes`. */
  read(length: number): Promise<Uint8Array>;
  /** Advances `position` by `length` bytes without returning them (and without fetching them where it can). */
  skip(length: number): Promise<void>;
}

/** Options of {@link readTarMembers}. */
export interface ReadTarMembersOptions {
  /** Names the archive in error messages, e.g. `s3://bucket/key`. @default 'tar archive' */
  readonly archiveName?: string;
  /** Largest extended header (pax `x`/`g`, GNU `L`/`K`) accepted, bytes. @default 1 MiB */
  readonly maxExtensionBytes?: number;
}

const UTF8 = new TextDecoder('utf-8');
const ENCODER = new TextEncoder();

/** `length` rounded up to whole blocks. */
function paddedBytes(length: number): number {
  return Math.ceil(length / TAR_BLOCK_BYTES) * TAR_BLOCK_BYTES;
}

function isZeroBlock(block: Uint8Array): boolean {
  for (const byte of block) if (byte !== 0) return false;
  return true;
}

/** A NUL-terminated (or full-width) string field, decoded as UTF-8. */
function stringField(block: Uint8Array, start: number, length: number): string {
  const field = block.subarray(start, start + length);
  const nul = field.indexOf(0);
  return UTF8.decode(nul === -1 ? field : field.subarray(0, nul));
}

/**
 * A numeric header field: octal digits, optionally led by spaces and ended by NUL or
 * space, or GNU's base-256 form (first byte 0x80, then big-endian) for values that do not
 * fit the octal width. Returns undefined when the field is neither; an empty field (no
 * digits) gives `ifEmpty`.
 */
function numericField(block: Uint8Array, start: number, length: number, ifEmpty: number | undefined): number | undefined {
  const first = block[start] ?? 0;
  if ((first & 0x80) !== 0) {
    // 0xff leads a negative base-256 number, which no size or checksum can be.
    if (first !== 0x80) return undefined;
    let value = 0;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + (block[i] ?? 0);
    return Number.isSafeInteger(value) ? value : undefined;
  }
  let i = start;
  const end = start + length;
  while (i < end && block[i] === 0x20) i++;
  let value = 0;
  let digits = 0;
  for (; i < end; i++) {
    const byte = block[i] ?? 0;
    if (byte < 0x30 || byte > 0x37) break;
    value = value * 8 + (byte - 0x30);
    digits++;
  }
  for (; i < end; i++) {
    const byte = block[i];
    if (byte !== 0 && byte !== 0x20) return undefined;
  }
  return digits === 0 ? ifEmpty : value;
}

const CHECKSUM_START = 148;
const CHECKSUM_LENGTH = 8;
const MAGIC_POSIX = 'ustar\u0000';

interface HeaderBlock {
  readonly name: string;
  readonly sizeBytes: number;
  readonly typeflag: string;
}

/** Parses and checks one non-zero header block at `offset`. */
function parseHeaderBlock(block: Uint8Array, offset: number, archive: string): HeaderBlock {
  const stored = numericField(block, CHECKSUM_START, CHECKSUM_LENGTH, undefined);
  if (stored === undefined) {
    throw new TarFormatError(
      archive,
      offset,
      'the header checksum field is not an octal number, so this block is not a tar header (a corrupt archive, or a read that started at an offset that is not a header)',
    );
  }
  // The checksum is the sum of the header's bytes with the checksum field read as spaces.
  // Historic writers summed signed chars; both sums are accepted, as GNU tar and CPython do.
  let unsigned = CHECKSUM_LENGTH * 0x20;
  let signed = CHECKSUM_LENGTH * 0x20;
  for (let i = 0; i < TAR_BLOCK_BYTES; i++) {
    if (i >= CHECKSUM_START && i < CHECKSUM_START + CHECKSUM_LENGTH) continue;
    const byte = block[i] ?? 0;
    unsigned += byte;
    signed += byte < 0x80 ? byte : byte - 0x100;
  }
  if (stored !== unsigned && stored !== signed) {
    throw new TarFormatError(
      archive,
      offset,
      `header checksum mismatch (stored ${stored}, computed ${unsigned}): the archive is corrupt; rewrite the shard`,
    );
  }
  const sizeBytes = numericField(block, 124, 12, 0);
  if (sizeBytes === undefined) throw new TarFormatError(archive, offset, 'the header size field is not an octal or base-256 number');
  let name = stringField(block, 0, 100);
  // The prefix field exists only in POSIX ustar; GNU's format keeps other data there.
  if (String.fromCharCode(...block.subarray(257, 263)) === MAGIC_POSIX) {
    const prefix = stringField(block, 345, 155);
    if (prefix !== '') name = `${prefix}/${name}`;
  }
  const flag = block[156] ?? 0;
  return { name, sizeBytes, typeflag: flag === 0 ? '0' : String.fromCharCode(flag) };
}

/** The type of a member header, and whether data blocks follow it (CPython `tarfile`'s rule). */
function memberType(typeflag: string): { readonly type: TarMemberType; readonly hasData: boolean } {
  switch (typeflag) {
    case '0':
    case '7':
      return { type: TarMemberType.File, hasData: true };
    case '5':
      return { type: TarMemberType.Directory, hasData: false };
    case '1':
    case '2':
      return { type: TarMemberType.Link, hasData: false };
    case '3':
    case '4':
    case '6':
      return { type: TarMemberType.Other, hasData: false };
    default:
      // Unknown types (GNU sparse, volume headers, vendor extensions) are skipped whole.
      return { type: TarMemberType.Other, hasData: true };
  }
}

/** Records of a pax extended header: `"<length> <key>=<value>\n"`, length counting the whole record. */
function parsePaxRecords(data: Uint8Array, offset: number, archive: string): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.byteLength) {
    // Writers may pad the data with NULs after the last record.
    if (data[at] === 0) break;
    const space = data.indexOf(0x20, at);
    const lengthText = space === -1 ? '' : UTF8.decode(data.subarray(at, space));
    const length = /^[1-9]\d*$/.test(lengthText) ? Number(lengthText) : Number.NaN;
    if (!Number.isSafeInteger(length) || at + length > data.byteLength || data[at + length - 1] !== 0x0a) {
      throw new TarFormatError(archive, offset + at, 'malformed pax extended header record (expected "<length> <key>=<value>\\n")');
    }
    const record = UTF8.decode(data.subarray(space + 1, at + length - 1));
    const equals = record.indexOf('=');
    if (equals <= 0) throw new TarFormatError(archive, offset + at, `malformed pax extended header record "${record.slice(0, 60)}" (no key=value)`);
    records.set(record.slice(0, equals), record.slice(equals + 1));
    at += length;
  }
  return records;
}

/**
 * Streams the members of an archive from `source.position` (a multiple of 512, the offset
 * of a header), applying pax `x` headers (`path`, `size`) and GNU `L` long names to the
 * member that follows them; pax global headers (`g`) and GNU long link names (`K`) are
 * skipped. Ends at the end-of-archive marker (two zero blocks; a zero block followed by the
 * end of the object is accepted too) or at the end of the object when it falls on a header
 * boundary. Throws {@link TarFormatError} for a bad checksum, a truncated header or member,
 * a zero block followed by more members (concatenated archives), or an extended header
 * larger than `maxExtensionBytes`.
 *
 * Truncation of a member's data is reported lazily, by {@link TarEntry.readData} or when
 * the generator moves past the member, so a consumer sees every complete header first.
 */
export async function* readTarMembers(source: TarByteSource, options: ReadTarMembersOptions = {}): AsyncGenerator<TarEntry, void, undefined> {
  const archive = options.archiveName ?? 'tar archive';
  const maxExtensionBytes = options.maxExtensionBytes ?? DEFAULT_MAX_TAR_EXTENSION_BYTES;
  if (!Number.isSafeInteger(maxExtensionBytes) || maxExtensionBytes < 0) {
    throw new RangeError(`maxExtensionBytes must be a non-negative integer, got ${maxExtensionBytes}`);
  }
  if (!Number.isSafeInteger(source.position) || source.position < 0 || source.position % TAR_BLOCK_BYTES !== 0) {
    throw new RangeError(`a tar is read from a header offset, a multiple of ${TAR_BLOCK_BYTES}; got ${source.position}`);
  }
  const { sizeBytes } = source;
  const truncated = (offset: number, what: string): TarFormatError =>
    new TarFormatError(archive, offset, `the archive ends at byte ${sizeBytes} inside ${what}: it is truncated; rewrite or re-upload the shard`);

  // First header of the entry being assembled (extended headers come before the member's own).
  let entryStart = source.position;
  let paxPath: string | undefined;
  let paxSize: number | undefined;
  let longName: string | undefined;

  for (;;) {
    const headerOffset = source.position;
    const left = sizeBytes - headerOffset;
    if (left === 0) {
      if (headerOffset !== entryStart) throw truncated(entryStart, 'an entry: its extended header is not followed by the member it describes');
      return;
    }
    if (left < TAR_BLOCK_BYTES) throw truncated(headerOffset, `a header (${left} of ${TAR_BLOCK_BYTES} bytes present)`);
    const block = await source.read(TAR_BLOCK_BYTES);

    if (isZeroBlock(block)) {
      if (headerOffset !== entryStart) {
        throw new TarFormatError(archive, headerOffset, `a zero block follows the extended header at byte ${entryStart} instead of a member header`);
      }
      if (sizeBytes - source.position >= TAR_BLOCK_BYTES && !isZeroBlock(await source.read(TAR_BLOCK_BYTES))) {
        throw new TarFormatError(
          archive,
          headerOffset + TAR_BLOCK_BYTES,
          `a single zero block at byte ${headerOffset} is followed by a header: an archive ends with two zero blocks, so this is corruption or concatenated archives (not supported; rewrite the shard as one archive)`,
        );
      }
      return;
    }

    const header = parseHeaderBlock(block, headerOffset, archive);
    const dataOffset = headerOffset + TAR_BLOCK_BYTES;

    if (header.typeflag === 'x' || header.typeflag === 'g' || header.typeflag === 'L' || header.typeflag === 'K') {
      if (header.sizeBytes > maxExtensionBytes) {
        throw new TarFormatError(
          archive,
          headerOffset,
          `an extended header (type ${header.typeflag}) of ${header.sizeBytes} bytes exceeds maxExtensionBytes (${maxExtensionBytes})`,
        );
      }
      if (dataOffset + paddedBytes(header.sizeBytes) > sizeBytes) throw truncated(headerOffset, `an extended header (type ${header.typeflag})`);
      const data = await source.read(header.sizeBytes);
      await source.skip(paddedBytes(header.sizeBytes) - header.sizeBytes);
      if (header.typeflag === 'x') {
        const records = parsePaxRecords(data, dataOffset, archive);
        const path = records.get('path');
        // An empty value deletes the keyword: the ustar field applies again.
        if (path !== undefined) paxPath = path === '' ? undefined : path;
        const size = records.get('size');
        if (size !== undefined) {
          if (!/^\d+$/.test(size) || !Number.isSafeInteger(Number(size))) {
            throw new TarFormatError(archive, dataOffset, `pax size "${size.slice(0, 30)}" is not a non-negative integer`);
          }
          paxSize = Number(size);
        }
      } else if (header.typeflag === 'L') {
        const nul = data.indexOf(0);
        longName = UTF8.decode(nul === -1 ? data : data.subarray(0, nul));
      }
      continue;
    }

    const { type, hasData } = memberType(header.typeflag);
    const memberSize = hasData ? (paxSize ?? header.sizeBytes) : 0;
    const member: TarMember = {
      headerOffset: entryStart,
      dataOffset,
      path: paxPath ?? longName ?? header.name,
      type,
      sizeBytes: memberSize,
      nextOffset: dataOffset + paddedBytes(memberSize),
    };
    paxPath = undefined;
    paxSize = undefined;
    longName = undefined;

    const truncatedData = (): TarFormatError =>
      truncated(member.headerOffset, `member "${member.path}" (${member.sizeBytes} data bytes from byte ${dataOffset}, padded to byte ${member.nextOffset})`);
    let state: 'unread' | 'read' | 'passed' = 'unread';
    const readData = async (): Promise<Uint8Array> => {
      if (state !== 'unread') throw new Error(`readData() of tar member "${member.path}" may be called once, before the next member is requested`);
      state = 'read';
      if (member.nextOffset > sizeBytes) throw truncatedData();
      return source.read(member.sizeBytes);
    };
    yield { ...member, readData };
    state = 'passed';
    if (member.nextOffset > sizeBytes) throw truncatedData();
    await source.skip(member.nextOffset - source.position);
    entryStart = member.nextOffset;
  }
}

/** A byte array as a {@link TarByteSource}, reading from `position` (default 0). */
export function bytesTarSource(bytes: Uint8Array, position = 0): TarByteSource {
  let at = position;
  return {
    sizeBytes: bytes.byteLength,
    get position() {
      return at;
    },
    read(length: number) {
      if (at + length > bytes.byteLength) return Promise.reject(new RangeError(`read of ${length} bytes at ${at} passes the end (${bytes.byteLength})`));
      const out = bytes.slice(at, at + length);
      at += length;
      return Promise.resolve(out);
    },
    skip(length: number) {
      at += length;
      return Promise.resolve();
    },
  };
}

/** A member to write with {@link encodeTar}. */
export interface TarMemberInput {
  /** Path inside the archive, UTF-8; a directory's ends with `/`. */
  readonly name: string;
  /** The member's data (empty for a directory). */
  readonly bytes: Uint8Array;
  /** Member type. @default 'file' */
  readonly type?: 'file' | 'directory';
}

/** Options of {@link encodeTar}. */
export interface EncodeTarOptions {
  /**
   * How names longer than 100 bytes are written: `auto` uses the ustar `prefix` field where
   * the name splits at a `/` into at most 155 + 100 bytes and a pax `path` header otherwise;
   * `pax` always uses a pax header; `gnu` a GNU `L` long-name header. @default 'auto'
   */
  readonly longNames?: 'auto' | 'pax' | 'gnu';
}

// Largest size the 11 octal digits of a ustar size field hold.
const MAX_USTAR_SIZE = 8 ** 11 - 1;

function writeOctal(block: Uint8Array, start: number, length: number, value: number): void {
  // `length − 1` digits and a NUL terminator.
  ENCODER.encodeInto(`${value.toString(8).padStart(length - 1, '0')}\u0000`, block.subarray(start, start + length));
}

function headerBlock(nameBytes: Uint8Array, prefixBytes: Uint8Array, sizeBytes: number, typeflag: string): Uint8Array {
  const block = new Uint8Array(TAR_BLOCK_BYTES);
  block.set(nameBytes.subarray(0, 100), 0);
  writeOctal(block, 100, 8, typeflag === '5' ? 0o755 : 0o644);
  writeOctal(block, 108, 8, 0);
  writeOctal(block, 116, 8, 0);
  writeOctal(block, 124, 12, sizeBytes);
  writeOctal(block, 136, 12, 0);
  block.fill(0x20, CHECKSUM_START, CHECKSUM_START + CHECKSUM_LENGTH);
  block[156] = typeflag.charCodeAt(0);
  ENCODER.encodeInto(`${MAGIC_POSIX}00`, block.subarray(257, 265));
  block.set(prefixBytes.subarray(0, 155), 345);
  let sum = 0;
  for (const byte of block) sum += byte;
  // Six digits, NUL, space: the layout GNU tar writes.
  ENCODER.encodeInto(`${sum.toString(8).padStart(6, '0')}\u0000 `, block.subarray(CHECKSUM_START, CHECKSUM_START + CHECKSUM_LENGTH));
  return block;
}

/** `name` cut at a `/` into a ustar prefix (≤ 155 bytes) and name (≤ 100 bytes), if it can be. */
function splitUstarName(nameBytes: Uint8Array): { prefix: Uint8Array; name: Uint8Array } | undefined {
  for (let slash = Math.min(155, nameBytes.byteLength - 1); slash > 0; slash--) {
    if (nameBytes[slash] !== 0x2f) continue;
    const rest = nameBytes.byteLength - slash - 1;
    if (rest > 100) return undefined;
    if (rest > 0) return { prefix: nameBytes.subarray(0, slash), name: nameBytes.subarray(slash + 1) };
  }
  return undefined;
}

/** A pax record `"<length> <key>=<value>\n"`, whose length counts its own digits. */
function paxRecord(key: string, value: string): Uint8Array {
  const body = ENCODER.encode(` ${key}=${value}\n`);
  let length = body.byteLength + 1;
  while (String(length).length + body.byteLength !== length) length = String(length).length + body.byteLength;
  const out = new Uint8Array(length);
  ENCODER.encodeInto(String(length), out);
  out.set(body, length - body.byteLength);
  return out;
}

/**
 * Writes a POSIX ustar archive of `members`, in order, ending with two zero blocks (not
 * padded to a 10 KiB record). Modes 644/755, owner 0, mtime 0, so equal inputs give equal
 * bytes. For tests and benchmarks; members must each be smaller than 8 GiB.
 */
export function encodeTar(members: readonly TarMemberInput[], options: EncodeTarOptions = {}): Uint8Array {
  const longNames = options.longNames ?? 'auto';
  const parts: Uint8Array[] = [];
  const empty = new Uint8Array(0);
  const pushData = (bytes: Uint8Array): void => {
    parts.push(bytes);
    const padding = paddedBytes(bytes.byteLength) - bytes.byteLength;
    if (padding > 0) parts.push(new Uint8Array(padding));
  };
  for (const member of members) {
    const type = member.type ?? 'file';
    const typeflag = type === 'directory' ? '5' : '0';
    if (type === 'directory' && member.bytes.byteLength > 0) throw new RangeError(`directory member "${member.name}" cannot have data`);
    if (member.bytes.byteLength > MAX_USTAR_SIZE) throw new RangeError(`member "${member.name}" is ${member.bytes.byteLength} bytes; encodeTar writes members under 8 GiB`);
    const nameBytes = ENCODER.encode(member.name);
    if (nameBytes.byteLength === 0) throw new RangeError('a tar member name cannot be empty');
    let ustarName: Uint8Array = nameBytes;
    let ustarPrefix: Uint8Array = empty;
    if (nameBytes.byteLength > 100) {
      const split = longNames === 'auto' ? splitUstarName(nameBytes) : undefined;
      if (split !== undefined) {
        ustarName = split.name;
        ustarPrefix = split.prefix;
      } else if (longNames === 'gnu') {
        const data = new Uint8Array(nameBytes.byteLength + 1);
        data.set(nameBytes);
        parts.push(headerBlock(ENCODER.encode('././@LongLink'), empty, data.byteLength, 'L'));
        pushData(data);
      } else {
        const data = paxRecord('path', member.name);
        parts.push(headerBlock(ENCODER.encode('././@PaxHeader'), empty, data.byteLength, 'x'));
        pushData(data);
      }
    }
    parts.push(headerBlock(ustarName, ustarPrefix, member.bytes.byteLength, typeflag));
    pushData(member.bytes);
  }
  parts.push(new Uint8Array(2 * TAR_BLOCK_BYTES));
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}
