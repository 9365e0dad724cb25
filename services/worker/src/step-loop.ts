/**
 * The step loop of one rank in one generation (docs/cluster.md, "Control stream and the
 * step loop", items 3-11): batch → crops → local step → teacher sums and the gradient
 * all-reduce → update → the next center → state hash → checkpoint → CommitStep, then wait
 * for the CommitAck before computing the next step.
 */
import * as tf from '@tensorflow/tfjs-core';
import { DEFAULT_FUSION_BUCKET_BYTES, allReduceFused } from '@dinofleet/collective';
import type { AllReduceStats, AllReduceTag, RingAllReduce } from '@dinofleet/collective';
import { Rng, applyUpdate, buildCropBatch, captureDinoState, computeLocalStep } from '@dinofleet/dino';
import type { DinoState, DinoStateCopy, LossParts, StepCollective, UpdateResult } from '@dinofleet/dino';
import { AbortedError, DataLossError } from '@dinofleet/proto';
import type { CheckpointFile, CommitStep } from '@dinofleet/proto';
import { StepPhase } from '@dinofleet/telemetry';
import type { Logger, TrainingMetrics } from '@dinofleet/telemetry';
import { batchImageCount } from './batch-loader.ts';
import type { BatchSource } from './batch-loader.ts';
import { encodeTeacherSnapshot, saveCheckpoint } from './checkpoint-writer.ts';
import type { CheckpointTarget } from './checkpoint-writer.ts';
import { GradientLayout } from './gradient-buffer.ts';
import { stateHash } from './state-hash.ts';
import type { NonfiniteFaults } from './fault-injection.ts';
import { snapshotSha256 } from './teacher-sync-client.ts';
import type { TeacherSumsPush, TeacherSyncConnection } from './teacher-sync-client.ts';

/**
 * Rank 0 sends a teacher snapshot every this many steps (and after the last one), and
 * every rank attests the snapshot's SHA-256.
 */
export const TEACHER_SNAPSHOT_EVERY_STEPS = 50;

/** The part of a RingAllReduce the step uses. */
export type StepRing = Pick<RingAllReduce, 'allReduceSum' | 'allReduceSumInPlace' | 'lastStats'>;

/** Where each rank's images sit in the global batch (docs/cluster.md, "Shards and steps"). */
export function rankBatch(globalBatch: number, worldSize: number, rank: number): { offset: number; size: number } {
  const base = Math.floor(globalBatch / worldSize);
  const extra = globalBatch % worldSize;
  const size = base + (rank < extra ? 1 : 0);
  const offset = rank * base + Math.min(rank, extra);
  return { offset, size };
}

/** Everything the loop needs for one generation. */
export interface StepLoopContext {
  readonly jobId: string;
  readonly generation: number;
  readonly rank: number;
  readonly worldSize: number;
  /** Images per step over all ranks (B). */
  readonly globalBatch: number;
  /** This rank's images per step (b_r). */
  readonly perRankBatch: number;
  /** Position of this rank's first image in the global batch. */
  readonly batchOffset: number;
  /** The job ends when this step commits. */
  readonly totalSteps: number;
  /** The training state (student, teacher, optimiser, centers), advanced in place. */
  readonly state: DinoState;
  readonly ring: StepRing;
  /**
   * Bytes per fusion bucket of the gradient all-reduce (`spec.collective.fusionBucketBytes`):
   * a multiple of 4; every rank must use the same value. @default 64 MiB (DEFAULT_FUSION_BUCKET_BYTES)
   */
  readonly fusionBucketBytes?: number;
  /** Called with the figures of each gradient bucket's all-reduce (e.g. for the busbw gauge). */
  readonly onGradientBucket?: (stats: AllReduceStats) => void;
  readonly batches: BatchSource;
  /** Needed by centering recipes (the center) and for snapshots (rank 0's upload, every rank's attestation). */
  readonly teacherSync: TeacherSyncConnection | null;
  /** Rank 0 with a checkpoint in the spec: where, and how often. */
  readonly checkpoint: (CheckpointTarget & { readonly everySteps: number }) | null;
  /**
   * Sends the CommitStep and resolves with its CommitAck's `hold` once the ack arrived. A
   * `nonfinite` commit is never acknowledged: the promise settles only when the run ends.
   */
  readonly commit: (commit: CommitStep) => Promise<{ readonly hold: boolean }>;
  /**
   * Takes the rollback copy of the state, captured just before the step's update: the
   * caller owns it from then on, restores it when the step does not commit and disposes it
   * on the step's CommitAck (docs/cluster.md, "The worker's state around a step").
   */
  readonly keepRollback: (copy: DinoStateCopy) => void;
  /** Test hook: steps whose loss slot this rank sets to NaN (DINOFLEET_FAULT_NONFINITE_STEPS). */
  readonly nonfiniteFaults?: NonfiniteFaults;
  /** Called when a step starts (its batch is taken). */
  readonly onStepStarted?: (step: number) => void;
  /** Called after every step is computed (before its commit), e.g. for heartbeats. */
  readonly onComputed?: (step: number) => void;
  readonly metrics?: TrainingMetrics;
  readonly logger: Logger;
  /** Aborts the loop between (and, through the ring, inside) steps. */
  readonly signal: AbortSignal;
}

