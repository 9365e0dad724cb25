import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createRecordParser, readManifestHeader } from './manifest-format.ts';
import type { LineManifestFormat, RecordParser } from './manifest-format.ts';
import { ManifestRecordError, parseManifestRecord } from './manifest-record.ts';
import type { ManifestEntry } from './manifest-record.ts';
import { planManifestSplits, readSplitRecords } from './manifest-splits.ts';
import { memoryS3 } from './testing/memory-s3.ts';
import { startTestS3 } from './testing/s3.ts';
import type { TestS3 } from './testing/s3.ts';

const encoder = new TextEncoder();

interface Sample {
  readonly key: string;
  readonly label?: string;
}

/** How one format writes a manifest, for the conformance suite. */
interface FormatCase {
  readonly format: LineManifestFormat;
  readonly header?: string;
  /** Whether the format can carry this sample at all (a TAB cannot be in a `lines` key). */
  readonly represents: (sample: Sample) => boolean;
  readonly line: (sample: Sample, index: number) => string;
}

function csvField(value: string): string {
  return /[",]/.test(value) || value !== value.trim() ? `"${value.replaceAll('"', '""')}"` : value;
}

const FORMATS: readonly FormatCase[] = [
  {
    format: 'lines',
    represents: (sample) => !sample.key.includes('\t') && !(sample.label ?? '').includes('\t'),
    line: (sample) => (sample.label === undefined ? sample.key : `${sample.key}\t${sample.label}`),
  },
  {
    format: 'csv',
    // Columns in an unusual order, with one the parser must ignore.
    header: 'width,label,key,source',
    represents: () => true,
    line: (sample, index) => [String(index), sample.label ?? '', sample.key, 'x,"y"'].map(csvField).join(','),
  },
  {
    format: 'jsonl',
    represents: () => true,
    line: (sample, index) => {
      const numeric = sample.label !== undefined && /^-?\d+$/.test(sample.label) && index % 2 === 0;
      return JSON.stringify({ id: index, key: sample.key, ...(sample.label !== undefined && { label: numeric ? Number(sample.label) : sample.label }), tags: ['a'] });
    },
  },
];

const SAMPLES: readonly Sample[] = [
  { key: 'img/0.jpg', label: '3' },
  { key: 'img/1.jpg' },
  { key: 'train/n01440764/img_1.JPEG', label: 'n01440764' },
  { key: 'with space/a b.png', label: 'two words' },
  { key: 'comma,in,key.png', label: 'comma, label' },
  { key: 'quote"key.png', label: '"quoted"' },
  { key: 'tab\tkey.png', label: '7' },
  { key: 'é漢/ü.png', label: '-12' },
  { key: ' leading-space.png' },
];

/** A manifest for `format`, with CRLF and blank lines mixed in, and the entries it must parse to. */
function buildManifest(format: FormatCase): { bytes: Uint8Array; entries: ManifestEntry[] } {
  let text = format.header === undefined ? '' : `${format.header}\r\n`;
  const entries: ManifestEntry[] = [];
  for (const [index, sample] of SAMPLES.filter(format.represents).entries()) {
    if (index % 4 === 3) text += '\n';
    const offset = encoder.encode(text).byteLength;
    entries.push({ offset, key: sample.key, ...(sample.label !== undefined && { label: sample.label }) });
    text += format.line(sample, index) + (index % 3 === 1 ? '\r\n' : '\n');
  }
  return { bytes: encoder.encode(text.replace(/\n$/, '')), entries };
}

function parseRecord(parser: RecordParser, text: string, offset = 10): ManifestEntry | null {
  return parser.parse({ offset, text });
}

describe('manifest format conformance (every format, every split)', () => {
  for (const format of FORMATS) {
    it(`${format.format}: the header and the records of every split parse to the manifest's samples, by offset`, async () => {
      const { bytes, entries } = buildManifest(format);
      const { client } = memoryS3(new Map([['m', bytes]]), 7);
      const header = await readManifestHeader(client, 'b', 'm');
      expect(header).toBe(format.header ?? format.line(SAMPLES[0]!, 0));
      const parser = createRecordParser(format.format, { header });
      expect(parser.format).toBe(format.format);
      for (const splitCount of [1, 2, 3, 5, 8, 13]) {
        const parsed: ManifestEntry[] = [];
        for (const split of planManifestSplits({ sizeBytes: bytes.byteLength, splitCount })) {
          for await (const record of readSplitRecords(client, 'b', 'm', split, { blockBytes: 16 })) {
            const entry = parser.parse(record);
            if (entry !== null) parsed.push(entry);
          }
        }
        expect(parsed, `${format.format}, ${splitCount} splits`).toEqual(entries);
      }
    });
  }
});

describe('createRecordParser', () => {
  it('lines: is parseManifestRecord', () => {
    const parser = createRecordParser('lines');
    for (const text of ['a.jpg', 'a.jpg\t3', 'é.png\tn0']) expect(parseRecord(parser, text)).toEqual(parseManifestRecord({ offset: 10, text }));
    expect(() => parseRecord(parser, 'a\tb\tc')).toThrow(ManifestRecordError);
    // Lines have no header: the record at offset 0 is a sample.
    expect(parseRecord(parser, 'first.jpg', 0)).toEqual({ offset: 0, key: 'first.jpg' });
  });

  it('csv: RFC 4180 fields within one line', () => {
    const parser = createRecordParser('csv', { header: 'key,label' });
    expect(parseRecord(parser, 'key,label', 0)).toBeNull();
    expect(parseRecord(parser, 'a.jpg,3')).toEqual({ offset: 10, key: 'a.jpg', label: '3' });
    expect(parseRecord(parser, '"a,b.jpg","say ""hi"""')).toEqual({ offset: 10, key: 'a,b.jpg', label: 'say "hi"' });
    expect(() => parseRecord(parser, '"",3')).toThrow(/"key" field is empty/);
    expect(parseRecord(parser, 'a.jpg,')).toEqual({ offset: 10, key: 'a.jpg' });
    expect(parseRecord(parser, 'a.jpg,"",extra,"more,1"')).toEqual({ offset: 10, key: 'a.jpg' });
    expect(parseRecord(parser, ' a.jpg , 3 ')).toEqual({ offset: 10, key: ' a.jpg ', label: ' 3 ' });
    // Only a key column: labels are absent, extra fields ignored.
    expect(parseRecord(createRecordParser('csv', { header: 'path,key' }), 'x,b.png,z')).toEqual({ offset: 10, key: 'b.png' });
  });

  it('csv: bad rows name what is wrong and what is expected', () => {
    const parser = createRecordParser('csv', { header: 'key,label,split' });
    const failure = (text: string): ManifestRecordError => {
      try {
        parseRecord(parser, text, 42);
      } catch (error) {
        expect(error).toBeInstanceOf(ManifestRecordError);
        return error as ManifestRecordError;
      }
      throw new Error(`${text} parsed`);
    };
    expect(failure('"a.jpg,3,train')).toMatchObject({
      offset: 42,
      message: expect.stringMatching(/^manifest line at byte 42: field 1 opens a quote.*quoted newlines are not supported, because manifests are split at line boundaries/) as unknown,
    });
    expect(failure('a.jpg,3').message).toMatch(/the CSV row has 2 field\(s\), the header 3 \("key", "label", "split"\)/);
    expect(failure(',3,train').message).toMatch(/"key" field is empty/);
    expect(failure('"a.jpg"x,3,train').message).toMatch(/text after its closing quote/);
    expect(failure('a"b.jpg,3,train').message).toMatch(/quote inside an unquoted field/);
  });

  it('csv: the header must exist and name a key column', () => {
    expect(() => createRecordParser('csv')).toThrow(/needs its header line/);
    expect(() => createRecordParser('csv', { header: '' })).toThrow(ManifestRecordError);
    expect(() => createRecordParser('csv', { header: 'path,class' })).toThrow(/columns "path", "class"; a "key" column \(the object key\) is required/);
    expect(() => createRecordParser('csv', { header: 'key,key' })).toThrow(/"key" appears more than once/);
    expect(() => createRecordParser('csv', { header: '"key,label' })).toThrow(/header line is malformed/);
    // A byte order mark, quoted names and spaces around names are accepted.
    const parser = createRecordParser('csv', { header: '\uFEFF"key", label ' });
    expect(parseRecord(parser, 'a.png,1')).toEqual({ offset: 10, key: 'a.png', label: '1' });
  });

  it('jsonl: objects with a string key and a string or integer label', () => {
    const parser = createRecordParser('jsonl');
    expect(parseRecord(parser, '{"key": "a.jpg"}', 0)).toEqual({ offset: 0, key: 'a.jpg' });
    expect(parseRecord(parser, '\uFEFF{"key": "a.jpg"}', 0)).toEqual({ offset: 0, key: 'a.jpg' });
    expect(parseRecord(parser, '{"key": "a.jpg", "label": 7, "w": [1]}')).toEqual({ offset: 10, key: 'a.jpg', label: '7' });
    expect(parseRecord(parser, '{"key": "a.jpg", "label": -3}')).toEqual({ offset: 10, key: 'a.jpg', label: '-3' });
    expect(parseRecord(parser, '{"key": "a.jpg", "label": "cat"}')).toEqual({ offset: 10, key: 'a.jpg', label: 'cat' });
    expect(parseRecord(parser, '{"key": "a.jpg", "label": null}')).toEqual({ offset: 10, key: 'a.jpg' });
  });

  it('jsonl: bad lines name the field and what is expected', () => {
    const parser = createRecordParser('jsonl');
    const cases: [string, RegExp][] = [
      ['{"key": "a.jpg"', /^manifest line at byte 10: the line is not valid JSON \(.*\); expected an object/],
      ['["a.jpg"]', /the line is an array, expected a JSON object with a string "key"/],
      ['"a.jpg"', /the line is a string, expected a JSON object/],
      ['null', /the line is null/],
      ['{"label": 1}', /field "key" is missing, expected the object key as a string/],
      ['{"key": 5}', /field "key" is a number, expected the object key as a string/],
      ['{"key": ""}', /field "key" is empty/],
      ['{"key": "a", "label": 1.5}', /field "label" is a non-integer number \(1\.5\), expected a string or an integer/],
      ['{"key": "a", "label": true}', /field "label" is a boolean/],
      ['{"key": "a", "label": [1]}', /field "label" is an array \(\[1\]\)/],
      ['{"key": {"s3": "a"}}', /field "key" is an object/],
      ['{"key": "a", "label": ""}', /field "label" is an empty string/],
    ];
    for (const [text, message] of cases) {
      expect(() => parseRecord(parser, text), text).toThrow(ManifestRecordError);
      expect(() => parseRecord(parser, text), text).toThrow(message);
    }
  });
});

describe('readManifestHeader', () => {
  it('reads only the first line, without its line ending; empty for an empty object or first line', async () => {
    const long = `key,${'c'.repeat(10_000)}`;
    const objects = new Map([
      ['empty', new Uint8Array(0)],
      ['crlf', encoder.encode('key,label\r\na.jpg,1\r\n')],
      ['no-newline', encoder.encode('key')],
      ['blank-first', encoder.encode('\nkey,label\n')],
      ['long', encoder.encode(`${long}\n${'x'.repeat(100_000)}\n`)],
    ]);
    const { client, requests } = memoryS3(objects, 4096);
    expect(await readManifestHeader(client, 'b', 'empty')).toBe('');
    expect(await readManifestHeader(client, 'b', 'crlf')).toBe('key,label');
    expect(await readManifestHeader(client, 'b', 'no-newline')).toBe('key');
    expect(await readManifestHeader(client, 'b', 'blank-first')).toBe('');
    expect(await readManifestHeader(client, 'b', 'long')).toBe(long);
    const fetched = requests.filter((r) => r.key === 'long' && r.range !== undefined).reduce((total, r) => total + r.range![1] - r.range![0], 0);
    expect(fetched).toBeLessThan(2 * long.length);
  });

  it('pins its GETs to the given ETag, else to the one HeadObject reports', async () => {
    const { client: inner } = memoryS3(new Map([['m', encoder.encode('key\na\n')]]));
    const sent: (string | undefined)[] = [];
    const client = {
      send: (command: unknown, options?: unknown) => {
        if (command instanceof GetObjectCommand) sent.push(command.input.IfMatch);
        return (inner.send as (c: unknown, o?: unknown) => Promise<unknown>)(command, options);
      },
    } as unknown as S3Client;
    expect(await readManifestHeader(client, 'b', 'm', { etag: '"planned"' })).toBe('key');
    expect(await readManifestHeader(client, 'b', 'm')).toBe('key');
    expect(new Set(sent)).toEqual(new Set(['"planned"', '"memory"']));
  });

  describe('against s3rver', () => {
    let s3: TestS3;
    beforeAll(async () => {
      s3 = await startTestS3();
    });
    afterAll(async () => {
      await s3.close();
    });

    it('reads the header and lets a missing object fail as S3 says', async () => {
      const put = await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'm.csv', Body: 'key,label\na.jpg,1\n' }));
      expect(await readManifestHeader(s3.client, s3.bucket, 'm.csv', { ...(put.ETag !== undefined && { etag: put.ETag }) })).toBe('key,label');
      await expect(readManifestHeader(s3.client, s3.bucket, 'missing.csv')).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
    });
  });
});
