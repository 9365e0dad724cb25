/**
 * Leaf schemas that carry their own "what is allowed" message, so every issue the job spec
 * reports reads `path: must be …, got …` (the "got" part is added where issues are
 * formatted, from the offending input).
 */
import { z } from 'zod';
import { showValue } from './show-value.ts';

/** How a bound is written in messages: round large limits as `1e9`, everything else plainly. */
function showBound(n: number): string {
  return n >= 1e6 && Math.log10(n) % 1 === 0 ? `1e${Math.log10(n)}` : String(n);
}

/** An integer in `[min, max]`. Non-integers, NaN and infinities are refused. */
export function boundedInt(min: number, max: number): z.ZodInt {
  const error = `must be an integer in [${showBound(min)}, ${showBound(max)}]`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

/** An integer in `[min, max]` that is a multiple of 4 (a whole number of float32 values, as byte sizes are). */
export function boundedMultipleOf4(min: number, max: number): z.ZodInt {
  const error = `must be a multiple of 4 in [${showBound(min)}, ${showBound(max)}]`;
  // A value both out of range and not a multiple (3) fails two checks with this one
  // message; issuesFromZod reports it once. (No `abort`: it would also stop the checks that
  // span the fields of the enclosing object.)
  return z.int({ error }).min(min, { error }).max(max, { error }).multipleOf(4, { error });
}

/** Which ends of a {@link boundedNumber} range are open. */
export interface NumberRangeOptions {
  /** Exclude `min` itself. @default false */
  readonly minExclusive?: boolean;
  /** Exclude `max` itself. @default false */
  readonly maxExclusive?: boolean;
}

/** A finite number in `[min, max]` (ends open as asked). */
export function boundedNumber(min: number, max: number, options: NumberRangeOptions = {}): z.ZodNumber {
  const minExclusive = options.minExclusive ?? false;
  const maxExclusive = options.maxExclusive ?? false;
  const error = `must be a finite number in ${minExclusive ? '(' : '['}${showBound(min)}, ${showBound(max)}${maxExclusive ? ')' : ']'}`;
  // z.number() already refuses NaN and ±Infinity (YAML's .nan / .inf).
  const base = z.number({ error });
  const lower = minExclusive ? base.gt(min, { error }) : base.min(min, { error });
  return maxExclusive ? lower.lt(max, { error }) : lower.max(max, { error });
}

/**
 * A `[low, high]` pair inside `[min, max]` with `low <= high`, as the recipe's scale and
 * mask-ratio ranges are written.
 */
export function orderedPair(min: number, max: number) {
  const allowed = `must be a pair [low, high] with ${showBound(min)} <= low <= high <= ${showBound(max)}`;
  const end = z.number({ error: allowed }).min(min, { error: allowed }).max(max, { error: allowed });
  return z
    .tuple([end, end], { error: allowed })
    .refine(([low, high]) => low <= high, { error: (issue) => `${allowed}, got ${showValue(issue.input)}` });
}

/** One of a fixed list of strings. */
export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `must be one of ${values.join(', ')}` });
}

/** A mapping that refuses keys it does not declare (each one is reported with its path). */
export function strictMapping<const Shape extends z.core.$ZodLooseShape>(shape: Shape) {
  return z.strictObject(shape, {
    // Only the type issue takes this message; unknown keys are described where issues
    // are formatted, which knows the allowed names.
    error: (issue) => (issue.code === 'invalid_type' ? 'must be a mapping (an object)' : undefined),
  });
}