/** What one step produced. */
export interface StepOutcome {
  readonly commit: CommitStep;
  readonly update: UpdateResult;
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new AbortedError(String(signal.reason));
}

function checkAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortReason(signal);
}

/** Settles like `promise`, or rejects with the abort reason as soon as `signal` aborts (the promise runs on). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

/** Rejects with the abort reason once `signal` aborts; never resolves. */
function waitForAbort(signal: AbortSignal): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal.aborted) reject(abortReason(signal));
    else signal.addEventListener('abort', () => reject(abortReason(signal)), { once: true });
  });
}

function lossParts(loss: LossParts, share: number): Record<string, number> {
  // computeLocalStep scales every part by the rank's share of the batch; the commit
  // reports the rank's own mean, which the coordinator averages over ranks.
  return {
    total: loss.total / share,
    dino: loss.dino / share,
    ibot: loss.ibot / share,
    koleo: loss.koleo / share,
    gram: loss.gram / share,
  };
}

/**
 * Sets `state.center` (and `ibotCenter`) to teacher-sync's center of this generation for
 * `step`; while it waits, a timed-out attempt pushes `push` (this rank's sums of the step
 * before) again, since a restarted teacher-sync rebuilds the center from the pushes alone.
 */
async function fetchCenter(ctx: StepLoopContext, step: number, push: TeacherSumsPush): Promise<void> {
  const { state, teacherSync } = ctx;
  if (teacherSync === null) throw new Error('a centering recipe needs teacher-sync');
  const center = await teacherSync.getCenter(ctx.jobId, step, {
    generation: ctx.generation,
    repush: () => teacherSync.pushTeacherSums(push),
    signal: ctx.signal,
  });
  if (center.center.length !== state.center.length) {
    throw new DataLossError(`teacher-sync's center for step ${step} has ${center.center.length} values, the head ${state.center.length}`);
  }
  // Once aborted, the state belongs to the caller again (it restores the rollback copy).
  checkAborted(ctx.signal);
  state.center = center.center;
  if (state.ibotCenter !== null && center.patchCenter !== null) state.ibotCenter = center.patchCenter;
}

/**
 * At a snapshot step: rank 0 uploads the teacher snapshot, then every rank (rank 0 too)
 * attests the SHA-256 of its own encoding, so teacher-sync can check the upload against
 * all ranks. Both are best-effort: a failure is logged and training goes on.
 */
async function snapshotTeacher(ctx: StepLoopContext, teacherSync: TeacherSyncConnection, step: number): Promise<void> {
  const { state, jobId, generation, rank } = ctx;
  let bytes: Uint8Array;
  try {
    // Deterministic: tensors in sorted name order, metadata {jobId, step} only, so ranks
    // with bit-identical teachers produce identical bytes.
    bytes = await untilAborted(encodeTeacherSnapshot(state, jobId), ctx.signal);
  } catch (err) {
    if (ctx.signal.aborted) throw abortReason(ctx.signal);
    ctx.logger.warn('encoding the teacher snapshot failed', { step, err });
    return;
  }
  if (rank === 0) {
    try {
      await untilAborted(
        teacherSync.putTeacherSnapshot({
          jobId,
          generation,
          step,
          storeUri: ctx.checkpoint === null ? '' : `${ctx.checkpoint.uri}${jobId}/`,
          bytes,
        }),
        ctx.signal,
      );
    } catch (err) {
      if (ctx.signal.aborted) throw abortReason(ctx.signal);
      ctx.logger.warn('teacher snapshot failed', { step, err });
    }
  }
  try {
    const sha256 = snapshotSha256(bytes);
    const attested = await untilAborted(teacherSync.attestTeacher({ jobId, generation, step, rank, worldSize: ctx.worldSize, sha256 }), ctx.signal);
    ctx.logger.debug('teacher snapshot attested', { step, sha256: sha256.toString('hex'), ...attested });
  } catch (err) {
    if (ctx.signal.aborted) throw abortReason(ctx.signal);
    ctx.logger.warn('teacher snapshot attestation failed', { step, err });
  }
}

