/**
 * The coordinator's Prometheus metrics (docs/cluster.md "Metrics"), on one registry.
 *
 * prom-client is a dependency of `@dinofleet/telemetry` only (which re-exports its
 * `Registry`), so the few gauges and counters here are small objects that speak the
 * registry's `get()` protocol instead of prom-client's metric classes.
 */
import { Histogram } from '@dinofleet/telemetry';
import type { Registry } from '@dinofleet/telemetry';
import { JOB_STATE_NAMES } from './job-store.ts';
import type { JobStateName } from './job-store.ts';

type Labels = Readonly<Record<string, string>>;

/** One gauge or counter with labels. */
export class LabelledMetric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  readonly #collect: (() => Promise<void>) | undefined;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'gauge' | 'counter',
    collect?: (metric: LabelledMetric) => Promise<void>,
  ) {
    this.#collect = collect === undefined ? undefined : () => collect(this);
  }

  #key(labels: Labels): string {
    return JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
  }

  /** Sets the value for `labels` (gauges). */
  set(labels: Labels, value: number): void {
    this.#values.set(this.#key(labels), { labels, value });
  }

  /** Adds `by` to the value for `labels` (counters). */
  inc(labels: Labels, by = 1): void {
    const key = this.#key(labels);
    const current = this.#values.get(key)?.value ?? 0;
    this.#values.set(key, { labels, value: current + by });
  }

  /** The value for `labels` (0 when never set). */
  value(labels: Labels): number {
    return this.#values.get(this.#key(labels))?.value ?? 0;
  }

  /** Forgets every series whose labels include `labels` (a finished job). */
  removeMatching(labels: Labels): void {
    for (const [key, entry] of this.#values) {
      if (Object.entries(labels).every(([k, v]) => entry.labels[k] === v)) this.#values.delete(key);
    }
  }

  /** The registry's collection protocol. */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: { labels: Labels; value: number }[] }> {
    await this.#collect?.();
    return { name: this.name, help: this.help, type: this.type, aggregator: 'sum', values: [...this.#values.values()] };
  }

  /** Registry.reset() support. */
  reset(): void {
    this.#values.clear();
  }
}

/** Buckets of `dinofleet_job_recovery_seconds`: a recovery takes seconds to a minute. */
export const RECOVERY_SECONDS_BUCKETS: readonly number[] = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300];

/** The `cause` values of `dinofleet_job_recoveries_total` (job-runner's `RecoveryCause`). */
export const RECOVERY_CAUSES = ['rank_lost', 'step_failed', 'nonfinite', 'coordinator_restart', 'rollback'] as const;
/** The `kind` values of `dinofleet_job_reconfigurations_total` (job-runner's `ReconfigurationKind`). */
export const RECONFIGURATION_KINDS = ['join', 'leave', 'scale'] as const;

/** The coordinator's metrics. */
export class CoordinatorMetrics {
  readonly jobs: LabelledMetric;
  readonly committedSteps = new LabelledMetric('dinofleet_job_committed_steps_total', 'Steps committed.', 'counter');
  readonly step = new LabelledMetric('dinofleet_job_step', 'Last committed step.', 'gauge');
  readonly totalSteps = new LabelledMetric('dinofleet_job_total_steps', 'Total steps of the job.', 'gauge');
  readonly generation = new LabelledMetric('dinofleet_job_generation', 'Current membership generation.', 'gauge');
  readonly worldSize = new LabelledMetric('dinofleet_job_world_size', 'Live ranks: the ranks of the current generation.', 'gauge');
  readonly imagesPerSecond = new LabelledMetric('dinofleet_job_images_per_second', 'Global images per second over the recent commits.', 'gauge');
  readonly loss = new LabelledMetric('dinofleet_job_loss', 'Loss terms of the last committed step, averaged over ranks.', 'gauge');
  readonly samplesSkipped = new LabelledMetric('dinofleet_job_samples_skipped_total', 'Manifest entries skipped in committed steps.', 'counter');
  readonly workersRegistered = new LabelledMetric('dinofleet_workers_registered', 'Workers holding a control stream.', 'gauge');
  readonly recoveries = new LabelledMetric('dinofleet_job_recoveries_total', 'Recoveries by cause (rank_lost, step_failed, nonfinite, coordinator_restart, rollback).', 'counter');
  readonly recoverySeconds = new Histogram({
    name: 'dinofleet_job_recovery_seconds',
    help: 'Seconds from detecting a failure to the next commit.',
    labelNames: ['job'],
    buckets: [...RECOVERY_SECONDS_BUCKETS],
    registers: [],
  });
  readonly reconfigurations = new LabelledMetric('dinofleet_job_reconfigurations_total', 'Generations formed at a step boundary, by kind (join, leave, scale).', 'counter');
  readonly stepsLost = new LabelledMetric('dinofleet_job_steps_lost_total', 'Committed steps thrown away by checkpoint restores.', 'counter');
  readonly samplesCommitted = new LabelledMetric('dinofleet_job_samples_committed_total', 'Samples of committed steps.', 'counter');
  readonly nonFiniteSteps = new LabelledMetric('dinofleet_job_nonfinite_steps_total', 'Steps every rank reported non-finite (not committed).', 'counter');
  readonly rollbacks = new LabelledMetric('dinofleet_job_rollbacks_total', 'Rollbacks to a checkpoint after repeated non-finite steps.', 'counter');

  /**
   * Starts the job's counters at 0 (every recovery cause and reconfiguration kind), so
   * `increase()` and the alert rules (deploy/prometheus/rules.yaml) see the first event;
   * a series that appears at 1 has no increase.
   */
  startJob(jobId: string): void {
    const job = { job: jobId };
    for (const counter of [this.committedSteps, this.samplesCommitted, this.nonFiniteSteps, this.rollbacks, this.stepsLost]) counter.inc(job, 0);
    for (const cause of RECOVERY_CAUSES) this.recoveries.inc({ ...job, cause }, 0);
    for (const kind of RECONFIGURATION_KINDS) this.reconfigurations.inc({ ...job, kind }, 0);
  }

  /** `countJobs` is called at each scrape for `dinofleet_jobs{state}`. */
  constructor(registry: Registry, countJobs: () => Promise<Map<JobStateName, number>>) {
    this.jobs = new LabelledMetric('dinofleet_jobs', 'Jobs by state.', 'gauge', async (metric) => {
      const counts = await countJobs();
      for (const state of JOB_STATE_NAMES) metric.set({ state }, counts.get(state) ?? 0);
    });
    this.workersRegistered.set({}, 0);
    for (const metric of [
      this.jobs,
      this.committedSteps,
      this.step,
      this.totalSteps,
      this.generation,
      this.worldSize,
      this.imagesPerSecond,
      this.loss,
      this.samplesSkipped,
      this.workersRegistered,
      this.recoveries,
      this.reconfigurations,
      this.stepsLost,
      this.samplesCommitted,
      this.nonFiniteSteps,
      this.rollbacks,
    ]) {
      registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
    }
    registry.registerMetric(this.recoverySeconds);
  }
}
