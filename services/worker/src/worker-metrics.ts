/**
 * The worker's own metrics beside `createTrainingMetrics` (docs/cluster.md, "Metrics
 * (added)"): aborted steps and state transfers.
 *
 * prom-client is a dependency of `@dinofleet/telemetry` only (which re-exports its
 * `Registry`), so these are small objects that speak the registry's `get()` protocol, as
 * the coordinator's are.
 */
import type { Registry } from '@dinofleet/telemetry';

type Labels = Readonly<Record<string, string>>;

interface MetricValue {
  readonly labels: Labels;
  readonly value: number;
  readonly metricName?: string;
}

function keyOf(labels: Labels): string {
  return JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** A counter with labels. */
class LabelledCounter {
  readonly type = 'counter';
  readonly #values = new Map<string, { labels: Labels; value: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = keyOf(labels);
    this.#values.set(key, { labels, value: (this.#values.get(key)?.value ?? 0) + by });
  }

  value(labels: Labels = {}): number {
    return this.#values.get(keyOf(labels))?.value ?? 0;
  }

  get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: MetricValue[] }> {
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: 'sum', values: [...this.#values.values()] });
  }

  reset(): void {
    this.#values.clear();
  }
}

/** Buckets of the transfer histogram, seconds: a small model takes well under a second, a large one a minute. */
export const STATE_TRANSFER_SECONDS_BUCKETS: readonly number[] = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60];

/** A histogram without labels (cumulative buckets, `_sum`, `_count`). */
class PlainHistogram {
  readonly type = 'histogram';
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {
    this.#counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.buckets.forEach((le, i) => {
      if (value <= le) this.#counts[i] = (this.#counts[i] ?? 0) + 1;
    });
    this.#sum += value;
    this.#count++;
  }

  get count(): number {
    return this.#count;
  }

  get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: MetricValue[] }> {
    const values: MetricValue[] = this.buckets.map((le, i) => ({ labels: { le: String(le) }, value: this.#counts[i] ?? 0, metricName: `${this.name}_bucket` }));
    values.push({ labels: { le: '+Inf' }, value: this.#count, metricName: `${this.name}_bucket` });
    values.push({ labels: {}, value: this.#sum, metricName: `${this.name}_sum` });
    values.push({ labels: {}, value: this.#count, metricName: `${this.name}_count` });
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: 'sum', values });
  }

  reset(): void {
    this.#counts.fill(0);
    this.#sum = 0;
    this.#count = 0;
  }
}

/** Which side of a state transfer a count is for. */
export const StateTransferRole = { Sent: 'sent', Received: 'received' } as const;
/** Which side of a state transfer a count is for. */
export type StateTransferRole = (typeof StateTransferRole)[keyof typeof StateTransferRole];

/** The worker's fault-tolerance metrics; registered on `registry` when one is given. */
export class WorkerMetrics {
  /** `dinofleet_worker_aborted_steps_total`: steps abandoned (Abort, a newer Assignment, a failure, a broken stream). */
  readonly abortedSteps = new LabelledCounter('dinofleet_worker_aborted_steps_total', 'Steps this worker abandoned and rolled back.');
  /** `dinofleet_worker_state_transfers_total{role}`: states served (`sent`) and fetched (`received`). */
  readonly stateTransfers = new LabelledCounter('dinofleet_worker_state_transfers_total', 'Training states sent to or received from another worker.');
  /** `dinofleet_worker_state_transfer_seconds`: a received transfer, from the call to the verified state. */
  readonly stateTransferSeconds = new PlainHistogram(
    'dinofleet_worker_state_transfer_seconds',
    'Seconds to fetch, decode and verify a state from another worker.',
    STATE_TRANSFER_SECONDS_BUCKETS,
  );

  constructor(registry?: Registry) {
    if (registry === undefined) return;
    for (const metric of [this.abortedSteps, this.stateTransfers, this.stateTransferSeconds]) {
      registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
    }
  }
}
