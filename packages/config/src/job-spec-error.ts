/** The one error a bad job spec produces, listing every problem at once. */

/** One problem with a job spec. */
export interface JobSpecIssue {
  /**
   * Where: a dotted path from the document root (`spec.fleet.minWorkers`,
   * `metadata.labels["app.kubernetes.io/name"]`, `spec.recipe.overrides.crops.globalScale[1]`),
   * or `''` for the document as a whole (size limit, syntax errors).
   */
  readonly path: string;
  /** What is wrong and what is allowed, e.g. `must be <= workers (2), got 3`. */
  readonly message: string;
  /** 1-based line in the spec text, when the spec came from text and the place is known. */
  readonly line?: number;
  /** 1-based column in the spec text, with {@link line}. */
  readonly column?: number;
}

/** A path segment as zod and the YAML document address values. */
export type PathSegment = string | number;

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** `['spec', 'fleet', 'workers']` → `spec.fleet.workers`; odd keys are quoted: `labels["a.b/c"]`. */
export function formatIssuePath(segments: readonly PathSegment[]): string {
  let path = '';
  for (const segment of segments) {
    if (typeof segment === 'number') path += `[${segment}]`;
    else if (IDENTIFIER.test(segment)) path += path === '' ? segment : `.${segment}`;
    else path += `[${JSON.stringify(segment)}]`;
  }
  return path;
}

function describeIssue(issue: JobSpecIssue): string {
  const where = issue.line === undefined ? '' : ` (line ${issue.line}, column ${issue.column ?? 1})`;
  return `${issue.path === '' ? '(spec)' : issue.path}: ${issue.message}${where}`;
}

/**
 * Thrown when a job spec is refused. `issues` names every bad field, not just the first;
 * `message` lists them one per line so a CLI can print it as is.
 */
export class JobSpecError extends Error {
  override readonly name = 'JobSpecError';
  /** Stable code, mapped to gRPC `INVALID_ARGUMENT`. */
  readonly code = 'INVALID_JOB_SPEC';
  /** Every problem found, in document order as far as the schema knows it. */
  readonly issues: readonly JobSpecIssue[];

  constructor(issues: readonly JobSpecIssue[], options?: ErrorOptions) {
    const count = issues.length === 1 ? '1 problem' : `${issues.length} problems`;
    super(`invalid job spec (${count}):\n${issues.map((issue) => `  ${describeIssue(issue)}`).join('\n')}`, options);
    this.issues = issues;
  }
}
