// Property-based fuzzing of the manifest parsers a job's data passes through: the
// line-record parsers (`lines`, `csv`, `jsonl`) and the tar reader behind `webdataset`.
// Whatever bytes a manifest or shard holds, the parser yields well-formed entries or throws
// its own error class (ManifestRecordError, TarFormatError), never a TypeError or a
// RangeError from inside, never a hang. Cases: 3 × 1,500 record + 1,000 CSV round-trip +
// 4 × 1,500 tar = 11,500 in all.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createRecordParser, type LineManifestFormat, type RecordParser } from './manifest-format.ts';
import { ManifestRecordError, type ManifestEntry } from './manifest-record.ts';
import { bytesTarSource, encodeTar, readTarMembers, TAR_BLOCK_BYTES, TarFormatError, type TarMemberInput } from './tar-format.ts';

const RUNS = { records: 1500, csvRoundTrip: 1000, tar: 1500 } as const;

// ---------------------------------------------------------------------------------------
// Line records

/** Text from the characters the three line formats branch on, plus arbitrary code units. */
const recordText = fc.oneof(
  fc.string({ maxLength: 120, unit: 'binary' }),
  fc.string({ maxLength: 120, unit: 'grapheme' }),
  fc
    .array(
      fc.constantFrom(',', '"', '""', '\t', '{', '}', '[', ']', ':', ' ', 'key', 'label', '"key"', '"label"', '\uFEFF', 'null', '1', '-1', '1.5', '1e400', 'true', '\\', '\\u0000', 'é', '\uD800', '\r', 'img/1.jpg'),
      { maxLength: 40 },
    )
    .map((tokens) => tokens.join('')),
  // JSON objects with `key` and `label` of every JSON type (and the odd extra key).
  fc
    .record(
      { key: fc.oneof(fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 2 })), label: fc.oneof(fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 2 })), __proto__: fc.jsonValue({ maxDepth: 1 }) },
      { requiredKeys: [] },
    )
    .map((value) => JSON.stringify(value)),
  fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)),
);

/** Offsets a split may hand a parser: the first record, small ones and the safe-integer edge. */
const recordOffset = fc.oneof(fc.constant(0), fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER));

/** CSV headers, mostly ones that name a `key` column so rows get parsed at all. */
const csvHeader = fc.oneof(
  fc.constantFrom('key', 'key,label', 'label,key', '\uFEFFkey,label', ' key , label ,extra', '"key","label"', 'a,b,key'),
  recordText,
);

type RecordOutcome = { readonly entry: ManifestEntry | null } | { readonly error: ManifestRecordError };

/** Runs `call`; anything thrown other than a ManifestRecordError fails the property with that error. */
function recordOutcome(call: () => ManifestEntry | null): RecordOutcome {
  try {
    return { entry: call() };
  } catch (error) {
    if (!(error instanceof ManifestRecordError)) throw error;
    expect(error.code).toBe('invalid_manifest_record');
    return { error };
  }
}

/** Builds the parser (which may refuse a CSV header) and parses one record with it. */
function expectCleanRecord(format: LineManifestFormat, header: string, offset: number, text: string): void {
  let parser: RecordParser | undefined;
  const made = recordOutcome(() => {
    parser = createRecordParser(format, { header });
    return null;
  });
  if ('error' in made) {
    expect(format).toBe('csv');
    expect(made.error.offset).toBe(0);
    return;
  }
  const result = recordOutcome(() => (parser as RecordParser).parse({ offset, text }));
  if ('error' in result) {
    expect(result.error.offset).toBe(offset);
    return;
  }
  const { entry } = result;
  if (entry === null) {
    // Only the CSV header row is "not a sample".
    expect(format).toBe('csv');
    expect(offset).toBe(0);
    return;
  }
  expect(entry.offset).toBe(offset);
  expect(typeof entry.key).toBe('string');
  expect(entry.key).not.toBe('');
  expect(Object.keys(entry).every((name) => name === 'offset' || name === 'key' || name === 'label')).toBe(true);
  if ('label' in entry) {
    expect(typeof entry.label).toBe('string');
    expect(entry.label).not.toBe('');
  }
}