/**
 * Runs step `ctx.state.step` (items 3-10) and returns its CommitStep; does not commit.
 * @param layout the gradient buffer's layout for `ctx.state.student`.
 * @param reduced where the gradient all-reduce puts its result, `layout.size` elements,
 * overwritten every step: the loop keeps one per run rather than allocating (and
 * page-faulting in) a gradient-sized array per step. @default a new array
 */
export async function computeStep(
  ctx: StepLoopContext,
  layout: GradientLayout,
  reduced: Float32Array = new Float32Array(layout.size),
): Promise<StepOutcome> {
  const { state, ring, jobId, generation, rank } = ctx;
  const { recipe } = state;
  const s = state.step;
  const centering = recipe.targets === 'centering';
  const started = performance.now();
  const phase = (p: StepPhase): (() => number) => ctx.metrics?.startPhaseTimer(p) ?? (() => 0);

  const endData = phase(StepPhase.Data);
  ctx.onStepStarted?.(s);
  // A loader stuck in a retry or an AcquireLease must not keep an aborted run alive.
  const batch = await untilAborted(ctx.batches.next(), ctx.signal);
  const count = batchImageCount(batch);
  if (count !== ctx.perRankBatch) {
    throw new DataLossError(`step ${s}: the loader gave ${count} images, the rank's batch is ${ctx.perRankBatch}`);
  }
  if (batch.crops !== undefined && batch.cropStep !== s) {
    throw new DataLossError(`step ${s}: the loader cropped its batch for step ${batch.cropStep ?? '?'}`);
  }
  checkAborted(ctx.signal);

  // The loader's threads usually cropped the batch already (the same crops, drawn from the
  // same streams); otherwise they are built here.
  const crops = batch.crops ?? buildCropBatch(batch.images, recipe.crops, new Rng(state.seed).fork(s + 1), ctx.batchOffset);
  const dataSeconds = endData();

  const endCompute = phase(StepPhase.Compute);
  let op = 0;
  const collective: StepCollective = {
    globalBatchSize: ctx.globalBatch,
    rank,
    reduceSum: async (local) => {
      // The tag is taken before any await: every rank numbers its collectives in program order.
      const tag = { step: s, op: op++ };
      const summed = await ring.allReduceSum((await local.data()) as Float32Array, tag);
      return tf.tensor(summed, local.shape, 'float32');
    },
  };
  const local = await computeLocalStep(state, crops, collective);
  endCompute();

  const endAllreduce = phase(StepPhase.Allreduce);
  const sums = local.teacherSums;
  const push: TeacherSumsPush = {
    jobId,
    generation,
    step: s,
    rank,
    worldSize: ctx.worldSize,
    centerMomentum: recipe.teacher.centerMomentum,
    sums: sums.cls,
    count: sums.clsCount,
    patchSums: sums.patch,
    patchCount: sums.patchCount,
    // The centers step s used: teacher-sync derives the next ones from them.
    baseCenter: state.center,
    basePatchCenter: state.ibotCenter,
    signal: ctx.signal,
  };
  const pushed = centering && ctx.teacherSync !== null ? ctx.teacherSync.pushTeacherSums(push) : Promise.resolve(undefined);
  // Seen by the await below; until then a failure must not count as unhandled.
  pushed.catch(() => undefined);
  let lossSlot = local.loss.total;
  if (ctx.nonfiniteFaults?.take(s) === true) {
    // The fault test hook: a NaN in this rank's loss slot makes the all-reduced loss NaN on
    // every rank, so they all take the non-finite path together.
    ctx.logger.warn('fault injection: NaN in the loss slot of this step (DINOFLEET_FAULT_NONFINITE_STEPS)', { step: s });
    lossSlot = Number.NaN;
  }
  let summed: Float32Array;
  try {
    // Tensor fusion: the gradients (and the loss slot) in buffer order, one all-reduce per
    // bucket, the next bucket's gradients downloaded while this one is summed. Each element
    // is still the plain sum over ranks, so the buckets change no number.
    const fused = await allReduceFused(
      layout.parts(local.grads, lossSlot),
      async (bucket) => {
        // The tag is taken before any await, as above; buckets are reduced in order.
        const tag: AllReduceTag = { step: s, op: op++ };
        const result = await ring.allReduceSumInPlace(bucket, tag);
        const stats = ring.lastStats;
        if (stats !== undefined && stats.step === tag.step && stats.op === tag.op) ctx.onGradientBucket?.(stats);
        return result;
      },
      { bucketBytes: ctx.fusionBucketBytes ?? DEFAULT_FUSION_BUCKET_BYTES, output: reduced },
    );
    summed = fused.values;
  } finally {
    // Only after the fused call has settled: it reads the tensors until its last bucket.
    tf.dispose(Object.values(local.grads));
  }
  await pushed;
  endAllreduce();
  checkAborted(ctx.signal);

  const endOptimizer = phase(StepPhase.Optimizer);
  const { grads, loss: globalLoss } = layout.unflatten(summed);
  // The acknowledged state, for the caller to restore if this step does not commit.
  ctx.keepRollback(captureDinoState(state));
  const update = applyUpdate(state, grads, sums, globalLoss, { centers: centering ? 'external' : 'local' });
  const nonfinite = !update.applied;
  if (nonfinite) {
    // Every rank saw the same global loss and gradient, so every rank skips the update and
    // reports it; the coordinator retries the step in a new generation (state.step stays s).
    ctx.logger.warn('non-finite loss or gradient: update skipped, reporting it', { step: s, loss: globalLoss, gradNorm: update.gradNorm });
  } else if (centering) {
    // The center step s+1 uses (teacher-sync's, from every rank's step-s sums), taken now
    // rather than at the start of step s+1: the state after step s then holds what the
    // one-process state does after trainStep, so the hash and the checkpoint cover it.
    await fetchCenter(ctx, s + 1, push);
  }
  endOptimizer();

  const hash = await stateHash(state);
  checkAborted(ctx.signal);
  let checkpointUri = '';
  let checkpointFiles: CheckpointFile[] = [];
  const last = s + 1 === ctx.totalSteps;
  if (!nonfinite && rank === 0 && ctx.checkpoint !== null && ((s + 1) % ctx.checkpoint.everySteps === 0 || last)) {
    try {
      const saved = await untilAborted(saveCheckpoint(ctx.checkpoint, state, hash), ctx.signal);
      checkpointUri = saved.uri;
      checkpointFiles = saved.files;
      ctx.logger.info('checkpoint written', { step: s + 1, uri: checkpointUri });
    } catch (err) {
      checkAborted(ctx.signal);
      ctx.logger.error('checkpoint failed; training goes on', { step: s + 1, err });
    }
  }
  if (!nonfinite && ctx.teacherSync !== null && ((s + 1) % TEACHER_SNAPSHOT_EVERY_STEPS === 0 || last)) {
    await snapshotTeacher(ctx, ctx.teacherSync, s + 1);
  }

  const seconds = (performance.now() - started) / 1000;
  const share = ctx.perRankBatch / ctx.globalBatch;
  const parts = lossParts(local.loss, share);
  ctx.metrics?.observePhase(StepPhase.Total, seconds);
  ctx.metrics?.setDataWaitFraction(dataSeconds / seconds);
  ctx.metrics?.recordStep(
    {
      ...update,
      step: s,
      loss: { total: parts.total ?? NaN, dino: parts.dino ?? NaN, ibot: parts.ibot ?? NaN, koleo: parts.koleo ?? NaN, gram: parts.gram ?? NaN },
      teacherEntropy: local.collapse.teacherEntropy / local.collapse.rows,
      agreement: local.collapse.agreement / local.collapse.rows,
    },
    { prototypes: recipe.dinoHead.outDim, imagesPerSecond: ctx.globalBatch / seconds },
  );

  return {
    update,
    commit: {
      generation,
      step: s + 1,
      stateHash: hash,
      dataCursors: [...batch.cursors],
      sampleCount: count,
      lossParts: parts,
      sampleIds: [...batch.sampleIds],
      skipped: [...batch.skipped],
      imagesPerSecond: count / seconds,
      lr: update.lr,
      checkpointUri,
      nonfinite,
      sampleEpochs: [...batch.sampleEpochs],
      checkpointFiles,
    },
  };
}

/**
 * Runs steps from `ctx.state.step` until `totalSteps` has committed, committing each and
 * waiting for its ack before the next one. After a non-finite step or an ack with `hold`
 * it starts nothing more and waits for the run to end (an Abort, Assignment or Stop
 * follows). Rejects when a step fails or `signal` aborts.
 */
export async function runStepLoop(ctx: StepLoopContext): Promise<void> {
  const layout = new GradientLayout(ctx.state.student);
  // One result buffer for the run's gradient all-reduces (unflatten copies out of it).
  const reduced = new Float32Array(layout.size);
  while (ctx.state.step < ctx.totalSteps) {
    checkAborted(ctx.signal);
    const { commit } = await computeStep(ctx, layout, reduced);
    ctx.onComputed?.(commit.step);
    checkAborted(ctx.signal);
    const { hold } = await untilAborted(ctx.commit(commit), ctx.signal);
    if (commit.nonfinite || hold) {
      ctx.logger.info(commit.nonfinite ? 'waiting for the coordinator after a non-finite step' : 'holding at the step boundary', { step: commit.step });
      await waitForAbort(ctx.signal);
    }
  }
}
