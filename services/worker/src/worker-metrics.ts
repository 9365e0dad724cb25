/**
 * The worker's own metrics beside `createTrainingMetrics` (docs/cluster.md, "Metrics
 * (added)"): aborted steps, state transfers, and the all-reduce of each run
 * ({@link CollectiveRunMetrics}).
 */
import { AllReduceAlgorithm } from '@dinofleet/collective';
import type { AllReduceStats, LinkBandwidth } from '@dinofleet/collective';
import { Counter, Gauge, Histogram } from '@dinofleet/telemetry';
import type { Registry } from '@dinofleet/telemetry';

/** Buckets of the transfer histogram, seconds: a small model takes well under a second, a large one a minute. */
export const STATE_TRANSFER_SECONDS_BUCKETS: readonly number[] = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60];

/**
 * Buckets of `dinofleet_collective_allreduce_seconds`, seconds: from 1 ms (a few KiB by
 * recursive doubling on one host) to 60 s (a 1 GiB fusion bucket on a slow link, or a
 * straggling rank).
 */
export const ALLREDUCE_SECONDS_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/**
 * Smallest all-reduce, in bytes, whose bus bandwidth is recorded: 1 MiB. A smaller call
 * takes a few message latencies whatever the link's speed, so its busbw says nothing about
 * bandwidth.
 */
export const BUSBW_MIN_BYTES = 1024 * 1024;

/** Which side of a state transfer a count is for. */
export const StateTransferRole = { Sent: 'sent', Received: 'received' } as const;
/** Which side of a state transfer a count is for. */
export type StateTransferRole = (typeof StateTransferRole)[keyof typeof StateTransferRole];

/** Labels of a {@link CollectiveRunMetrics}. */
export interface CollectiveRunLabels {
  /** The job id. */
  readonly job: string;
  /** The rank in the run's generation, as a string. */
  readonly rank: string;
}

type RunLabel = 'job' | 'rank';

/**
 * The all-reduce metrics of one run (one job, one rank, one generation), bound to its
 * labels; from {@link WorkerMetrics.collective}. {@link remove} drops its series when the
 * run ends.
 */
export class CollectiveRunMetrics {
  readonly #metrics: WorkerMetrics;
  readonly #labels: Record<RunLabel, string>;
  /** peer_rank values set on the link gauge, for {@link remove}. */
  readonly #peers = new Set<string>();
  #busbwGBps: number | undefined;
  #linkGbps: number | undefined;
  #removed = false;

