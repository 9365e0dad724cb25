/**
 * The step loop of one rank in one generation (docs/cluster.md, "Control stream and the
 * step loop", items 3-11): batch → crops → local step → teacher sums and the gradient
 * all-reduce → update → the next center → state hash → checkpoint → CommitStep, then wait
 * for the CommitAck before computing the next step.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { RingAllReduce } from '@dinofleet/collective';
import { Rng, applyUpdate, buildCropBatch, computeLocalStep } from '@dinofleet/dino';
import type { DinoState, LossParts, StepCollective, UpdateResult } from '@dinofleet/dino';
import { AbortedError, DataLossError } from '@dinofleet/proto';
import type { CommitStep } from '@dinofleet/proto';
import { StepPhase } from '@dinofleet/telemetry';
import type { Logger, TrainingMetrics } from '@dinofleet/telemetry';
import type { BatchSource } from './batch-loader.ts';
import { encodeTeacherSnapshot, saveCheckpoint } from './checkpoint-writer.ts';
import type { CheckpointTarget } from './checkpoint-writer.ts';
import { GradientLayout } from './gradient-buffer.ts';
import { stateHash } from './state-hash.ts';
import { snapshotSha256 } from './teacher-sync-client.ts';
import type { TeacherSyncConnection } from './teacher-sync-client.ts';

/**
 * Rank 0 sends a teacher snapshot every this many steps (and after the last one), and
 * every rank attests the snapshot's SHA-256.
 */
export const TEACHER_SNAPSHOT_EVERY_STEPS = 50;

/** The part of a RingAllReduce the step uses. */
export type StepRing = Pick<RingAllReduce, 'allReduceSum' | 'allReduceSumInPlace'>;

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
  readonly batches: BatchSource;
  /** Needed by centering recipes (the center) and for snapshots (rank 0's upload, every rank's attestation). */
  readonly teacherSync: TeacherSyncConnection | null;
  /** Rank 0 with a checkpoint in the spec: where, and how often. */
  readonly checkpoint: (CheckpointTarget & { readonly everySteps: number }) | null;
  /** Sends the CommitStep and resolves once its CommitAck arrived. */
  readonly commit: (commit: CommitStep) => Promise<void>;
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

function checkAborted(signal: AbortSignal): void {
  if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new AbortedError(String(signal.reason));
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

/** Sets `state.center` (and `ibotCenter`) to teacher-sync's center for `step`. */
async function fetchCenter(ctx: StepLoopContext, step: number): Promise<void> {
  const { state } = ctx;
  if (ctx.teacherSync === null) throw new Error('a centering recipe needs teacher-sync');
  const center = await ctx.teacherSync.getCenter(ctx.jobId, step);
  if (center.center.length !== state.center.length) {
    throw new DataLossError(`teacher-sync's center for step ${step} has ${center.center.length} values, the head ${state.center.length}`);
  }
  state.center = center.center;
  if (state.ibotCenter !== null && center.patchCenter !== null) state.ibotCenter = center.patchCenter;
  checkAborted(ctx.signal);
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
    bytes = await encodeTeacherSnapshot(state, jobId);
  } catch (err) {
    ctx.logger.warn('encoding the teacher snapshot failed', { step, err });
    return;
  }
  if (rank === 0) {
    try {
      await teacherSync.putTeacherSnapshot({
        jobId,
        generation,
        step,
        storeUri: ctx.checkpoint === null ? '' : `${ctx.checkpoint.uri}${jobId}/`,
        bytes,
      });
    } catch (err) {
      ctx.logger.warn('teacher snapshot failed', { step, err });
    }
  }
  try {
    const sha256 = snapshotSha256(bytes);
    const attested = await teacherSync.attestTeacher({ jobId, generation, step, rank, worldSize: ctx.worldSize, sha256 });
    ctx.logger.debug('teacher snapshot attested', { step, sha256: sha256.toString('hex'), ...attested });
  } catch (err) {
    ctx.logger.warn('teacher snapshot attestation failed', { step, err });
  }
}

