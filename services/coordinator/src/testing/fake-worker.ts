/**
 * A worker stand-in for coordinator tests: it holds a Control stream, registers, sends
 * heartbeats, and (when training) runs the step loop of docs/cluster.md without any
 * model: each step it takes its per-rank batch of manifest records from its leases
 * (AcquireLease when one is used up), and sends CommitStep with a hash the test chooses.
 */
import { createHash } from 'node:crypto';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { readSplitRecords } from '@dinofleet/data';
import { callUnary, channelCredentials, createClient, fromServiceError, INSECURE, WorkerControlClient } from '@dinofleet/proto';
import type {
  Assignment,
  CheckpointFile,
  ControlRequest,
  ControlResponse,
  DataCursor,
  DinofleetError,
  ShardLease,
  TransportSecurity,
} from '@dinofleet/proto';

/** Where the manifest is, for a fake worker that reads real records. */
export interface FakeManifest {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly key: string;
}

/** Options of {@link FakeWorker}. */
export interface FakeWorkerOptions {
  readonly workerId: string;
  /** How it dials the coordinator (a fleet certificate, or a rogue's). @default INSECURE */
  readonly security?: TransportSecurity;
  /** The state the worker claims to hold at registration. */
  readonly held?: { jobId: string; stateStep: number; stateHash: Buffer; pendingStep?: number; pendingHash?: Buffer };
  /** Train on Assignment (otherwise the test drives commits by hand). @default true */
  readonly train?: boolean;
  /** The state hash after `step` for `rank`. @default sha-like bytes of the step */
  readonly hashOf?: (rank: number, step: number) => Buffer;
  /** Reads records from here; without it commits carry no cursors or sample ids. */
  readonly manifest?: FakeManifest;
  /** Heartbeat interval, ms. @default 500 */
  readonly heartbeatMs?: number;
  /** Delay per step, ms. @default 0 */
  readonly stepDelayMs?: number;
  /** Called before committing a step; return false to hang instead (tests of loss). */
  readonly beforeCommit?: (step: number) => boolean;
  /** Whether step `step` (the step number after it) comes out non-finite; called once per try. */
  readonly nonFinite?: (step: number) => boolean;
}

/** A sample the fake worker trained on. */
export interface TrainedSample {
  readonly step: number;
  readonly epoch: number;
  readonly sampleId: number;
}

interface LeaseReader {
  readonly lease: ShardLease;
  /** Offsets of records not yet consumed, and the position after each. */
  readonly records: { offset: number; next: number }[];
}

/** The default hash: 32 bytes spelling the step (equal on every rank). */
export function stepHash(step: number): Buffer {
  const hash = Buffer.alloc(32);
  hash.writeUInt32BE(step, 0);
  hash.write('dinofleet', 4);
  return hash;
}

/** One fake worker. */
export class FakeWorker implements AsyncDisposable {
  readonly workerId: string;
  readonly received: ControlResponse[] = [];
  readonly trained: TrainedSample[] = [];
  readonly #options: FakeWorkerOptions;
  readonly #client: WorkerControlClient;
  #stream: ClientDuplexStream<ControlRequest, ControlResponse> | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  readonly #waiters = new Set<() => void>();
  #assignment: Assignment | undefined;
  /** Generation the coordinator aborted or held (its loop stops). */
  #stopped = 0;
  #acked = 0;
  #ended = false;
  /** Set when the coordinator ended the stream. */
  streamEnded = false;
  /** How the stream failed, when it did (UNAUTHENTICATED for a caller the coordinator refused). */
  streamError: DinofleetError | undefined;

  constructor(readonly coordinatorAddress: string, options: FakeWorkerOptions) {
    this.workerId = options.workerId;
    this.#options = options;
    this.#client = createClient(WorkerControlClient, coordinatorAddress, { credentials: channelCredentials(options.security ?? INSECURE) });
  }