  /** Use {@link WorkerMetrics.collective}. */
  constructor(metrics: WorkerMetrics, labels: CollectiveRunLabels) {
    this.#metrics = metrics;
    this.#labels = { job: labels.job, rank: labels.rank };
    // Counters start at 0 so rate() and increase() see the first increment.
    metrics.collectiveBytes.inc(this.#labels, 0);
  }

  /** Every all-reduce call (RingAllReduce's `onStats`): its duration and its bytes. */
  recordCall(stats: AllReduceStats): void {
    if (this.#removed) return;
    if (Number.isFinite(stats.seconds) && stats.seconds >= 0) {
      this.#metrics.allReduceSeconds.observe({ ...this.#labels, algorithm: stats.algorithm }, stats.seconds);
    }
    if (Number.isFinite(stats.sizeBytes) && stats.sizeBytes > 0) this.#metrics.collectiveBytes.inc(this.#labels, stats.sizeBytes);
  }

  /**
   * A gradient bucket's all-reduce: sets the busbw gauge (and the link ratio) from it,
   * unless it moved under {@link BUSBW_MIN_BYTES} or had no bandwidth (one rank: busbw 0).
   */
  recordGradientBucket(stats: AllReduceStats): void {
    if (this.#removed || stats.sizeBytes < BUSBW_MIN_BYTES || !(Number.isFinite(stats.busbwGBps) && stats.busbwGBps > 0)) return;
    this.#busbwGBps = stats.busbwGBps;
    this.#metrics.collectiveBusbw.set(this.#labels, stats.busbwGBps * 1e9);
    this.#setRatio();
  }

  /** The ring link's probe, once per generation (RingAllReduce's `onLinkBandwidth`). */
  recordLink(link: LinkBandwidth): void {
    if (this.#removed || !(Number.isFinite(link.bandwidthGBps) && link.bandwidthGBps > 0)) return;
    const peerRank = String(link.peerRank);
    this.#peers.add(peerRank);
    this.#linkGbps = link.bandwidthGBps;
    this.#metrics.linkBandwidth.set({ ...this.#labels, peer_rank: peerRank }, link.bandwidthGBps * 1e9);
    this.#setRatio();
  }

  #setRatio(): void {
    if (this.#busbwGBps === undefined || this.#linkGbps === undefined) return;
    this.#metrics.busbwLinkRatio.set(this.#labels, this.#busbwGBps / this.#linkGbps);
  }

  /**
   * Removes every series of this job/rank (the run ended). Idempotent; what is recorded
   * afterwards is dropped, so a late callback of a closing ring cannot bring a series back.
   */
  remove(): void {
    this.#removed = true;
    const metrics = this.#metrics;
    for (const algorithm of Object.values(AllReduceAlgorithm)) metrics.allReduceSeconds.remove({ ...this.#labels, algorithm });
    for (const peerRank of this.#peers) metrics.linkBandwidth.remove({ ...this.#labels, peer_rank: peerRank });
    this.#peers.clear();
    metrics.collectiveBusbw.remove(this.#labels);
    metrics.busbwLinkRatio.remove(this.#labels);
    metrics.collectiveBytes.remove(this.#labels);
  }
}

/** The worker's fault-tolerance and all-reduce metrics; registered on `registry` when one is given. */
export class WorkerMetrics {
  /** `dinofleet_worker_aborted_steps_total`: steps abandoned (Abort, a newer Assignment, a failure, a broken stream). */
  readonly abortedSteps: Counter;
  /** `dinofleet_worker_state_transfers_total{role}`: states served (`sent`) and fetched (`received`). */
  readonly stateTransfers: Counter<'role'>;
  /** `dinofleet_worker_state_transfer_seconds`: a received transfer, from the call to the verified state. */
  readonly stateTransferSeconds: Histogram;
  /**
   * `dinofleet_collective_allreduce_seconds{job,rank,algorithm}`: every all-reduce call, by
   * the algorithm it ran (`ring`, `recursive-doubling`, `local`).
   */
  readonly allReduceSeconds: Histogram<RunLabel | 'algorithm'>;
  /**
   * `dinofleet_collective_busbw_bytes_per_second{job,rank}`: bus bandwidth of the last
   * gradient bucket all-reduce of at least 1 MiB (nccl-tests' busbw: algbw × 2(n−1)/n,
   * comparable across world sizes), in bytes per second (Prometheus base units).
   */
  readonly collectiveBusbw: Gauge<RunLabel>;
  /**
   * `dinofleet_collective_link_bandwidth_bytes_per_second{job,rank,peer_rank}`: the ring
   * link from `peer_rank` (this rank's left neighbour) as its probe measured it at the
   * start of the generation, in bytes per second. Transport `tcp` only.
   */
  readonly linkBandwidth: Gauge<RunLabel | 'peer_rank'>;
  /**
   * `dinofleet_collective_busbw_link_ratio{job,rank}`: last busbw / the generation's
   * measured link bandwidth, set once both exist: the "degraded link / slow collective"
   * signal to alert on. A ring's busbw is bounded by its slowest link, so a ring running at
   * link speed shows about 1 (up to about 2 with 16-bit compression, which moves half the
   * bytes); a ratio far below ~0.5 means the collective is not getting the link's speed
   * (a slow link elsewhere in the ring, CPU-bound summing, a straggling rank). Compare
   * `link_bandwidth_bytes_per_second` across ranks to find a slow link.
   */
  readonly busbwLinkRatio: Gauge<RunLabel>;
  /** `dinofleet_collective_bytes_total{job,rank}`: float32 bytes all-reduced (before any compression). */
  readonly collectiveBytes: Counter<RunLabel>;

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
    this.allReduceSeconds = new Histogram({
      name: 'dinofleet_collective_allreduce_seconds',
      help: 'Seconds of one all-reduce call, by algorithm (ring, recursive-doubling, local).',
      labelNames: ['job', 'rank', 'algorithm'],
      buckets: [...ALLREDUCE_SECONDS_BUCKETS],
      registers,
    });
    this.collectiveBusbw = new Gauge({
      name: 'dinofleet_collective_busbw_bytes_per_second',
      help: 'Bus bandwidth (algbw * 2(n-1)/n) of the last gradient bucket all-reduce of at least 1 MiB, in bytes per second.',
      labelNames: ['job', 'rank'],
      registers,
    });
    this.linkBandwidth = new Gauge({
      name: 'dinofleet_collective_link_bandwidth_bytes_per_second',
      help: "The ring link from peer_rank as measured by the generation's probe, in bytes per second.",
      labelNames: ['job', 'rank', 'peer_rank'],
      registers,
    });
    this.busbwLinkRatio = new Gauge({
      name: 'dinofleet_collective_busbw_link_ratio',
      help: "Last gradient busbw / the generation's measured link bandwidth; about 1 at link speed, far below 0.5 when the collective is not getting it.",
      labelNames: ['job', 'rank'],
      registers,
    });
    this.collectiveBytes = new Counter({
      name: 'dinofleet_collective_bytes_total',
      help: 'Float32 bytes all-reduced (before any wire compression).',
      labelNames: ['job', 'rank'],
      registers,
    });
  }

  /** The all-reduce metrics of one run, bound to its job and rank. */
  collective(labels: CollectiveRunLabels): CollectiveRunMetrics {
    return new CollectiveRunMetrics(this, labels);
  }
}
