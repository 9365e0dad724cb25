/**
 * The conformance suite every {@link Scaler} passes (STYLE.md: one suite per pluggable
 * backend): `scaleTo` makes that many workers exist, up and down, and repeating a count
 * changes nothing; `release` lowers the count by the workers it manages among those named
 * and ignores the rest; `close` is idempotent.
 */
import { describe, expect, it } from 'vitest';
import type { Scaler } from '../scaler.ts';

/** A scaler and a way to see what it did. */
export interface ScalerUnderTest {
  readonly scaler: Scaler;
  /** Workers that exist (or are asked for) now, as the scaler's backend sees them. */
  count(): Promise<number>;
  /** The id of the worker at `index` (0-based) among those the scaler manages. */
  workerId(index: number): string;
  /** Releases what the test made (after `scaler.close()`). */
  close(): Promise<void>;
}

/** Registers the suite for one implementation; `make` builds a fresh scaler at 0 workers. */
export function describeScalerConformance(name: string, make: () => Promise<ScalerUnderTest>): void {
  describe(`Scaler conformance: ${name}`, () => {
    it('scaleTo makes that many workers exist, up and down; the same count twice changes nothing', async () => {
      const under = await make();
      try {
        expect(await under.count()).toBe(0);
        await under.scaler.scaleTo(3);
        expect(await under.count()).toBe(3);
        await under.scaler.scaleTo(3);
        expect(await under.count()).toBe(3);
        await under.scaler.scaleTo(1);
        expect(await under.count()).toBe(1);
        await under.scaler.scaleTo(2);
        expect(await under.count()).toBe(2);
        await under.scaler.scaleTo(0);
        expect(await under.count()).toBe(0);
      } finally {
        await under.scaler.close();
        await under.close();
      }
    });

    it('release lowers the count by the named workers it manages and ignores other ids', async () => {
      const under = await make();
      try {
        await under.scaler.scaleTo(3);
        await under.scaler.release([under.workerId(2), 'not-a-worker-of-this-scaler']);
        expect(await under.count()).toBe(2);
        await under.scaler.release([]);
        expect(await under.count()).toBe(2);
        // What the coordinator does after a scale-down: release, then the total.
        await under.scaler.release([under.workerId(1)]);
        await under.scaler.scaleTo(1);
        expect(await under.count()).toBe(1);
      } finally {
        await under.scaler.close();
        await under.close();
      }
    });

    it('close is idempotent', async () => {
      const under = await make();
      await under.scaler.scaleTo(1);
      await under.scaler.close();
      await under.scaler.close();
      await under.close();
    });
  });
}
