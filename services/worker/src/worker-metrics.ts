/**
 * The worker's own metrics beside `createTrainingMetrics` (docs/cluster.md, "Metrics
 * (added)"): aborted steps and state transfers.
 */
import { Counter, Histogram } from '@dinofleet/telemetry';
import type { Registry } from '@dinofleet/telemetry';

/** Buckets of the transfer histogram, seconds: a small model takes well under a second, a large one a minute. */
export const STATE_TRANSFER_SECONDS_BUCKETS: readonly number[] = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60];

/** Which side of a state transfer a count is for. */
export const StateTransferRole = { Sent: 'sent', Received: 'received' } as const;
/** Which side of a state transfer a count is for. */
export type StateTransferRole = (typeof StateTransferRole)[keyof typeof StateTransferRole];

/** The worker's fault-tolerance metrics; registered on `registry` when one is given. */
export class WorkerMetrics {
  /** `dinofleet_worker_aborted_steps_total`: steps abandoned (Abort, a newer Assignment, a failure, a broken stream). */
  readonly abortedSteps: Counter;
  /** `dinofleet_worker_state_transfers_total{role}`: states served (`sent`) and fetched (`received`). */
  readonly stateTransfers: Counter<'role'>;
  /** `dinofleet_worker_state_transfer_seconds`: a received transfer, from the call to the verified state. */
  readonly stateTransferSeconds: Histogram;

  constructor(registry?: Registry) {
    const registers = registry === undefined ? [] : [registry];
    this.abortedSteps = new Counter({
      name: 'dinofleet_worker_aborted_steps_total',
      help: 'Steps this worker abandoned and rolled back.',
      registers,
    });
    this.stateTransfers = new Counter({
      name: 'dinofleet_worker_state_transfers_total',
      help: 'Training states sent to or received from another worker.',
      labelNames: ['role'],
      registers,
    });
    this.stateTransferSeconds = new Histogram({
      name: 'dinofleet_worker_state_transfer_seconds',
      help: 'Seconds to fetch, decode and verify a state from another worker.',
      buckets: [...STATE_TRANSFER_SECONDS_BUCKETS],
      registers,
    });
  }
}
