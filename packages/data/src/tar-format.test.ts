import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';

import { bytesTarSource, encodeTar, readTarMembers, TAR_BLOCK_BYTES, TarFormatError } from './tar-format.ts';
import type { ReadTarMembersOptions, TarMemberInput } from './tar-format.ts';

const encoder = new TextEncoder();

interface ReadMember {
  readonly path: string;
  readonly type: string;
  readonly sizeBytes: number;
  readonly headerOffset: number;
  readonly dataOffset: number;
  readonly nextOffset: number;
  readonly data: number[];
}

async function readAll(tar: Uint8Array, from = 0, options: ReadTarMembersOptions = {}): Promise<ReadMember[]> {
  const out: ReadMember[] = [];
  for await (const entry of readTarMembers(bytesTarSource(tar, from), options)) {
    const { path, type, sizeBytes, headerOffset, dataOffset, nextOffset } = entry;
    out.push({ path, type, sizeBytes, headerOffset, dataOffset, nextOffset, data: [...(await entry.readData())] });
  }
  return out;
}

/** Reads until the parser throws; returns what came before and the error. */
async function readUntilError(tar: Uint8Array, options: ReadTarMembersOptions = {}): Promise<{ paths: string[]; error: unknown }> {
  const paths: string[] = [];
  try {
    for await (const entry of readTarMembers(bytesTarSource(tar), options)) paths.push(entry.path);
  } catch (error) {
    return { paths, error };
  }
  return { paths, error: undefined };
}

/** Applies `mutate` to the header block at `offset` and writes a valid checksum again. */
function rewriteHeader(tar: Uint8Array, offset: number, mutate: (block: Uint8Array) => void): Uint8Array {
  const out = tar.slice();
  const block = out.subarray(offset, offset + TAR_BLOCK_BYTES);
  mutate(block);
  block.fill(0x20, 148, 156);
  const sum = block.reduce((total, byte) => total + byte, 0);
  encoder.encodeInto(`${sum.toString(8).padStart(6, '0')}\u0000 `, block.subarray(148, 156));
  return out;
}

function bytesOf(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed * 7) & 0xff);
}

