/**
 * zod issues → job spec issues: one per bad field (an object with three unknown keys gives
 * three), each reading `must … , got …`, with the allowed names for unknown keys.
 */
import { z } from 'zod';
import type { PathSegment } from './job-spec-error.ts';
import { showValue } from './show-value.ts';

/** A job spec issue before its path is formatted and its place in the text looked up. */
export interface RawJobSpecIssue {
  readonly segments: readonly PathSegment[];
  readonly message: string;
}

/** Unknown keys that are known mistakes, keyed by their dotted path, with what to do instead. */
const MOVED_FIELDS: Readonly<Record<string, string>> = {
  'spec.recipe.overrides.globalBatchSize': 'the batch size is spec.training.globalBatchSize',
  'spec.recipe.overrides.name': 'the recipe is chosen by spec.recipe.preset',
  'spec.batchSize': 'the batch size is spec.training.globalBatchSize',
  'spec.training.batchSize': 'the batch size is spec.training.globalBatchSize',
  'spec.training.workers': 'worker counts are in spec.fleet',
};

/** The schema that validates the value at `path`, looking through wrappers. */
function schemaAt(root: z.ZodType, path: readonly PropertyKey[]): z.ZodType | undefined {
  let schema: z.ZodType | undefined = unwrap(root);
  for (const segment of path) {
    if (schema instanceof z.ZodObject) schema = (schema.shape as Record<string, z.ZodType>)[String(segment)];
    else if (schema instanceof z.ZodRecord) schema = schema.valueType as z.ZodType;
    else if (schema instanceof z.ZodArray) schema = schema.element as z.ZodType;
    else if (schema instanceof z.ZodTuple) schema = (schema.def.items as z.ZodType[])[Number(segment)];
    else return undefined;
    schema = schema === undefined ? undefined : unwrap(schema);
  }
  return schema;
}

function unwrap(schema: z.ZodType): z.ZodType {
  let current = schema;
  for (;;) {
    if (current instanceof z.ZodOptional || current instanceof z.ZodNullable || current instanceof z.ZodDefault || current instanceof z.ZodPrefault) {
      current = current.unwrap() as z.ZodType;
    } else if (current instanceof z.ZodPipe) {
      current = current.in as z.ZodType;
    } else {
      return current;
    }
  }
}

/** Levenshtein distance, for "did you mean" on misspelt keys (names are short). */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

function closestName(key: string, allowed: readonly string[]): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const name of allowed) {
    const distance = name.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, name);
    if (best === undefined || distance < best.distance) best = { name, distance };
  }
  return best !== undefined && best.distance <= Math.max(1, Math.floor(key.length / 3)) ? best.name : undefined;
}

function unknownKeyMessage(root: z.ZodType, objectPath: readonly PropertyKey[], key: string, dottedPath: string): string {
  const object = schemaAt(root, objectPath);
  const allowed = object instanceof z.ZodObject ? Object.keys(object.shape) : [];
  const moved = MOVED_FIELDS[dottedPath];
  const suggestion = moved ?? (closestName(key, allowed) === undefined ? undefined : `did you mean '${closestName(key, allowed)}'?`);
  return `unknown field${suggestion === undefined ? '' : ` (${suggestion})`}; allowed: ${allowed.join(', ') || 'none'}`;
}

function toSegments(path: readonly PropertyKey[]): PathSegment[] {
  return path.map((segment) => (typeof segment === 'number' ? segment : String(segment)));
}

/**
 * Converts the issues zod reported for `root` (parsed with `reportInput: true`) into one
 * issue per bad field; a field that failed several checks with the same message (a range
 * and a multiple) is reported once.
 */
export function issuesFromZod(root: z.ZodType, issues: readonly z.core.$ZodIssue[]): RawJobSpecIssue[] {
  const converted = convertIssues(root, issues);
  const seen = new Set<string>();
  return converted.filter((issue) => {
    const key = JSON.stringify([issue.segments, issue.message]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function convertIssues(root: z.ZodType, issues: readonly z.core.$ZodIssue[]): RawJobSpecIssue[] {
  const converted: RawJobSpecIssue[] = [];
  for (const issue of issues) {
    const segments = toSegments(issue.path);
    switch (issue.code) {
      case 'unrecognized_keys':
        for (const key of issue.keys) {
          const keySegments = [...segments, key];
          converted.push({ segments: keySegments, message: unknownKeyMessage(root, issue.path, key, keySegments.join('.')) });
        }
        break;
      case 'invalid_key':
        // A bad record key: the path already ends in the key; the key's own issues say why.
        for (const inner of issue.issues) converted.push({ segments, message: `${inner.message}, got key ${showValue(issue.input)}` });
        break;
      case 'custom':
        // Custom checks write complete messages (they know which values to quote).
        converted.push({ segments, message: issue.message });
        break;
      case 'invalid_type':
        converted.push({
          segments,
          message: issue.input === undefined ? `required; ${issue.message}` : `${issue.message}, got ${showValue(issue.input)}`,
        });
        break;
      case 'too_big':
      case 'too_small':
      case 'invalid_format':
      case 'not_multiple_of':
      case 'invalid_union':
      case 'invalid_element':
      case 'invalid_value':
        converted.push({ segments, message: `${issue.message}, got ${showValue(issue.input)}` });
        break;
    }
  }
  return converted;
}
