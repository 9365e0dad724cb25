/**
 * Test-only: a small WorkerControl server standing in for the coordinator. By default it
 * waits for `workers` registrations, assigns them ranks in worker-id order (generation 1),
 * checks that every rank's CommitStep for a step carries the same state hash, acknowledges
 * the step, and records everything it saw. Tests of failures drive it by hand instead:
 * `assign` a generation, `abort` it, `send` any message, hold back acks.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import {
  FailedPreconditionError,
  GrpcServer,
  INSECURE,
  UnauthenticatedError,
  WorkerControlService,
  isFleetPeer,
  requireFleetPeer,
  serverCredentials,
  toServiceError,
  unaryHandler,
} from '@dinofleet/proto';
import type {
  TransportSecurity,
  AcquireLeaseRequest,
  Assignment,
  CommitStep,
  ControlRequest,
  ControlResponse,
  Heartbeat,
  Register,
  ShardLease,
  StepFailed,
  WorkerControlServer,
} from '@dinofleet/proto';

/** What the fake's assignments carry (ranks, batch split and leases are its own). */
export interface FakeJob {
  readonly jobId: string;
  readonly specJson: string;
  readonly globalBatch: number;
  readonly totalSteps: number;
  readonly teacherSyncAddress: string;
  readonly manifestUri: string;
  /** First lease of each rank. @default none */
  readonly leases?: readonly ShardLease[];
  /** `start_step` of the assignments. @default 0 */
  readonly startStep?: number;
  /** Leases AcquireLease hands out, in order; afterwards it fails. @default none */
  readonly nextLeases?: readonly ShardLease[];
  /** Assign generation 1 once `workers` registered. @default true */
  readonly autoAssign?: boolean;
  /** Acknowledge a step once every rank of the generation committed it with equal hashes. @default true */
  readonly autoAck?: boolean;
}

/** One generation to {@link FakeCoordinator.assign}. */
export interface FakeGeneration {
  readonly generation: number;
  /** Worker ids in rank order. */
  readonly workerIds: readonly string[];
  /** @default the job's startStep, else 0 */
  readonly startStep?: number;
  /** `state_source` per worker id ("" when absent). */
  readonly stateSources?: Readonly<Record<string, string>>;
  /** @default empty */
  readonly startStateHash?: Uint8Array;
  /** @default "" */
  readonly restoreCheckpointUri?: string;
  /** Only these workers get their assignment (the others are left out). @default all */
  readonly recipients?: readonly string[];
}

/** A CommitStep and who sent it. */
export interface FakeCommit {
  readonly workerId: string;
  readonly commit: CommitStep;
}

/** The fake coordinator. */
export interface FakeCoordinator extends AsyncDisposable {
  readonly address: string;
  readonly registers: Register[];
  readonly heartbeats: Heartbeat[];
  /** Commits of the current generation's ranks by step, indexed by rank (the last one each sent). */
  readonly commits: Map<number, CommitStep[]>;
  /** Every CommitStep, in arrival order. */
  readonly allCommits: FakeCommit[];
  /** "step s: rank hashes differ" messages. */
  readonly mismatches: string[];
  readonly leavings: { workerId: string; reason: string; graceful: boolean }[];
  readonly stepFailures: (StepFailed & { workerId: string })[];
  readonly acquireLeaseCalls: AcquireLeaseRequest[];
  /** The last step acknowledged. */
  readonly ackedStep: () => number;
  /** Resolves once step `step` is acknowledged (rejects after `timeoutMs`). */
  waitForAck(step: number, timeoutMs: number): Promise<void>;
  /** Sends `generation` to its workers (the assignment of each rank). */
  assign(generation: FakeGeneration): void;
  /** Sends Abort{generation} to every connected worker. */
  abort(generation: number, reason: string): void;
  /** Sends a message to one worker. */
  send(workerId: string, message: ControlResponse['message']): void;
  /** Sends Stop to every connected worker. */
  stopAll(reason: string): void;
  /** Ends every Control stream from the server side (a coordinator going away). */
  dropStreams(): void;
  close(): Promise<void>;
}

/** Settings of the fake's server. */
export interface FakeCoordinatorOptions {
  /**
   * As the coordinator's port: under mTLS it asks clients for a certificate and
   * WorkerControl refuses (UNAUTHENTICATED) a caller without one of the fleet CA.
   * @default INSECURE
   */
  security?: TransportSecurity;
}

