/**
 * Test-only: a small WorkerControl server standing in for the coordinator. It waits for
 * `workers` registrations, assigns them ranks in worker-id order, checks that every rank's
 * CommitStep for a step carries the same state hash, acknowledges the step, and records
 * everything it saw.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { FailedPreconditionError, GrpcServer, WorkerControlService, unaryHandler } from '@dinofleet/proto';
import type {
  AcquireLeaseRequest,
  Assignment,
  CommitStep,
  ControlRequest,
  ControlResponse,
  Heartbeat,
  Register,
  ShardLease,
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
}

/** The fake coordinator. */
export interface FakeCoordinator extends AsyncDisposable {
  readonly address: string;
  readonly registers: Register[];
  readonly heartbeats: Heartbeat[];
  /** Commits by step, indexed by rank. */
  readonly commits: Map<number, CommitStep[]>;
  /** "step s: rank hashes differ" messages. */
  readonly mismatches: string[];
  readonly leavings: { workerId: string; reason: string }[];
  readonly acquireLeaseCalls: AcquireLeaseRequest[];
  /** The last step acknowledged. */
  readonly ackedStep: () => number;
  /** Resolves once step `step` is acknowledged (rejects after `timeoutMs`). */
  waitForAck(step: number, timeoutMs: number): Promise<void>;
  /** Sends Stop to every connected worker. */
  stopAll(reason: string): void;
  /** Ends every Control stream from the server side (a coordinator going away). */
  dropStreams(): void;
  close(): Promise<void>;
}

/** Starts a fake that assigns `job` to the first `workers` workers to register. */
export async function startFakeCoordinator(workers: number, job: FakeJob): Promise<FakeCoordinator> {
  const streams = new Map<string, ServerDuplexStream<ControlRequest, ControlResponse>>();
  const registers: Register[] = [];
  const heartbeats: Heartbeat[] = [];
  const commits = new Map<number, CommitStep[]>();
  const mismatches: string[] = [];
  const leavings: { workerId: string; reason: string }[] = [];
  const acquireLeaseCalls: AcquireLeaseRequest[] = [];
  let ranks: string[] = [];
  let acked = 0;
  const ackWaiters = new Set<() => void>();

  const assign = (): void => {
    ranks = registers.slice(0, workers).map((r) => r.workerId).sort();
    const peers = ranks.map((workerId, rank) => ({
      rank,
      workerId,
      collectiveAddress: registers.find((r) => r.workerId === workerId)?.collectiveAddress ?? '',
    }));
    ranks.forEach((workerId, rank) => {
      const perRank = Math.floor(job.globalBatch / workers) + (rank < job.globalBatch % workers ? 1 : 0);
      const assignment: Assignment = {
        jobId: job.jobId,
        generation: 1,
        ranks: peers,
        rank,
        globalBatch: job.globalBatch,
        perRankBatch: perRank,
        gradientAccumulation: 1,
        startStep: job.startStep ?? 0,
        shardLease: job.leases?.[rank],
        jobSpecJson: job.specJson,
        teacherSyncAddress: job.teacherSyncAddress,
        totalSteps: job.totalSteps,
        manifestUri: job.manifestUri,
        manifestEtag: '',
      };
      streams.get(workerId)?.write({ message: { $case: 'assignment', assignment } });
    });
  };

  const onCommit = (workerId: string, commit: CommitStep): void => {
    const rank = ranks.indexOf(workerId);
    const forStep = commits.get(commit.step) ?? [];
    commits.set(commit.step, forStep);
    forStep[rank] = commit;
    if (forStep.filter((c) => c !== undefined).length < ranks.length) return;
    const hashes = forStep.map((c) => Buffer.from(c.stateHash).toString('hex'));
    if (new Set(hashes).size !== 1) {
      mismatches.push(`state hash mismatch at step ${commit.step}: ${hashes.map((h, r) => `rank ${r} ${h.slice(0, 8)}`).join(', ')}`);
      return;
    }
    acked = commit.step;
    for (const id of ranks) streams.get(id)?.write({ message: { $case: 'commitAck', commitAck: { generation: 1, step: commit.step } } });
    for (const w of [...ackWaiters]) w();
  };

  const implementation: WorkerControlServer = {
    control: (call) => {
      let workerId = '';
      call.on('data', (request: ControlRequest) => {
        const m = request.message;
        switch (m?.$case) {
          case 'register':
            workerId = m.register.workerId;
            streams.set(workerId, call);
            registers.push(m.register);
            if (registers.length === workers) assign();
            break;
          case 'heartbeat':
            heartbeats.push(m.heartbeat);
            break;
          case 'commitStep':
            onCommit(workerId, m.commitStep);
            break;
          case 'leaving':
            leavings.push({ workerId, reason: m.leaving.reason });
            break;
          case undefined:
            break;
        }
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    acquireLease: unaryHandler((request: AcquireLeaseRequest) => {
      const lease = job.nextLeases?.[acquireLeaseCalls.length];
      acquireLeaseCalls.push(request);
      if (lease === undefined) return Promise.reject(new FailedPreconditionError('the fake coordinator hands out no further leases'));
      return Promise.resolve({ lease });
    }),
  };
  const server = new GrpcServer();
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
    mismatches,
    leavings,
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
