/**
 * Job spec text (YAML or JSON) → a resolved {@link JobSpec}. Syntax errors and schema
 * issues alike become one {@link JobSpecError}, each issue with the line and column it
 * points at where the text has one.
 */
import { isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import { JobSpecError, type JobSpecIssue, type PathSegment } from './job-spec-error.ts';
import { JOB_SPEC_LIMITS, type JobSpec } from './job-spec-schema.ts';
import { jsonSyntaxErrorOffset } from './json-syntax.ts';
import { flowNestingDepth } from './nesting-depth.ts';
import { checkJobSpec, toJobSpecIssues } from './resolve-job-spec.ts';

/** The text formats a job spec may be written in. */
export type JobSpecFormat = 'yaml' | 'json';

/** Most YAML aliases expanded; a "billion laughs" document is refused, not expanded. */
const MAX_YAML_ALIASES = 100;
/** Most syntax errors listed; after the first few they are usually echoes of one mistake. */
const MAX_SYNTAX_ISSUES = 10;

/** A text parsed for positions: the document and its line index. */
interface PositionIndex {
  readonly document: Document.Parsed;
  readonly lines: LineCounter;
}

function parseYaml(text: string): PositionIndex {
  const lines = new LineCounter();
  const document = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    // YAML 1.2 core schema: `yes`/`no`/`on` stay strings, no merge keys, no custom tags.
    version: '1.2',
    schema: 'core',
    merge: false,
    uniqueKeys: true,
    strict: true,
  });
  return { document, lines };
}

function syntaxError(issues: JobSpecIssue[], cause?: unknown): JobSpecError {
  return new JobSpecError(issues, cause === undefined ? undefined : { cause });
}

function locate(lines: LineCounter, offset: number): { line: number; column: number } {
  const { line, col } = lines.linePos(offset);
  return { line, column: col };
}

/** 1-based line and column of `offset`, counted in UTF-16 code units like the YAML parser's. */
function textPosition(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart + 1 };
}

function readYaml(text: string): { value: unknown; index: PositionIndex } {
  const index = parseYaml(text);
  const { document, lines } = index;
  if (document.errors.length > 0) {
    const issues: JobSpecIssue[] = document.errors
      .slice(0, MAX_SYNTAX_ISSUES)
      .map((error) => ({ path: '', message: `YAML syntax error: ${error.message}`, ...locate(lines, error.pos[0]) }));
    const more = document.errors.length - issues.length;
    if (more > 0) issues.push({ path: '', message: `${more} more YAML syntax errors not shown` });
    throw syntaxError(issues);
  }
  try {
    return { value: document.toJS({ maxAliasCount: MAX_YAML_ALIASES }), index };
  } catch (error) {
    // yaml throws a ReferenceError when aliases expand past maxAliasCount.
    const message = error instanceof Error ? error.message : String(error);
    throw syntaxError([{ path: '', message: `YAML could not be read: ${message}` }], error);
  }
}

function readJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    const offset = jsonSyntaxErrorOffset(text) ?? text.length;
    const reason = error instanceof Error ? error.message.replace(/ in JSON at position \d+.*$/s, '') : String(error);
    throw syntaxError([{ path: '', message: `JSON syntax error: ${reason}`, ...textPosition(text, offset) }], error);
  }
}

/** The text offset of the node at `segments`, or of its nearest ancestor that exists. */
function nodeOffset(document: Document.Parsed, segments: readonly PathSegment[]): number | undefined {
  let node: unknown = document.contents;
  let offset: number | undefined = document.contents?.range?.[0];
  for (const segment of segments) {
    if (isMap(node)) {
      const pair = node.items.find((item) => String(isScalar(item.key) ? item.key.value : item.key) === String(segment));
      if (pair === undefined) break;
      // Point at the key: for a bad value it is on the same line, for an unknown key it is the culprit.
      if (isNode(pair.key) && pair.key.range) offset = pair.key.range[0];
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number') {
      const item = node.items[segment];
      if (!isNode(item) || !item.range) break;
      offset = item.range[0];
      node = item;
    } else {
      break;
    }
  }
  return offset;
}

/**
 * Parses and resolves a job spec written as YAML (the default; YAML 1.2 also reads JSON)
 * or strict JSON. Refuses text over `JOB_SPEC_LIMITS.maxSpecBytes`, or nested deeper than
 * `JOB_SPEC_LIMITS.maxNestingDepth`, before parsing.
 * Throws {@link JobSpecError} for syntax errors (with line and column) and for every bad
 * field (with the line and column of the field, or of its nearest written ancestor).
 */
export function parseJobSpec(text: string, format: JobSpecFormat = 'yaml'): JobSpec {
  const sizeBytes = Buffer.byteLength(text, 'utf8');
  if (sizeBytes > JOB_SPEC_LIMITS.maxSpecBytes) {
    throw new JobSpecError([{ path: '', message: `spec text must be at most ${JOB_SPEC_LIMITS.maxSpecBytes} bytes, got ${sizeBytes}` }]);
  }
  const depth = flowNestingDepth(text);
  if (depth > JOB_SPEC_LIMITS.maxNestingDepth) {
    throw new JobSpecError([{ path: '', message: `spec text must nest [ and { at most ${JOB_SPEC_LIMITS.maxNestingDepth} deep, got ${depth}` }]);
  }
  let value: unknown;
  let index: PositionIndex | undefined;
  if (format === 'json') {
    value = readJson(text);
  } else {
    ({ value, index } = readYaml(text));
  }
  const checked = checkJobSpec(value);
  if (checked.ok) return checked.spec;
  // JSON is valid YAML 1.2 flow syntax, so the YAML parser finds positions in both.
  const positions = index ?? parseYaml(text);
  const issues = toJobSpecIssues(checked.issues).map((issue, i): JobSpecIssue => {
    const raw = checked.issues[i];
    const offset = raw === undefined ? undefined : nodeOffset(positions.document, raw.segments);
    return offset === undefined ? issue : { ...issue, ...locate(positions.lines, offset) };
  });
  throw new JobSpecError(issues);
}