describe('encodeTar / readTarMembers', () => {
  it('round-trips members of every size class with exact offsets', async () => {
    const sizes = [0, 1, 511, 512, 513, 1500];
    const members: TarMemberInput[] = sizes.map((size, i) => ({ name: `m${i}.bin`, bytes: bytesOf(size, i) }));
    const tar = encodeTar(members);
    const expectedSize = sizes.reduce((total, size) => total + 512 + Math.ceil(size / 512) * 512, 0) + 1024;
    expect(tar.byteLength).toBe(expectedSize);

    const read = await readAll(tar);
    let offset = 0;
    expect(read).toEqual(
      sizes.map((size, i) => {
        const headerOffset = offset;
        offset += 512 + Math.ceil(size / 512) * 512;
        return {
          path: `m${i}.bin`,
          type: 'file',
          sizeBytes: size,
          headerOffset,
          dataOffset: headerOffset + 512,
          nextOffset: offset,
          data: [...bytesOf(size, i)],
        };
      }),
    );
  });

  it('starts at any header offset and yields the rest', async () => {
    const tar = encodeTar([0, 1, 2, 3].map((i) => ({ name: `f${i}`, bytes: bytesOf(600, i) })));
    const all = await readAll(tar);
    for (const [i, member] of all.entries()) expect(await readAll(tar, member.headerOffset)).toEqual(all.slice(i));
    expect(await readAll(tar, all.at(-1)!.nextOffset)).toEqual([]);
    await expect(readAll(tar, 100)).rejects.toThrow(/multiple of 512/);
  });

  it('writes long names with the ustar prefix, pax or GNU headers and reads them back', async () => {
    const prefixable = `${'dir/'.repeat(30)}${'x'.repeat(90)}.jpg`;
    const longBase = `d/${'y'.repeat(150)}.png`;
    const unicode = `${'é'.repeat(60)}/漢.cls`;
    const members = [prefixable, longBase, unicode].map((name, i) => ({ name, bytes: bytesOf(10 + i, i) }));
    for (const longNames of ['auto', 'pax', 'gnu'] as const) {
      const read = await readAll(encodeTar(members, { longNames }));
      expect(read.map((m) => m.path), longNames).toEqual([prefixable, longBase, unicode]);
      expect(read.map((m) => m.data)).toEqual(members.map((m) => [...m.bytes]));
    }
    // 'auto' needs no extra header for the name that splits at a '/'; the pax one starts at the extension header.
    const auto = await readAll(encodeTar(members));
    expect(auto[0]!.dataOffset - auto[0]!.headerOffset).toBe(512);
    expect(auto[1]!.dataOffset - auto[1]!.headerOffset).toBe(3 * 512);
    // Reading from the extension header's offset yields the long-named member first.
    const gnu = encodeTar(members, { longNames: 'gnu' });
    const gnuRead = await readAll(gnu);
    expect(gnuRead[1]!.dataOffset - gnuRead[1]!.headerOffset).toBe(3 * 512);
    expect((await readAll(gnu, gnuRead[1]!.headerOffset)).map((m) => m.path)).toEqual([longBase, unicode]);
  });

  it('reads directories without data and archives written by CPython tarfile (GNU and pax formats)', async () => {
    // tarfile.open(format=GNU_FORMAT / PAX_FORMAT) with a.jpg (b"hello"), a 1000-byte member
    // named 'd/' * 60 + 'x' * 90 + '.jpg' (a GNU L / pax path header), 'é漢/ü.cls' (b"3"), a directory 'sub'.
    const fixtures = {
      pax: 'H4sIAAAAAAACA+3YPwrCMBQG8GyCp+gJmj9N0knq6OgVoi0WKVisQs/j5h3cvIvnMFUQDWIHSSv2+3VI6JIhfHmPZ8J1uSJ+MUtLeVstd7XU0775r7UWJGCkA/tqZ7b2SDJMeVYUGwJDFdKQTuemnmUmzbb+8v8m94/MR5K95p8zwW3+a+TfOyFkUJpdPklpP1/tTVPZxkj4Z11ccUv957Fy8i+ksE8C6n8HRgDw9365/2NCof/rq//j9/bvfLycDvR8CpdFhaZpOJKEJs2d9zv/4c78J2Yx5j+diBCBQav2C+r7jPb8u3utoogECvkHAAAAAAAAAPjaFVxVgwgAKAAA',
      gnu: 'H4sIAAAAAAACA+3XSw7CIBQFUGZugxVAoXymLqCbqJ/UT1ONtYnrceYeOuteXIfowNhG02gCTew9DB5hwoBcHqRss8+IX5FjlHpUp1sd/TK/rxsjJaERCaAqj+mBUjJSq2We7wiMFeOMT5NdkSXrYusx/29y/8x8LG0n/9ZqS2iC/Hu34MOMkzcBGhrO/6vR0/+F1VE7/1JJV9D/A5gAwN/7lP/mcq3PvKnZPC+H+/+J9v0vhBQK938IMZ5Ao1ZWM+57j/78d+dG2ZhQjfwDAAAAAAAAAAAA/OwGKjsm2AAoAAA=',
    };
    const longName = `${'d/'.repeat(60)}${'x'.repeat(90)}.jpg`;
    for (const [format, base64] of Object.entries(fixtures)) {
      const read = await readAll(new Uint8Array(gunzipSync(Buffer.from(base64, 'base64'))));
      expect(read.map((m) => [m.path, m.type, m.sizeBytes, m.headerOffset]), format).toEqual([
        ['a.jpg', 'file', 5, 0],
        [longName, 'file', 1000, 1024],
        ['é漢/ü.cls', 'file', 1, 3584],
        ['sub/', 'directory', 0, format === 'gnu' ? 4608 : 5632],
      ]);
      expect(read[0]!.data).toEqual([...encoder.encode('hello')]);
      expect(read[1]!.data).toEqual(Array.from({ length: 1000 }, () => 7));
      expect(read[2]!.data).toEqual([0x33]);
    }
  });

  it('applies a pax size and reads a base-256 size field', async () => {
    const tar = encodeTar([{ name: 'a.bin', bytes: bytesOf(700, 1) }, { name: 'b.bin', bytes: bytesOf(3, 2) }]);
    // A base-256 size (GNU's form for sizes over 8 GiB) of 700.
    const base256 = rewriteHeader(tar, 0, (block) => {
      block.fill(0, 124, 136);
      block[124] = 0x80;
      block[134] = 700 >> 8;
      block[135] = 700 & 0xff;
    });
    expect((await readAll(base256)).map((m) => [m.path, m.sizeBytes, m.data.length])).toEqual([
      ['a.bin', 700, 700],
      ['b.bin', 3, 3],
    ]);
    // A pax size overrides the ustar field (written here as 0).
    const record = '12 size=700\n';
    const pax = encodeTar([{ name: 'hdr', bytes: encoder.encode(record) }]).subarray(0, 1024);
    const paxTar = new Uint8Array(pax.byteLength + base256.byteLength);
    paxTar.set(rewriteHeader(pax, 0, (block) => (block[156] = 0x78)));
    paxTar.set(rewriteHeader(tar, 0, (block) => encoder.encodeInto('00000000000\u0000', block.subarray(124, 136))), pax.byteLength);
    const read = await readAll(paxTar);
    expect(read.map((m) => [m.path, m.sizeBytes, m.headerOffset, m.dataOffset])).toEqual([
      ['a.bin', 700, 0, 1536],
      ['b.bin', 3, 2560, 3072],
    ]);
    expect(read[0]!.data).toEqual([...bytesOf(700, 1)]);
  });

  it('ends at two zero blocks, at a zero block before the end, or at the end of the object', async () => {
    const tar = encodeTar([{ name: 'a', bytes: bytesOf(5, 1) }]);
    const withTrailingJunk = new Uint8Array(tar.byteLength + 4096).fill(0x41);
    withTrailingJunk.set(tar);
    for (const bytes of [tar, tar.subarray(0, 1024), tar.subarray(0, 1536), withTrailingJunk]) {
      expect((await readAll(bytes)).map((m) => m.path)).toEqual(['a']);
    }
  });

  it('rejects a corrupt checksum, naming the archive and the header offset', async () => {
    const tar = encodeTar(['a.jpg', 'b.jpg', 'c.jpg'].map((name, i) => ({ name, bytes: bytesOf(100, i) })));
    const corrupt = tar.slice();
    corrupt[1024 + 3] = corrupt[1024 + 3]! ^ 0x01;
    const { paths, error } = await readUntilError(corrupt, { archiveName: 's3://b/shard.tar' });
    expect(paths).toEqual(['a.jpg']);
    expect(error).toBeInstanceOf(TarFormatError);
    expect(error).toMatchObject({ name: 'TarFormatError', code: 'invalid_tar', offset: 1024, archive: 's3://b/shard.tar' });
    expect((error as Error).message).toMatch(/^s3:\/\/b\/shard\.tar at byte 1024: header checksum mismatch/);

    // Bytes that are not a header at all (a read from a data offset).
    const notHeader = await readUntilError(encodeTar([{ name: 'x', bytes: new Uint8Array(1024).fill(0x61) }]).subarray(512));
    expect(notHeader.error).toMatchObject({ offset: 0, message: expect.stringMatching(/not a tar header/) as unknown });
  });

  it('reports truncation: inside a header, inside data (lazily), inside padding, after an extension header', async () => {
    const tar = encodeTar([
      { name: 'a.jpg', bytes: bytesOf(700, 1) },
      { name: 'b.jpg', bytes: bytesOf(10, 2) },
    ]);
    // Cut inside the second header: the first member is yielded whole.
    const inHeader = await readUntilError(tar.subarray(0, 1536 + 100));
    expect(inHeader.paths).toEqual(['a.jpg']);
    expect(inHeader.error).toMatchObject({ offset: 1536, message: expect.stringMatching(/inside a header \(100 of 512 bytes present\).*truncated/) as unknown });

    // Cut inside the first member's data: its header is yielded, readData throws.
    const inData = tar.subarray(0, 600);
    const entries = readTarMembers(bytesTarSource(inData), { archiveName: 't.tar' });
    const first = await entries.next();
    expect(first.value).toMatchObject({ path: 'a.jpg', sizeBytes: 700 });
    await expect((first.value as { readData(): Promise<Uint8Array> }).readData()).rejects.toMatchObject({
      name: 'TarFormatError',
      offset: 0,
      message: expect.stringMatching(/^t\.tar at byte 0: the archive ends at byte 600 inside member "a\.jpg"/) as unknown,
    });
    // Not reading the data: moving past the member throws instead.
    const skipping = await readUntilError(inData);
    expect(skipping.paths).toEqual(['a.jpg']);
    expect(skipping.error).toMatchObject({ name: 'TarFormatError', offset: 0 });

    // Cut inside the padding of the last member.
    expect((await readUntilError(tar.subarray(0, 1536 + 512 + 100))).error).toMatchObject({ offset: 1536 });

    // A GNU long-name header whose member is missing.
    const gnu = encodeTar([{ name: `${'z'.repeat(120)}.png`, bytes: bytesOf(3, 3) }], { longNames: 'gnu' });
    expect((await readUntilError(gnu.subarray(0, 1024))).error).toMatchObject({ offset: 0, message: expect.stringMatching(/extended header is not followed/) as unknown });
  });

  it('rejects a lone zero block followed by a header, an oversized extension and malformed pax records', async () => {
    const a = encodeTar([{ name: 'a', bytes: bytesOf(5, 1) }]);
    const b = encodeTar([{ name: 'b', bytes: bytesOf(5, 2) }]);
    const lone = new Uint8Array(1024 + 512 + b.byteLength);
    lone.set(a.subarray(0, 1024));
    lone.set(b, 1536);
    const { paths, error } = await readUntilError(lone);
    expect(paths).toEqual(['a']);
    expect(error).toMatchObject({ offset: 1536, message: expect.stringMatching(/single zero block at byte 1024.*concatenated/) as unknown });

    const long = encodeTar([{ name: `${'q'.repeat(300)}.jpg`, bytes: bytesOf(1, 1) }], { longNames: 'pax' });
    expect((await readUntilError(long, { maxExtensionBytes: 100 })).error).toMatchObject({ offset: 0, message: expect.stringMatching(/maxExtensionBytes \(100\)/) as unknown });

    const badPax = encodeTar([{ name: 'hdr', bytes: encoder.encode('99 path=x\n') }]);
    const malformed = rewriteHeader(badPax, 0, (block) => (block[156] = 0x78));
    expect((await readUntilError(malformed)).error).toMatchObject({ offset: 512, message: expect.stringMatching(/malformed pax/) as unknown });
  });

  it('skips the data of members whose data are not read', async () => {
    const tar = encodeTar([
      { name: 'big.bin', bytes: bytesOf(5000, 1) },
      { name: 'small.bin', bytes: bytesOf(3, 2) },
    ]);
    const reads: number[] = [];
    const source = bytesTarSource(tar);
    const counting = {
      get sizeBytes() {
        return source.sizeBytes;
      },
      get position() {
        return source.position;
      },
      read: (length: number) => {
        reads.push(length);
        return source.read(length);
      },
      skip: (length: number) => source.skip(length),
    };
    const paths: string[] = [];
    for await (const entry of readTarMembers(counting)) paths.push(entry.path);
    expect(paths).toEqual(['big.bin', 'small.bin']);
    // Headers only: two members and the end-of-archive marker's two blocks.
    expect(reads).toEqual([512, 512, 512, 512]);
  });

  it('refuses bad input to encodeTar', () => {
    expect(() => encodeTar([{ name: '', bytes: new Uint8Array(1) }])).toThrow(/empty/);
    expect(() => encodeTar([{ name: 'd/', bytes: new Uint8Array(1), type: 'directory' }])).toThrow(/cannot have data/);
  });
});
