import type { S3Client } from '@aws-sdk/client-s3';

import { ManifestRecordError, parseManifestRecord } from './manifest-record.ts';
import type { ManifestEntry } from './manifest-record.ts';
import { readSplitRecords, statManifest } from './manifest-splits.ts';
import type { ManifestRecord } from './manifest-splits.ts';

/**
 * Manifest formats whose records are single lines (`spec.data.format` other than
 * `webdataset`): `lines` (`key` or `key<TAB>label`), `csv` (RFC 4180 within one line, a
 * header line naming a `key` and optionally a `label` column) and `jsonl` (one JSON object
 * per line with a string `key` and an optional `label`). Manifests are split at line
 * boundaries (manifest-splits.ts), so a record can never span lines: CSV quoted newlines
 * are refused, not parsed.
 */

/** Formats whose records are one line each. */
export type LineManifestFormat = 'lines' | 'csv' | 'jsonl';

/** Turns manifest records into entries for one format. */
export interface RecordParser {
  /** The format parsed. */
  readonly format: LineManifestFormat;
  /**
   * The entry of one record, or null for a record that is not a sample (the CSV header,
   * the record at offset 0). Throws {@link ManifestRecordError} saying what is wrong with
   * the line and what is expected.
   */
  parse(record: ManifestRecord): ManifestEntry | null;
}

/** Options of {@link createRecordParser}. */
export interface RecordParserOptions {
  /** The manifest's first line (see {@link readManifestHeader}); required for `csv`, ignored otherwise. */
  readonly header?: string;
}

const BYTE_ORDER_MARK = '\uFEFF';

/** Why a CSV line did not split into fields, or its fields. */
type CsvFields = { readonly fields: string[] } | { readonly error: string };

/**
 * Fields of one CSV line (RFC 4180 section 2, restricted to one line): comma-separated;
 * a field that starts with `"` is quoted, may hold commas, and writes `"` as `""`; after
 * the closing quote comes a comma or the end of the line. Spaces are part of fields.
 */
function splitCsvLine(line: string): CsvFields {
  const fields: string[] = [];
  let at = 0;
  for (;;) {
    if (line.charCodeAt(at) === 0x22) {
      let value = '';
      let from = at + 1;
      for (;;) {
        const quote = line.indexOf('"', from);
        if (quote === -1) {
          return {
            error: `field ${fields.length + 1} opens a quote that is not closed on this line; quoted newlines are not supported, because manifests are split at line boundaries (keep each record on one line)`,
          };
        }
        value += line.slice(from, quote);
        if (line.charCodeAt(quote + 1) === 0x22) {
          value += '"';
          from = quote + 2;
          continue;
        }
        at = quote + 1;
        break;
      }
      fields.push(value);
      if (at === line.length) return { fields };
      if (line.charCodeAt(at) !== 0x2c) {
        return { error: `field ${fields.length} has text after its closing quote (expected a comma or the end of the line; write a quote inside a quoted field as "")` };
      }
      at++;
    } else {
      const comma = line.indexOf(',', at);
      const value = comma === -1 ? line.slice(at) : line.slice(at, comma);
      if (value.includes('"')) {
        return { error: `field ${fields.length + 1} has a quote inside an unquoted field (quote the whole field and write the quote as "")` };
      }
      fields.push(value);
      if (comma === -1) return { fields };
      at = comma + 1;
    }
  }
}

function linesParser(): RecordParser {
  return { format: 'lines', parse: parseManifestRecord };
}

function csvParser(header: string | undefined): RecordParser {
  if (header === undefined || header.trim() === '') {
    throw new ManifestRecordError(
      0,
      'a CSV manifest needs its header line (e.g. "key,label"), read with readManifestHeader; the manifest is empty or its first line is empty',
    );
  }
  const split = splitCsvLine(header.startsWith(BYTE_ORDER_MARK) ? header.slice(1) : header);
  if ('error' in split) throw new ManifestRecordError(0, `the CSV header line is malformed: ${split.error}`);
  const columns = split.fields.map((name) => name.trim());
  const keyColumn = columns.indexOf('key');
  const labelColumn = columns.indexOf('label');
  const listed = columns.map((name) => JSON.stringify(name)).join(', ');
  if (keyColumn === -1) throw new ManifestRecordError(0, `the CSV header has columns ${listed}; a "key" column (the object key) is required`);
  for (const name of ['key', 'label']) {
    if (columns.indexOf(name) !== columns.lastIndexOf(name)) throw new ManifestRecordError(0, `the CSV header has columns ${listed}; "${name}" appears more than once`);
  }
  const columnCount = columns.length;
  return {
    format: 'csv',
    parse(record) {
      const { offset, text } = record;
      if (offset === 0) return null;
      const row = splitCsvLine(text);
      if ('error' in row) throw new ManifestRecordError(offset, row.error);
      const { fields } = row;
      if (fields.length < columnCount) {
        throw new ManifestRecordError(offset, `the CSV row has ${fields.length} field(s), the header ${columnCount} (${listed}); every row needs all of them`);
      }
      const key = fields[keyColumn] ?? '';
      if (key === '') throw new ManifestRecordError(offset, 'the "key" field is empty (expected the object key)');
      // An empty cell is how CSV says "no label".
      const label = labelColumn === -1 ? '' : (fields[labelColumn] ?? '');
      return label === '' ? { offset, key } : { offset, key, label };
    },
  };
}