/** Starts a fake that assigns `job` to the first `workers` workers to register. */
export async function startFakeCoordinator(workers: number, job: FakeJob, options: FakeCoordinatorOptions = {}): Promise<FakeCoordinator> {
  const security = options.security ?? INSECURE;
  const streams = new Map<string, ServerDuplexStream<ControlRequest, ControlResponse>>();
  const registers: Register[] = [];
  const heartbeats: Heartbeat[] = [];
  const commits = new Map<number, CommitStep[]>();
  const allCommits: FakeCommit[] = [];
  const mismatches: string[] = [];
  const leavings: { workerId: string; reason: string; graceful: boolean }[] = [];
  const stepFailures: (StepFailed & { workerId: string })[] = [];
  const acquireLeaseCalls: AcquireLeaseRequest[] = [];
  let ranks: string[] = [];
  let generation = 0;
  let acked = 0;
  const ackWaiters = new Set<() => void>();

  const assign = (g: FakeGeneration): void => {
    ranks = [...g.workerIds];
    generation = g.generation;
    commits.clear();
    const peers = ranks.map((workerId, rank) => ({
      rank,
      workerId,
      collectiveAddress: registers.findLast((r) => r.workerId === workerId)?.collectiveAddress ?? '',
    }));
    ranks.forEach((workerId, rank) => {
      const n = ranks.length;
      const perRank = Math.floor(job.globalBatch / n) + (rank < job.globalBatch % n ? 1 : 0);
      const assignment: Assignment = {
        jobId: job.jobId,
        generation: g.generation,
        ranks: peers,
        rank,
        globalBatch: job.globalBatch,
        perRankBatch: perRank,
        gradientAccumulation: 1,
        startStep: g.startStep ?? job.startStep ?? 0,
        shardLease: job.leases?.[rank],
        jobSpecJson: job.specJson,
        teacherSyncAddress: job.teacherSyncAddress,
        totalSteps: job.totalSteps,
        manifestUri: job.manifestUri,
        manifestEtag: '',
        stateSource: g.stateSources?.[workerId] ?? '',
        startStateHash: Buffer.from(g.startStateHash ?? new Uint8Array(0)),
        restoreCheckpointUri: g.restoreCheckpointUri ?? '',
      };
      if (g.recipients === undefined || g.recipients.includes(workerId)) streams.get(workerId)?.write({ message: { $case: 'assignment', assignment } });
    });
  };

  const onCommit = (workerId: string, commit: CommitStep): void => {
    allCommits.push({ workerId, commit });
    const rank = ranks.indexOf(workerId);
    if (rank < 0 || commit.generation !== generation) return;
    const forStep = commits.get(commit.step) ?? [];
    commits.set(commit.step, forStep);
    forStep[rank] = commit;
    if (job.autoAck === false || commit.nonfinite) return;
    if (forStep.filter((c) => c !== undefined).length < ranks.length) return;
    const hashes = forStep.map((c) => Buffer.from(c.stateHash).toString('hex'));
    if (new Set(hashes).size !== 1) {
      mismatches.push(`state hash mismatch at step ${commit.step}: ${hashes.map((h, r) => `rank ${r} ${h.slice(0, 8)}`).join(', ')}`);
      return;
    }
    acked = commit.step;
    for (const id of ranks) streams.get(id)?.write({ message: { $case: 'commitAck', commitAck: { generation, step: commit.step, hold: false } } });
    for (const w of [...ackWaiters]) w();
  };

  const implementation: WorkerControlServer = {
    control: (call) => {
      try {
        requireFleetPeer(call, security, 'WorkerControl');
      } catch (err) {
        call.emit('error', toServiceError(err));
        return;
      }
      let workerId = '';
      call.on('data', (request: ControlRequest) => {
        const m = request.message;
        switch (m?.$case) {
          case 'register':
            workerId = m.register.workerId;
            streams.set(workerId, call);
            registers.push(m.register);
            if (job.autoAssign !== false && registers.length === workers) {
              assign({ generation: 1, workerIds: registers.slice(0, workers).map((r) => r.workerId).sort() });
            }
            break;
          case 'heartbeat':
            heartbeats.push(m.heartbeat);
            break;
          case 'commitStep':
            onCommit(workerId, m.commitStep);
            break;
          case 'leaving':
            leavings.push({ workerId, reason: m.leaving.reason, graceful: m.leaving.graceful });
            break;
          case 'stepFailed':
            stepFailures.push({ workerId, ...m.stepFailed });
            break;
          case undefined:
            break;
        }
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    acquireLease: unaryHandler((request: AcquireLeaseRequest, call) => {
      if (!isFleetPeer(call, security)) return Promise.reject(new UnauthenticatedError('WorkerControl is for fleet members only'));
      const lease = job.nextLeases?.[acquireLeaseCalls.length];
      acquireLeaseCalls.push(request);
      if (lease === undefined) return Promise.reject(new FailedPreconditionError('the fake coordinator hands out no further leases'));
      return Promise.resolve({ lease });
    }),
  };
  const server = new GrpcServer({ credentials: serverCredentials(security, { clientCertificate: 'request' }) });
  server.addService(WorkerControlService, implementation);
  const { address } = await server.start();
  const close = async (): Promise<void> => {
    for (const stream of streams.values()) stream.end();
    await server.close(500);
  };
  return {
    address,
    registers,
    heartbeats,
    commits,
    allCommits,
    mismatches,
    leavings,
    stepFailures,
    acquireLeaseCalls,
    ackedStep: () => acked,
    waitForAck: (step, timeoutMs) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (acked >= step) {
            clearTimeout(timer);
            ackWaiters.delete(check);
            resolve();
          } else if (mismatches.length > 0) {
            clearTimeout(timer);
            ackWaiters.delete(check);
            reject(new Error(mismatches.join('; ')));
          }
        };
        const timer = setTimeout(() => {
          ackWaiters.delete(check);
          reject(new Error(`step ${step} not acknowledged within ${timeoutMs} ms (last ${acked}; ${mismatches.join('; ')})`));
        }, timeoutMs);
        ackWaiters.add(check);
        check();
      }),
    assign,
    abort: (g, reason) => {
      for (const stream of streams.values()) stream.write({ message: { $case: 'abort', abort: { generation: g, reason } } });
    },
    send: (workerId, message) => {
      streams.get(workerId)?.write({ message });
    },
    stopAll: (reason) => {
      for (const stream of streams.values()) stream.write({ message: { $case: 'stop', stop: { reason } } });
    },
    dropStreams: () => {
      for (const stream of streams.values()) stream.end();
      streams.clear();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
