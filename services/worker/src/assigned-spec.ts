/**
 * The job spec of an Assignment: `JSON.stringify(resolveJobSpec(...))` from the
 * coordinator, validated again here (the worker trusts only what it checked).
 */
import { resolveJobSpec } from '@dinofleet/config';
import type { JobSpec } from '@dinofleet/config';
import { InvalidArgumentError } from '@dinofleet/proto';

/** A copy of a JSON value without the object fields that are null. */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([, v]) => v !== null)
      .map(([k, v]) => [k, withoutNulls(v)]),
  );
}

/**
 * Parses and re-validates an Assignment's `job_spec_json`. A resolved spec writes its
 * unset optional fields as null (`data.shards`, `checkpoint`, one of `training.steps` /
 * `epochs`), and the schema does not take null back for all of them, so null fields are
 * read as absent: the defaults then give the same spec again.
 * @throws InvalidArgumentError naming what is wrong.
 */
export function parseAssignedJobSpec(json: string): JobSpec {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw new InvalidArgumentError(`job_spec_json is not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  try {
    return resolveJobSpec(withoutNulls(parsed));
  } catch (err) {
    throw new InvalidArgumentError(`job_spec_json is not a valid job spec: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