/** One CSV field as a careful writer would put it: quoted when it holds a comma or a quote. */
function csvField(value: string): string {
  return /[",]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

describe('manifest record fuzzing: an entry or a ManifestRecordError', () => {
  for (const format of ['lines', 'csv', 'jsonl'] as const) {
    it(`${format} on arbitrary lines`, () => {
      fc.assert(
        fc.property(csvHeader, recordOffset, recordText, (header, offset, text) => {
          expectCleanRecord(format, header, offset, text);
        }),
        { numRuns: RUNS.records },
      );
    });
  }

  it('csv reads back every row a careful writer wrote', () => {
    // Keys and labels without line breaks (records never span lines); the key non-empty.
    const cell = (minLength: number): fc.Arbitrary<string> =>
      fc.string({ minLength, maxLength: 30, unit: 'grapheme' }).filter((value) => !/[\r\n]/.test(value));
    fc.assert(
      fc.property(cell(1), cell(0), fc.boolean(), fc.integer({ min: 1, max: 1 << 30 }), (key, label, labelFirst, offset) => {
        const parser = createRecordParser('csv', { header: labelFirst ? 'label,key' : 'key,label' });
        const text = (labelFirst ? [label, key] : [key, label]).map(csvField).join(',');
        expect(parser.parse({ offset, text })).toEqual(label === '' ? { offset, key } : { offset, key, label });
      }),
      { numRuns: RUNS.csvRoundTrip },
    );
  });
});

// ---------------------------------------------------------------------------------------
// Tar

interface ReadBack {
  readonly path: string;
  readonly type: string;
  readonly data: Uint8Array | undefined;
}

/**
 * Reads every member of `tar` (the data of those `readData` picks), checking each member's
 * offsets as it goes. Returns the members, or the TarFormatError that stopped the read;
 * anything else thrown fails the property.
 */
async function readTar(tar: Uint8Array, readData: (index: number) => boolean, maxExtensionBytes?: number): Promise<{ members: ReadBack[] } | { error: TarFormatError }> {
  const members: ReadBack[] = [];
  try {
    const options = maxExtensionBytes === undefined ? {} : { maxExtensionBytes };
    for await (const entry of readTarMembers(bytesTarSource(tar), options)) {
      expect(entry.headerOffset % TAR_BLOCK_BYTES).toBe(0);
      expect(entry.dataOffset).toBeGreaterThan(entry.headerOffset);
      expect(Number.isSafeInteger(entry.sizeBytes) && entry.sizeBytes >= 0).toBe(true);
      expect(entry.nextOffset).toBeGreaterThanOrEqual(entry.dataOffset + entry.sizeBytes);
      expect(entry.nextOffset % TAR_BLOCK_BYTES).toBe(0);
      // Every member takes at least one header block, so a read that yields more members
      // than the archive has blocks is looping.
      expect(members.length).toBeLessThan(tar.byteLength / TAR_BLOCK_BYTES);
      const data = readData(members.length) ? await entry.readData() : undefined;
      if (data !== undefined) expect(data.byteLength).toBe(entry.sizeBytes);
      members.push({ path: entry.path, type: entry.type, data });
    }
  } catch (error) {
    if (!(error instanceof TarFormatError)) throw error;
    expect(error.code).toBe('invalid_tar');
    expect(Number.isSafeInteger(error.offset) && error.offset >= 0).toBe(true);
    return { error };
  }
  return { members };
}

/** Member names: valid Unicode without NUL (a C string field ends there), some long enough for pax / GNU headers. */
const memberName = fc
  .oneof(fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }), fc.string({ minLength: 90, maxLength: 300, unit: 'grapheme' }), fc.constantFrom('a/b/c.jpg', `${'d/'.repeat(80)}x.png`))
  .filter((name) => !name.includes('\u0000') && !name.endsWith('/'));

const memberInput: fc.Arbitrary<TarMemberInput> = fc.oneof(
  fc.record({ name: memberName, bytes: fc.uint8Array({ maxLength: 1100 }) }),
  fc.record({ name: memberName.map((name) => `${name}/`), bytes: fc.constant(new Uint8Array(0)), type: fc.constant('directory' as const) }),
);