  /** Opens the Control stream and registers. */
  connect(): this {
    const stream = this.#client.control();
    this.#stream = stream;
    stream.on('data', (response: ControlResponse) => {
      this.received.push(response);
      this.#onMessage(response);
      for (const wake of [...this.#waiters]) wake();
    });
    const ended = (): void => {
      this.streamEnded = true;
      for (const wake of [...this.#waiters]) wake();
    };
    stream.on('end', ended);
    stream.on('error', (err: Error) => {
      this.streamError = fromServiceError(err);
      ended();
    });
    const held = this.#options.held;
    stream.write({
      message: {
        $case: 'register',
        register: {
          workerId: this.workerId,
          collectiveAddress: `127.0.0.1:${10_000 + Math.floor(Math.random() * 50_000)}`,
          backend: 2,
          capabilities: undefined,
          jobId: held?.jobId ?? '',
          stateStep: held?.stateStep ?? 0,
          stateHash: held?.stateHash ?? Buffer.alloc(0),
          pendingStep: held?.pendingStep ?? 0,
          pendingHash: held?.pendingHash ?? Buffer.alloc(0),
        },
      },
    });
    this.#heartbeat = setInterval(() => {
      this.send({ message: { $case: 'heartbeat', heartbeat: { sentAtUnixMs: Date.now(), generation: this.#assignment?.generation ?? 0, step: this.#acked } } });
    }, this.#options.heartbeatMs ?? 500);
    return this;
  }

  /** Sends a message on the Control stream. */
  send(request: ControlRequest): void {
    if (this.#stream === undefined || this.#ended) return;
    this.#stream.write(request);
  }

  /** The last Assignment received. */
  get assignment(): Assignment | undefined {
    return this.#assignment;
  }

  /** Waits until `predicate` holds for a received message; returns it. */
  async waitFor<T>(pick: (message: ControlResponse) => T | undefined, timeoutMs = 10_000, fromIndex = 0): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let seen = fromIndex;
    for (;;) {
      for (; seen < this.received.length; seen++) {
        const message = this.received[seen];
        const picked = message === undefined ? undefined : pick(message);
        if (picked !== undefined) return picked;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.workerId}: timed out waiting for a control message (got ${this.received.map((m) => m.message?.$case).join(', ')})`);
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.#waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.#waiters.add(done);
      });
    }
  }

  /** Waits for a Stop; returns its reason. */
  waitForStop(timeoutMs = 10_000): Promise<string> {
    return this.waitFor((m) => (m.message?.$case === 'stop' ? m.message.stop.reason : undefined), timeoutMs);
  }

  /** Waits for an Assignment (of a generation >= `minGeneration`). */
  waitForAssignment(timeoutMs = 10_000, minGeneration = 0): Promise<Assignment> {
    return this.waitFor((m) => (m.message?.$case === 'assignment' && m.message.assignment.generation >= minGeneration ? m.message.assignment : undefined), timeoutMs);
  }

  /** Every Assignment received, oldest first. */
  assignments(): Assignment[] {
    return this.received.flatMap((m) => (m.message?.$case === 'assignment' ? [m.message.assignment] : []));
  }

  #onMessage(response: ControlResponse): void {
    const message = response.message;
    if (message === undefined) return;
    switch (message.$case) {
      case 'assignment':
        this.#assignment = message.assignment;
        this.#acked = message.assignment.startStep;
        if (this.#options.train ?? true) void this.#train(message.assignment).catch(() => undefined);
        break;
      case 'commitAck':
        this.#acked = Math.max(this.#acked, message.commitAck.step);
        // Held at the boundary: the next Assignment (or a Stop) follows.
        if (message.commitAck.hold) this.#stopped = Math.max(this.#stopped, message.commitAck.generation);
        break;
      case 'stop':
        this.#assignment = undefined;
        break;
      case 'abort':
        this.#stopped = Math.max(this.#stopped, message.abort.generation);
        break;
      default: {
        const unknown: never = message;
        return unknown;
      }
    }
  }

  async #openLease(lease: ShardLease): Promise<LeaseReader> {
    const manifest = this.#options.manifest;
    const records: { offset: number; next: number }[] = [];
    if (manifest !== undefined && lease.cursor < lease.end) {
      const offsets: number[] = [];
      for await (const record of readSplitRecords(manifest.s3, manifest.bucket, manifest.key, { index: lease.shard, start: lease.cursor, end: lease.end })) {
        offsets.push(record.offset);
      }
      offsets.forEach((offset, i) => records.push({ offset, next: offsets[i + 1] ?? lease.end }));
    }
    return { lease, records };
  }

  async #acquire(assignment: Assignment): Promise<ShardLease> {
    const response = await callUnary(
      this.#client,
      'acquireLease',
      { jobId: assignment.jobId, generation: assignment.generation, rank: assignment.rank, workerId: this.workerId },
      { deadlineMs: 10_000 },
    );
    if (response.lease === undefined) throw new Error('AcquireLease returned no lease');
    return response.lease;
  }

  /** Asks for a lease as this worker's rank (for tests of AcquireLease checks). */
  acquireLease(request: { jobId: string; generation: number; rank: number }): Promise<ShardLease | undefined> {
    return callUnary(this.#client, 'acquireLease', { ...request, workerId: this.workerId }, { deadlineMs: 10_000 }).then((r) => r.lease);
  }

  async #train(assignment: Assignment): Promise<void> {
    const generation = assignment.generation;
    const current = (): boolean =>
      this.#assignment?.generation === generation && this.#assignment.jobId === assignment.jobId && !this.#ended && this.#stopped < generation;
    if (assignment.shardLease === undefined) throw new Error('Assignment without a lease');
    let reader = await this.#openLease(assignment.shardLease);
    for (let step = assignment.startStep; step < assignment.totalSteps && current(); step++) {
      const cursors: DataCursor[] = [];
      const sampleIds: number[] = [];
      if (this.#options.manifest !== undefined) {
        while (sampleIds.length < assignment.perRankBatch) {
          const record = reader.records.shift();
          if (record === undefined) {
            // Used up: report it exhausted (once) and move to the next lease.
            const last = cursors.findLast((c) => c.leaseId === reader.lease.leaseId);
            if (last === undefined) cursors.push({ leaseId: reader.lease.leaseId, epoch: reader.lease.epoch, position: reader.lease.end, exhausted: true, positionWithin: 0, windowConsumed: 0 });
            else last.exhausted = true;
            reader = await this.#openLease(await this.#acquire(assignment));
            continue;
          }
          sampleIds.push(record.offset);
          this.trained.push({ step: step + 1, epoch: reader.lease.epoch, sampleId: record.offset });
          const existing = cursors.find((c) => c.leaseId === reader.lease.leaseId);
          const cursor = { leaseId: reader.lease.leaseId, epoch: reader.lease.epoch, position: record.next, exhausted: reader.records.length === 0, positionWithin: 0, windowConsumed: 0 };
          if (existing === undefined) cursors.push(cursor);
          else Object.assign(existing, cursor);
        }
      }
      if (this.#options.stepDelayMs !== undefined && this.#options.stepDelayMs > 0) await new Promise((r) => setTimeout(r, this.#options.stepDelayMs));
      if (!current()) return;
      if (this.#options.beforeCommit?.(step + 1) === false) return;
      const from = this.received.length;
      const nonfinite = this.#options.nonFinite?.(step + 1) ?? false;
      const hashOf = this.#options.hashOf ?? ((_rank: number, s: number) => stepHash(s));
      const hash = hashOf(assignment.rank, nonfinite ? step : step + 1);
      const checkpoint = assignment.rank === 0 && !nonfinite ? await this.#writeCheckpoint(assignment, step + 1, hash) : undefined;
      const epochs = this.trained.filter((t) => t.step === step + 1).map((t) => t.epoch);
      this.send({
        message: {
          $case: 'commitStep',
          commitStep: {
            generation,
            step: step + 1,
            stateHash: hash,
            dataCursors: cursors,
            sampleCount: sampleIds.length,
            lossParts: { total: 1 + assignment.rank, dino: 0.5 },
            sampleIds,
            skipped: [],
            imagesPerSecond: 100,
            lr: 0.001,
            checkpointUri: checkpoint?.uri ?? '',
            nonfinite,
            sampleEpochs: epochs.slice(-sampleIds.length),
            checkpointFiles: checkpoint?.files ?? [],
          },
        },
      });
      if (nonfinite) return; // like an unacknowledged step: the next Assignment follows
      const target = step + 1;
      await this.waitFor(
        (m) =>
          (m.message?.$case === 'commitAck' && m.message.commitAck.step >= target) ||
          m.message?.$case === 'stop' ||
          m.message?.$case === 'abort' ||
          m.message?.$case === 'assignment' ||
          this.streamEnded
            ? true
            : undefined,
        30_000,
        from,
      ).catch(() => undefined);
      if (this.#acked < target) return;
    }
  }

  /**
   * Rank 0's part of a checkpoint when the spec asks for one at `step`: two small objects
   * standing in for model.safetensors and state.json, reported as checkpoint_files.
   */
  async #writeCheckpoint(assignment: Assignment, step: number, hash: Buffer): Promise<{ uri: string; files: CheckpointFile[] } | undefined> {
    const spec = JSON.parse(assignment.jobSpecJson) as { spec: { checkpoint: { uri: string; everySteps: number } | null } };
    const checkpoint = spec.spec.checkpoint;
    const s3 = this.#options.manifest?.s3;
    if (checkpoint === null || s3 === undefined || (step % checkpoint.everySteps !== 0 && step !== assignment.totalSteps)) return undefined;
    const match = /^s3:\/\/([^/]+)\/(.*)$/.exec(checkpoint.uri);
    if (match === null) return undefined;
    const bucket = match[1] ?? '';
    const key = `${match[2] ?? ''}${assignment.jobId}/step-${String(step).padStart(8, '0')}/`;
    const files: CheckpointFile[] = [];
    for (const [name, text] of [
      ['model.safetensors', `tensors of step ${step}`],
      ['state.json', JSON.stringify({ step, stateHash: hash.toString('hex') })],
    ] as const) {
      const body = Buffer.from(text);
      await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${key}${name}`, Body: body }));
      files.push({ name, bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
    }
    return { uri: `s3://${bucket}/${key}`, files };
  }

  /** Sends Leaving (graceful: leaves at the next step boundary). */
  leave(reason: string, graceful = false): void {
    this.send({ message: { $case: 'leaving', leaving: { reason, graceful } } });
  }

  /** Sends StepFailed for the current generation. */
  stepFailed(reason: string, excludeMe = false): void {
    const assignment = this.#assignment;
    if (assignment === undefined) return;
    this.send({ message: { $case: 'stepFailed', stepFailed: { generation: assignment.generation, step: this.#acked + 1, reason, excludeMe } } });
  }

  /** Ends the Control stream from the worker's side (a crash as the coordinator sees it). */
  disconnect(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearInterval(this.#heartbeat);
    this.#stream?.cancel();
  }

  /** Disconnects and closes the channel. Idempotent. */
  close(): Promise<void> {
    this.disconnect();
    this.#client.close();
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