function jsonlParser(): RecordParser {
  return {
    format: 'jsonl',
    parse(record) {
      const { offset } = record;
      const text = offset === 0 && record.text.startsWith(BYTE_ORDER_MARK) ? record.text.slice(1) : record.text;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        throw new ManifestRecordError(offset, `the line is not valid JSON (${reason}); expected an object such as {"key": "img/1.jpg", "label": "3"}`);
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        throw new ManifestRecordError(offset, `the line is ${jsonType(value)}, expected a JSON object with a string "key"`);
      }
      const { key, label } = value as { key?: unknown; label?: unknown };
      if (typeof key !== 'string') {
        throw new ManifestRecordError(offset, `field "key" is ${key === undefined ? 'missing' : jsonType(key)}, expected the object key as a string`);
      }
      if (key === '') throw new ManifestRecordError(offset, 'field "key" is empty, expected the object key');
      if (label === undefined || label === null) return { offset, key };
      if (typeof label === 'string') {
        if (label === '') throw new ManifestRecordError(offset, 'field "label" is an empty string; omit it (or use null) for an unlabelled sample');
        return { offset, key, label };
      }
      if (typeof label === 'number' && Number.isSafeInteger(label)) return { offset, key, label: String(label) };
      throw new ManifestRecordError(offset, `field "label" is ${jsonType(label)} (${JSON.stringify(label)}), expected a string or an integer`);
    },
  };
}

/** A JSON value's type, with its article, for messages: `a string`, `an array`, `null`. */
function jsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'number') return Number.isSafeInteger(value) ? 'a number' : 'a non-integer number';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/**
 * A parser for `format`. `lines` is {@link parseManifestRecord}. `csv` needs
 * `options.header`, the manifest's first line, whose `key` column (required) and `label`
 * column (optional) are located by name; it throws {@link ManifestRecordError} (offset 0)
 * when the header is missing, malformed or has no `key` column. A UTF-8 byte order mark before the
 * header (or the first JSON line) is ignored; column names are matched after trimming spaces.
 *
 * Rows: extra CSV columns are ignored, missing ones are an error, an empty `label` cell means
 * no label. JSONL `label` may be a string, an integer (its decimal text) or null/absent.
 */
export function createRecordParser(format: LineManifestFormat, options: RecordParserOptions = {}): RecordParser {
  switch (format) {
    case 'lines':
      return linesParser();
    case 'csv':
      return csvParser(options.header);
    case 'jsonl':
      return jsonlParser();
  }
}

/** Options of {@link readManifestHeader}. */
export interface ReadManifestHeaderOptions {
  /** ETag from planning; the read fails (412) if the object was replaced since. */
  readonly etag?: string;
  /** Cancels the reads. */
  readonly signal?: AbortSignal;
}

/**
 * The text of the manifest's record at offset 0 (its first line without the line ending),
 * or '' when the object is empty or its first line is empty. One HeadObject, then ranged
 * GETs that read only as far as the first `\n`.
 */
export async function readManifestHeader(s3: S3Client, bucket: string, key: string, options: ReadManifestHeaderOptions = {}): Promise<string> {
  // A ranged GET of an empty object fails (416), so the size comes first.
  const { sizeBytes, etag } = await statManifest(s3, bucket, key);
  if (sizeBytes === 0) return '';
  const pinned = options.etag ?? etag;
  const records = readSplitRecords(s3, bucket, key, { index: 0, start: 0, end: 1 }, {
    ...(pinned !== undefined && { etag: pinned }),
    ...(options.signal !== undefined && { signal: options.signal }),
  });
  for await (const record of records) return record.offset === 0 ? record.text : '';
  return '';
}
