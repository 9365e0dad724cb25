/**
 * How the coordinator gets workers: a Scaler is asked for a total worker count and makes
 * that many exist (local processes, a Kubernetes StatefulSet, or nothing at all when
 * workers are started by hand). Workers still register on their own.
 */

/** Something that starts and stops workers. */
export interface Scaler {
  /** Makes `workers` workers exist (starts or stops some). */
  scaleTo(workers: number): Promise<void>;
  /**
   * Stops these particular workers (the ranks a scale-down took out of their job) and
   * lowers the count it keeps by as many; ids it did not start are ignored.
   */
  release(workerIds: readonly string[]): Promise<void>;
  /** Stops every worker it started. Idempotent. */
  close(): Promise<void>;
}

/** The scaler for fleets started by someone else: it does nothing. */
export class NoScaler implements Scaler {
  scaleTo(_workers: number): Promise<void> {
    return Promise.resolve();
  }
  release(_workerIds: readonly string[]): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
