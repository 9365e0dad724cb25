import { describe, expect, it } from 'vitest';
import { FAULT_NONFINITE_STEPS_ENV, NonfiniteFaults } from './fault-injection.ts';

describe('DINOFLEET_FAULT_NONFINITE_STEPS', () => {
  it('fires each listed step once per occurrence', () => {
    const faults = NonfiniteFaults.fromEnv({ [FAULT_NONFINITE_STEPS_ENV]: '12, 12,40' });
    expect(faults.pending).toBe(3);
    expect([faults.take(11), faults.take(12), faults.take(12), faults.take(12), faults.take(40), faults.take(40)]).toEqual([false, true, true, false, true, false]);
    expect(faults.pending).toBe(0);
  });

  it('is off when unset or empty, and refuses anything but step numbers', () => {
    expect(NonfiniteFaults.fromEnv({}).pending).toBe(0);
    expect(NonfiniteFaults.fromEnv({ [FAULT_NONFINITE_STEPS_ENV]: '' }).pending).toBe(0);
    expect(() => NonfiniteFaults.fromEnv({ [FAULT_NONFINITE_STEPS_ENV]: '3,x' })).toThrow(/DINOFLEET_FAULT_NONFINITE_STEPS must be comma-separated step numbers/);
  });
});
