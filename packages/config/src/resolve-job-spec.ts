/** Validating a job spec, the recipe it names, and its JSON Schema. */
import { PRESETS, type DinoRecipe } from '@dinofleet/dino';
import { z } from 'zod';
import { formatIssuePath, JobSpecError, type JobSpecIssue } from './job-spec-error.ts';
import { JOB_SPEC_SCHEMA, type JobSpec } from './job-spec-schema.ts';
import { applyRecipeOverrides } from './recipe-overrides.ts';
import { issuesFromZod, type RawJobSpecIssue } from './schema-issues.ts';

/** The outcome of checking a spec: the resolved spec, or every problem with it. */
export type JobSpecCheck = { readonly ok: true; readonly spec: JobSpec } | { readonly ok: false; readonly issues: readonly RawJobSpecIssue[] };

/** Checks `input` against the job spec schema without throwing. */
export function checkJobSpec(input: unknown): JobSpecCheck {
  const result = JOB_SPEC_SCHEMA.safeParse(input, { reportInput: true });
  return result.success ? { ok: true, spec: result.data } : { ok: false, issues: issuesFromZod(JOB_SPEC_SCHEMA, result.error.issues) };
}

/** Formats raw issues for a {@link JobSpecError}. */
export function toJobSpecIssues(issues: readonly RawJobSpecIssue[]): JobSpecIssue[] {
  return issues.map((issue) => ({ path: formatIssuePath(issue.segments), message: issue.message }));
}

/**
 * Validates a job spec (already parsed from YAML/JSON, or built in code) and fills in every
 * default. Throws {@link JobSpecError} naming every bad field.
 */
export function resolveJobSpec(input: unknown): JobSpec {
  const checked = checkJobSpec(input);
  if (!checked.ok) throw new JobSpecError(toJobSpecIssues(checked.issues));
  return checked.spec;
}

/**
 * The recipe a job trains with: the preset from `@dinofleet/dino`'s `PRESETS`, with
 * `spec.recipe.overrides` merged in (objects recursively, pairs replaced whole) and
 * `spec.training.globalBatchSize` applied. Throws {@link JobSpecError} if the overrides
 * do not fit the preset (only possible for a spec that did not come from `resolveJobSpec`).
 */
export function resolveRecipe(job: JobSpec): DinoRecipe {
  const { recipe, training } = job.spec;
  let merged: DinoRecipe;
  try {
    merged = applyRecipeOverrides(PRESETS[recipe.preset], recipe.overrides);
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    throw new JobSpecError([{ path: 'spec.recipe.overrides', message: error.message }], { cause: error });
  }
  return { ...merged, globalBatchSize: training.globalBatchSize };
}

/**
 * The JSON Schema (draft-07, which Helm's `values.schema.json` reads) of the spec as users
 * write it: defaults shown, optional fields not required, unknown keys refused. Checks that
 * span fields (exactly one of steps / epochs, worker ordering, S3 bucket rules, the
 * collective's transport `grpc` with compression or recursive doubling) are only in the
 * zod schema.
 */
export function jobSpecJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(JOB_SPEC_SCHEMA, { io: 'input', target: 'draft-07' });
}