const archive = fc.record({
  members: fc.array(memberInput, { maxLength: 4 }),
  longNames: fc.constantFrom<'auto' | 'pax' | 'gnu'>('auto', 'pax', 'gnu'),
});

const MAGIC = new TextEncoder().encode('ustar');

/**
 * Rewrites the checksum of every block that looks like a ustar header, so header mutations
 * get past the checksum test and reach the field parsers behind it.
 */
function fixChecksums(tar: Uint8Array): Uint8Array {
  for (let start = 0; start + TAR_BLOCK_BYTES <= tar.byteLength; start += TAR_BLOCK_BYTES) {
    if (!MAGIC.every((byte, i) => tar[start + 257 + i] === byte)) continue;
    tar.fill(0x20, start + 148, start + 156);
    let sum = 0;
    for (let i = start; i < start + TAR_BLOCK_BYTES; i++) sum += tar[i] as number;
    new TextEncoder().encodeInto(`${sum.toString(8).padStart(6, '0')}\u0000 `, tar.subarray(start + 148, start + 156));
  }
  return tar;
}

/** Header fields where a mutation matters most: name, mode, size, checksum, typeflag, magic, prefix. */
const HEADER_HOTSPOTS = [0, 99, 100, 124, 130, 135, 136, 148, 156, 257, 263, 345, 499];

/** Bytes an attacker or a bad disk might write into a size or pax field. */
const hostileByte = fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x00, 0x20, 0x30, 0x37, 0x38, 0x39, 0x80, 0xff, 0x2d, 0x3d, 0x0a, 0x78, 0x67, 0x4c, 0x4b, 0x35));

/** An encoded archive with a few bytes overwritten (some at header hotspots), maybe truncated, maybe re-checksummed. */
const damagedArchive = fc
  .tuple(
    archive,
    fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.nat({ max: HEADER_HOTSPOTS.length - 1 }), fc.nat({ max: 11 }), hostileByte), { minLength: 1, maxLength: 6 }),
    fc.option(fc.nat(), { nil: undefined }),
    fc.boolean(),
  )
  .map(([{ members, longNames }, edits, cutAt, rechecksum]) => {
    let tar = encodeTar(members, { longNames });
    for (const [atHotspot, anywhere, hotspot, within, byte] of edits) {
      const blocks = Math.max(1, Math.floor(tar.byteLength / TAR_BLOCK_BYTES));
      const at = atHotspot ? (anywhere % blocks) * TAR_BLOCK_BYTES + (HEADER_HOTSPOTS[hotspot] as number) + within : anywhere % Math.max(1, tar.byteLength);
      if (at < tar.byteLength) tar[at] = byte;
    }
    if (rechecksum) tar = fixChecksums(tar);
    if (cutAt !== undefined) tar = tar.subarray(0, cutAt % (tar.byteLength + 1));
    return tar;
  });

describe('tar fuzzing: members or a TarFormatError', () => {
  it('reads back every archive encodeTar writes', async () => {
    await fc.assert(
      fc.asyncProperty(archive, async ({ members, longNames }) => {
        const result = await readTar(encodeTar(members, { longNames }), () => true);
        expect(result).toEqual({
          members: members.map((member) => ({ path: member.name, type: member.type ?? 'file', data: member.bytes })),
        });
      }),
      { numRuns: RUNS.tar },
    );
  });

  it('arbitrary bytes', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.uint8Array({ maxLength: 2048 }), fc.uint8Array({ minLength: 512, maxLength: 512 }).map(fixChecksums)),
        fc.func(fc.boolean()),
        async (tar, readData) => {
          await readTar(tar, readData);
        },
      ),
      { numRuns: RUNS.tar },
    );
  });

  it('damaged archives, data read or skipped', async () => {
    await fc.assert(
      fc.asyncProperty(damagedArchive, fc.func(fc.boolean()), async (tar, readData) => {
        await readTar(tar, readData);
      }),
      { numRuns: RUNS.tar },
    );
  });

  it('damaged archives under a small extension-header limit', async () => {
    await fc.assert(
      fc.asyncProperty(damagedArchive, fc.nat({ max: 600 }), async (tar, maxExtensionBytes) => {
        await readTar(tar, () => true, maxExtensionBytes);
      }),
      { numRuns: RUNS.tar },
    );
  });
});
