/**
 * Test hooks that make a worker fail on purpose (docs/cluster.md, "Elasticity and
 * failures"): `DINOFLEET_FAULT_NONFINITE_STEPS="12,12,40"` makes this process put NaN in
 * its loss slot of step 12 twice (the first two times it runs step 12) and of step 40 once.
 */
import { InvalidArgumentError } from '@dinofleet/proto';

/** The environment variable of {@link NonfiniteFaults}. */
export const FAULT_NONFINITE_STEPS_ENV = 'DINOFLEET_FAULT_NONFINITE_STEPS';

/** Steps whose loss slot is set to NaN, each once per time it is listed. */
export class NonfiniteFaults {
  readonly #remaining = new Map<number, number>();

  constructor(steps: readonly number[]) {
    for (const step of steps) this.#remaining.set(step, (this.#remaining.get(step) ?? 0) + 1);
  }

  /**
   * Reads {@link FAULT_NONFINITE_STEPS_ENV}: comma-separated step numbers (unset or empty:
   * none). @throws InvalidArgumentError naming the variable for anything else.
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): NonfiniteFaults {
    const text = env[FAULT_NONFINITE_STEPS_ENV]?.trim() ?? '';
    if (text === '') return new NonfiniteFaults([]);
    const steps = text.split(',').map((part) => {
      const trimmed = part.trim();
      if (!/^\d+$/.test(trimmed) || !Number.isSafeInteger(Number(trimmed))) {
        throw new InvalidArgumentError(`${FAULT_NONFINITE_STEPS_ENV} must be comma-separated step numbers, got ${JSON.stringify(text)}`);
      }
      return Number(trimmed);
    });
    return new NonfiniteFaults(steps);
  }

  /** Whether step `step` gets a NaN this time (and uses up one occurrence). */
  take(step: number): boolean {
    const left = this.#remaining.get(step) ?? 0;
    if (left === 0) return false;
    this.#remaining.set(step, left - 1);
    return true;
  }

  /** Occurrences not used yet. */
  get pending(): number {
    let n = 0;
    for (const left of this.#remaining.values()) n += left;
    return n;
  }
}