/** Runs step `ctx.state.step` (items 3-10) and returns its CommitStep; does not commit. */
export async function computeStep(ctx: StepLoopContext, layout: GradientLayout): Promise<StepOutcome> {
  const { state, ring, jobId, generation, rank } = ctx;
  const { recipe } = state;
  const s = state.step;
  const centering = recipe.targets === 'centering';
  const started = performance.now();
  const phase = (p: StepPhase): (() => number) => ctx.metrics?.startPhaseTimer(p) ?? (() => 0);

  const endData = phase(StepPhase.Data);
  const batch = await ctx.batches.next();
  if (batch.images.length !== ctx.perRankBatch) {
    throw new DataLossError(`step ${s}: the loader gave ${batch.images.length} images, the rank's batch is ${ctx.perRankBatch}`);
  }
  checkAborted(ctx.signal);

  const crops = buildCropBatch(batch.images, recipe.crops, new Rng(state.seed).fork(s + 1), ctx.batchOffset);
  endData();

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
  const pushed =
    centering && ctx.teacherSync !== null
      ? ctx.teacherSync.pushTeacherSums({
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
        })
      : Promise.resolve(undefined);
  // Seen by the await below; until then a failure must not count as unhandled.
  pushed.catch(() => undefined);
  let flat: Float32Array;
  try {
    flat = await layout.flatten(local.grads, local.loss.total);
  } finally {
    tf.dispose(Object.values(local.grads));
  }
  const summed = await ring.allReduceSumInPlace(flat, { step: s, op: op++ });
  await pushed;
  endAllreduce();
  checkAborted(ctx.signal);

  const endOptimizer = phase(StepPhase.Optimizer);
  const { grads, loss: globalLoss } = layout.unflatten(summed);
  const update = applyUpdate(state, grads, sums, globalLoss, { centers: centering ? 'external' : 'local' });
  if (!update.applied) {
    // Every rank saw the same global loss and gradient, so every rank skips the update;
    // the step still counts (its samples are consumed) so step numbers stay in lock-step.
    ctx.logger.warn('non-finite loss or gradient: update skipped', { step: s, loss: globalLoss, gradNorm: update.gradNorm });
    state.step = s + 1;
  }
  if (centering) {
    // The center step s+1 uses (teacher-sync's, from every rank's step-s sums), taken now
    // rather than at the start of step s+1: the state after step s then holds what the
    // one-process state does after trainStep, so the hash and the checkpoint cover it.
    await fetchCenter(ctx, s + 1);
  }
  endOptimizer();

  const hash = await stateHash(state);
  let checkpointUri = '';
  const last = s + 1 === ctx.totalSteps;
  if (rank === 0 && ctx.checkpoint !== null && ((s + 1) % ctx.checkpoint.everySteps === 0 || last)) {
    try {
      checkpointUri = await saveCheckpoint(ctx.checkpoint, state);
      ctx.logger.info('checkpoint written', { step: s + 1, uri: checkpointUri });
    } catch (err) {
      ctx.logger.error('checkpoint failed; training goes on', { step: s + 1, err });
    }
  }
  if (ctx.teacherSync !== null && ((s + 1) % TEACHER_SNAPSHOT_EVERY_STEPS === 0 || last)) await snapshotTeacher(ctx, ctx.teacherSync, s + 1);

  const seconds = (performance.now() - started) / 1000;
  const share = ctx.perRankBatch / ctx.globalBatch;
  const parts = lossParts(local.loss, share);
  ctx.metrics?.observePhase(StepPhase.Total, seconds);
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
      sampleCount: batch.images.length,
      lossParts: parts,
      sampleIds: [...batch.sampleIds],
      skipped: [...batch.skipped],
      imagesPerSecond: batch.images.length / seconds,
      lr: update.lr,
      checkpointUri,
    },
  };
}

/**
 * Runs steps from `ctx.state.step` until `totalSteps` has committed, committing each and
 * waiting for its ack before the next one. Rejects when a step fails or `signal` aborts.
 */
export async function runStepLoop(ctx: StepLoopContext): Promise<void> {
  const layout = new GradientLayout(ctx.state.student);
  while (ctx.state.step < ctx.totalSteps) {
    checkAborted(ctx.signal);
    const { commit } = await computeStep(ctx, layout);
    ctx.onComputed?.(commit.step);
    checkAborted(ctx.signal);
    await ctx.commit(commit);
  }
}
