import * as tf from '@tensorflow/tfjs-core';
import { AdamW } from './adamw.ts';
import { sampleBatchMasks } from './block-mask.ts';
import { centeredTeacherProbs, teacherLogitSums, updateCenter } from './centering.ts';
import { clipByGlobalNorm } from './clip.ts';
import { dinoCrossEntropyLoss } from './dino-loss.ts';
import { emaUpdate } from './ema.ts';
import { gramLoss, gramWeight } from './gram-loss.ts';
import { dinoHeadForward, initDinoHeadParams, type DinoHeadConfig } from './heads.ts';
import { ibotPatchLoss } from './ibot-loss.ts';
import { koleoLoss } from './koleo-loss.ts';
import { gatherRows } from './ops.ts';
import { paramGroupFor } from './param-groups.ts';
import type { DinoRecipe } from './presets.ts';
import { Rng } from './rng.ts';
import { buildTrainingSchedules, scaleLearningRate, type TrainingSchedules } from './schedules.ts';
import { sinkhornKnoppTargets } from './sinkhorn-knopp.ts';
import { initVitParams, vitForward } from './vit.ts';

/**
 * One batch of multi-crop views, crop-major: `global` holds crop 0 of every image, then
 * crop 1 of every image; `local` likewise. Values are normalised NHWC float32.
 */
export interface CropBatch {
  /** Images in this rank's part of the batch. */
  readonly batchSize: number;
  readonly nGlobal: number;
  readonly nLocal: number;
  /** Side of a global crop in pixels. */
  readonly globalSize: number;
  /** Side of a local crop in pixels. */
  readonly localSize: number;
  readonly channels: number;
  /** `[nGlobal·batchSize, globalSize, globalSize, channels]`. */
  readonly global: Float32Array;
  /** `[nLocal·batchSize, localSize, localSize, channels]` (empty when nLocal is 0). */
  readonly local: Float32Array;
}

/**
 * What the step needs from the rest of the fleet. In one process the sums are the
 * identity; in the cluster they are all-reduces over the generation's ranks.
 */
export interface StepCollective {
  /** Images in the global batch (all ranks together). */
  readonly globalBatchSize: number;
  /** This rank's index in the generation (0 in one process); it seeds the rank's random stream. */
  readonly rank: number;
  /** Element-wise sum of a small tensor over all ranks (Sinkhorn-Knopp's statistics). */
  reduceSum(local: tf.Tensor): Promise<tf.Tensor>;
}

/** The collective of a single process: sums are the identity. */
export function singleProcessCollective(globalBatchSize: number): StepCollective {
  return { globalBatchSize, rank: 0, reduceSum: (t) => Promise.resolve(t.clone()) };
}

/**
 * How long a run is, which fixes the schedules. The run is mapped onto the recipe's
 * `referenceEpochs`, so warm-ups keep the reference's proportions at any length.
 */
export interface RunLength {
  readonly totalSteps: number;
}

/**
 * Everything one rank holds. Student and teacher are bit-identical on every rank of a
 * generation, because every rank applies the same update to the same state.
 */
export interface DinoState {
  readonly recipe: DinoRecipe;
  readonly seed: number;
  readonly student: Readonly<Record<string, tf.Variable>>;
  readonly teacher: Readonly<Record<string, tf.Variable>>;
  /** DINOv3's Gram teacher, taken from the EMA teacher at `gram.startStep`; null before. */
  gramTeacher: Record<string, tf.Variable> | null;
  readonly optimizer: AdamW;
  readonly schedules: TrainingSchedules;
  /** Running center of the teacher's CLS logits (centering only). */
  center: Float32Array;
  /** Running center of the teacher's patch logits (iBOT with centering only). */
  ibotCenter: Float32Array | null;
  /** Committed optimisation steps so far. */
  step: number;
}

/** Parameters that never get gradients: weight-norm magnitudes fixed to 1 (DINO's norm_last_layer). */
export function isTrainable(name: string): boolean {
  return !name.endsWith('.weight_g');
}

function ibotHeadOf(recipe: DinoRecipe): { prefix: 'dino_head' | 'ibot_head'; cfg: DinoHeadConfig } {
  return recipe.ibot?.separateHead === true
    ? { prefix: 'ibot_head', cfg: recipe.ibot.head }
    : { prefix: 'dino_head', cfg: recipe.dinoHead };
}

/** Initialises student, teacher (a copy of the student, as in DINO), optimiser and schedules. */
export function createDinoState(recipe: DinoRecipe, seed: number, run: RunLength): DinoState {
  const rng = new Rng(seed);
  const init: Record<string, tf.Tensor> = {
    ...initVitParams(recipe.vit, rng.fork(1)),
    ...initDinoHeadParams(recipe.dinoHead, 'dino_head', rng.fork(2)),
    ...(recipe.ibot?.separateHead === true ? initDinoHeadParams(recipe.ibot.head, 'ibot_head', rng.fork(3)) : {}),
  };
  const student: Record<string, tf.Variable> = {};
  const teacher: Record<string, tf.Variable> = {};
  for (const name of Object.keys(init).sort()) {
    const value = init[name] as tf.Tensor;
    student[name] = tf.variable(value, isTrainable(name));
    teacher[name] = tf.variable(value, false);
    value.dispose();
  }
  const trainable = Object.fromEntries(Object.entries(student).filter(([name]) => isTrainable(name)));
  const { optim, teacher: t } = recipe;
  const optimizer = new AdamW(
    trainable,
    (name) => paramGroupFor(name, { depth: recipe.vit.depth, layerDecay: optim.layerDecay, patchEmbedLrMult: optim.patchEmbedLrMult }),
    { beta1: optim.beta1, beta2: optim.beta2 },
  );
  const peakLr = scaleLearningRate(optim.baseLr, recipe.globalBatchSize, optim.lrScaling);
  const schedules = buildTrainingSchedules({
    totalSteps: run.totalSteps,
    stepsPerEpoch: run.totalSteps / recipe.referenceEpochs,
    warmupEpochs: optim.warmupEpochs,
    baseLr: peakLr,
    minLr: optim.constantSchedules ? peakLr : optim.minLr,
    weightDecay: optim.weightDecay,
    weightDecayEnd: optim.weightDecayEnd,
    momentumTeacher: t.momentum,
    momentumTeacherEnd: t.momentumEnd,
    teacherTemp: t.teacherTemp,
    warmupTeacherTemp: t.warmupTeacherTemp,
    warmupTeacherTempEpochs: t.warmupTeacherTempEpochs,
    freezeLastLayerEpochs: optim.freezeLastLayerEpochs,
  });
  const ibotCenterDim = recipe.ibot !== null && recipe.targets === 'centering' ? ibotHeadOf(recipe).cfg.outDim : 0;
  return {
    recipe,
    seed,
    student,
    teacher,
    gramTeacher: null,
    optimizer,
    schedules,
    center: new Float32Array(recipe.dinoHead.outDim),
    ibotCenter: ibotCenterDim > 0 ? new Float32Array(ibotCenterDim) : null,
    step: 0,
  };
}

/** Frees every tensor the state holds. */
export function disposeDinoState(state: DinoState): void {
  for (const v of Object.values(state.student)) v.dispose();
  for (const v of Object.values(state.teacher)) v.dispose();
  for (const v of Object.values(state.gramTeacher ?? {})) v.dispose();
  state.optimizer.dispose();
}

/** Sums of the teacher outputs that the running centers need, over this rank's rows. */
export interface TeacherSums {
  readonly cls: Float32Array;
  readonly clsCount: number;
  readonly patch: Float32Array | null;
  readonly patchCount: number;
}

/** Loss parts, each already multiplied by this rank's share of the global batch. */
export interface LossParts {
  readonly total: number;
  readonly dino: number;
  readonly ibot: number;
  readonly koleo: number;
  readonly gram: number;
}

/** Collapse indicators for this rank's rows (sums; divide by `rows`). */
export interface CollapseSums {
  /** Σ over teacher rows of the target entropy in nats. */
  readonly teacherEntropy: number;
  /** Σ over global crops of [argmax student == argmax teacher] on the same view. */
  readonly agreement: number;
  readonly rows: number;
}

/**
 * Phases 1-2 of a step on one rank: teacher targets, student forward/backward. The
 * gradients are scaled by this rank's share of the global batch, so their element-wise
 * sum over ranks is the gradient of the global-batch loss.
 */
export interface LocalStepResult {
  readonly grads: Record<string, tf.Tensor>;
  readonly teacherSums: TeacherSums;
  readonly loss: LossParts;
  readonly collapse: CollapseSums;
}

/** A per-step random stream: identical for a (seed, step, rank) wherever it is drawn. */
export function stepRng(seed: number, step: number, rank: number): Rng {
  return new Rng((Math.imul(seed ^ 0x5bd1e995, 0x27d4eb2d) + Math.imul(step + 1, 0x165667b1) + Math.imul(rank + 1, 0x9e3779b1)) >>> 0);
}

/** Phases 1-2: teacher forward and targets, student forward and backward. */
export async function computeLocalStep(state: DinoState, batch: CropBatch, collective: StepCollective): Promise<LocalStepResult> {
  const { recipe } = state;
  const { vit } = recipe;
  const B = batch.batchSize;
  const nG = batch.nGlobal;
  const nCrops = nG + batch.nLocal;
  const rng = stepRng(state.seed, state.step, collective.rank);
  const grid = batch.globalSize / vit.patchSize;
  const nPatches = grid * grid;
  const teacherTemp = state.schedules.teacherTemp(state.step);
  const share = B / collective.globalBatchSize;
  const gramW = recipe.gram !== null && state.gramTeacher !== null ? gramWeight(state.step, recipe.gram) : 0;
  const ibotHead = ibotHeadOf(recipe);

  const globals = tf.tensor4d(batch.global, [nG * B, batch.globalSize, batch.globalSize, batch.channels]);
  const locals =
    batch.nLocal > 0 ? tf.tensor4d(batch.local, [batch.nLocal * B, batch.localSize, batch.localSize, batch.channels]) : null;
  const masks =
    recipe.ibot !== null
      ? sampleBatchMasks(rng.fork(1), nG * B, grid, grid, {
          ratioMin: recipe.ibot.maskRatio[0],
          ratioMax: recipe.ibot.maskRatio[1],
          probability: recipe.ibot.maskProbability,
        })
      : null;
  const nMasked = masks?.maskedIndices.length ?? 0;
  const owned: tf.Tensor[] = [globals];
  if (locals !== null) owned.push(locals);
  try {
    const maskTensor = masks !== null ? tf.tensor2d(masks.masks, [nG * B, nPatches], 'float32') : null;
    const maskedIdx = nMasked > 0 && masks !== null ? tf.tensor1d(masks.maskedIndices, 'int32') : null;
    const maskWeights = nMasked > 0 && masks !== null ? tf.tensor1d(masks.weights) : null;
    for (const t of [maskTensor, maskedIdx, maskWeights]) if (t !== null) owned.push(t);

    // Teacher: global crops only, no masks, no gradient.
    const teacherTensors = tf.tidy(() => {
      const out = vitForward(state.teacher, vit, globals);
      const cls = dinoHeadForward(state.teacher, 'dino_head', recipe.dinoHead, out.cls);
      if (maskedIdx === null) return [cls];
      const flat = tf.reshape<tf.Rank.R2>(out.patches, [nG * B * nPatches, vit.embedDim]);
      return [cls, dinoHeadForward(state.teacher, ibotHead.prefix, ibotHead.cfg, tf.gather(flat, maskedIdx))];
    });
    owned.push(...teacherTensors);
    const teacherOut = {
      cls: teacherTensors[0] as tf.Tensor2D,
      patch: teacherTensors[1] ?? null,
    };

    const clsSums = teacherLogitSums(teacherOut.cls);
    const patchSums = teacherOut.patch !== null ? teacherLogitSums(teacherOut.patch) : null;
    let clsTargets: tf.Tensor2D;
    let patchTargets: tf.Tensor2D | null = null;
    if (recipe.targets === 'centering') {
      clsTargets = tf.tidy(() => centeredTeacherProbs(teacherOut.cls, tf.tensor1d(state.center), teacherTemp));
      if (teacherOut.patch !== null && state.ibotCenter !== null) {
        const ibotCenter = state.ibotCenter;
        const patchLogits = teacherOut.patch;
        patchTargets = tf.tidy(() => centeredTeacherProbs(patchLogits, tf.tensor1d(ibotCenter), teacherTemp));
      }
    } else {
      clsTargets = await sinkhornKnoppTargets(teacherOut.cls, {
        teacherTemp,
        iterations: recipe.sinkhornIterations,
        reduceSum: (t) => collective.reduceSum(t),
        globalBatch: nG * collective.globalBatchSize,
      });
      if (recipe.ibot !== null) {
        // Every rank joins the masked-count all-reduce, also one that masked nothing.
        const countLocal = tf.scalar(nMasked);
        const countGlobal = await collective.reduceSum(countLocal);
        const globalMasked = Math.round((await countGlobal.data())[0] ?? 0);
        countLocal.dispose();
        countGlobal.dispose();
        if (teacherOut.patch !== null && globalMasked > 0) {
          patchTargets = await sinkhornKnoppTargets(teacherOut.patch, {
            teacherTemp,
            iterations: recipe.sinkhornIterations,
            reduceSum: (t) => collective.reduceSum(t),
            globalBatch: globalMasked,
          });
        }
      }
    }
    owned.push(clsTargets);
    if (patchTargets !== null) owned.push(patchTargets);

    const gramPatches =
      gramW > 0 && state.gramTeacher !== null ? tf.tidy(() => vitForward(state.gramTeacher ?? {}, vit, globals).patches) : null;
    if (gramPatches !== null) owned.push(gramPatches);

    // Student: every crop, masks on the global crops, stochastic depth.
    const trainableNames = Object.keys(state.student).filter(isTrainable);
    const varList = trainableNames.map((n) => state.student[n] as tf.Variable);
    const parts: tf.Scalar[] = [];
    // Written inside the gradient closure, kept past it for the agreement indicator.
    const kept: { studentArgmax?: tf.Tensor } = {};
    const dropPath = recipe.dropPathRate > 0 ? { rate: recipe.dropPathRate, rng: rng.fork(2) } : undefined;
    const { value, grads } = tf.variableGrads(() => {
      const sg = vitForward(state.student, vit, globals, {
        ...(maskTensor !== null ? { masks: maskTensor } : {}),
        ...(dropPath !== undefined ? { dropPath } : {}),
      });
      const sl = locals !== null ? vitForward(state.student, vit, locals, dropPath !== undefined ? { dropPath } : {}) : null;
      const cls = sl !== null ? tf.concat([sg.cls, sl.cls], 0) : sg.cls;
      const logits = dinoHeadForward(state.student, 'dino_head', recipe.dinoHead, cls);
      kept.studentArgmax = tf.keep(tf.argMax(tf.slice(logits, [0, 0], [nG * B, -1]), 1));
      const dino = dinoCrossEntropyLoss(logits, clsTargets, { nGlobal: nG, nCrops, studentTemp: recipe.studentTemp });
      let total: tf.Scalar = tf.mul(dino, recipe.dinoWeight);
      let ibot: tf.Scalar = tf.scalar(0);
      if (recipe.ibot !== null && maskedIdx !== null && maskWeights !== null && patchTargets !== null) {
        const flat = tf.reshape<tf.Rank.R2>(sg.patches, [nG * B * nPatches, vit.embedDim]);
        const patchLogits = dinoHeadForward(state.student, ibotHead.prefix, ibotHead.cfg, gatherRows(flat, maskedIdx));
        ibot = ibotPatchLoss(patchLogits, patchTargets, maskWeights, { studentTemp: recipe.studentTemp, nImages: nG * B });
        total = tf.add(total, tf.mul(ibot, recipe.ibot.weight));
      }
      let koleo: tf.Scalar = tf.scalar(0);
      if (recipe.koleoWeight > 0) {
        // DINOv2: KoLeo on the backbone CLS of each global crop separately, summed.
        const perCrop = tf.split(sg.cls, nG, 0).map((c) => koleoLoss(c as tf.Tensor2D));
        koleo = tf.addN(perCrop);
        total = tf.add(total, tf.mul(koleo, recipe.koleoWeight));
      }
      let gram: tf.Scalar = tf.scalar(0);
      if (gramPatches !== null) {
        gram = gramLoss(sg.patches, gramPatches);
        total = tf.add(total, tf.mul(gram, gramW));
      }
      for (const p of [total, dino, ibot, koleo, gram]) parts.push(tf.keep(tf.mul(p, share)));
      return tf.mul(total, share);
    }, varList);
    value.dispose();

    // tfjs keys gradients by variable name; map back, and give unused parameters (a mask
    // token when nothing was masked) explicit zeros so every rank sends the same set.
    const byVarName = new Map(varList.map((v, i) => [v.name, trainableNames[i] as string]));
    const named: Record<string, tf.Tensor> = {};
    for (const [varName, g] of Object.entries(grads)) {
      const name = byVarName.get(varName);
      if (name !== undefined) named[name] = g;
    }
    for (const name of trainableNames) named[name] ??= tf.zerosLike(state.student[name] as tf.Variable);

    const stacked = tf.stack(parts);
    const partValues = await stacked.data();
    tf.dispose([stacked, ...parts]);
    const studentArgmax = kept.studentArgmax;
    if (studentArgmax === undefined) throw new Error('computeLocalStep: the student forward did not run');
    const collapse = tf.tidy(() => {
      const p = clsTargets;
      const entropy = tf.neg(tf.sum(tf.mul(p, tf.log(tf.add(p, 1e-12)))));
      const agree = tf.sum(tf.cast(tf.equal(studentArgmax, tf.argMax(p, 1)), 'float32'));
      return tf.stack([entropy, agree]);
    });
    const collapseValues = await collapse.data();
    collapse.dispose();
    studentArgmax.dispose();

    return {
      grads: named,
      teacherSums: {
        cls: clsSums.sum,
        clsCount: clsSums.count,
        patch: patchSums?.sum ?? null,
        patchCount: patchSums?.count ?? 0,
      },
      loss: {
        total: partValues[0] ?? NaN,
        dino: partValues[1] ?? NaN,
        ibot: partValues[2] ?? NaN,
        koleo: partValues[3] ?? NaN,
        gram: partValues[4] ?? NaN,
      },
      collapse: { teacherEntropy: collapseValues[0] ?? NaN, agreement: collapseValues[1] ?? NaN, rows: nG * B },
    };
  } finally {
    tf.dispose(owned);
  }
}

/** What one applied step reports (the schedules' values are those used at this step). */
export interface UpdateResult {
  /** False when the loss or gradient was NaN/Inf: nothing was applied. */
  readonly applied: boolean;
  readonly gradNorm: number;
  readonly lr: number;
  readonly weightDecay: number;
  readonly momentum: number;
  readonly teacherTemp: number;
  readonly centerNorm: number;
}

/**
 * Phase 4: with the gradients and teacher sums summed over all ranks, clip, apply AdamW,
 * update the EMA teacher and the centers, and advance the step. Identical inputs give
 * bit-identical states on every rank. Disposes `grads`.
 */
export interface ApplyUpdateOptions {
  /**
   * Who advances the running centers. `local` (one process): from `sums` here.
   * `external` (the cluster): teacher-sync owns them; the worker sets `state.center` and
   * `state.ibotCenter` from teacher-sync before the next step, and `sums` is ignored.
   * @default 'local'
   */
  readonly centers?: 'local' | 'external';
}

export function applyUpdate(
  state: DinoState,
  grads: Record<string, tf.Tensor>,
  sums: TeacherSums,
  lossTotal: number,
  options: ApplyUpdateOptions = {},
): UpdateResult {
  const { recipe, schedules, step } = state;
  const lr = schedules.lr(step);
  const weightDecay = schedules.weightDecay(step);
  const momentum = schedules.momentum(step);
  const teacherTemp = schedules.teacherTemp(step);
  const clipped = clipByGlobalNorm(grads, recipe.optim.clipGrad > 0 ? recipe.optim.clipGrad : Number.POSITIVE_INFINITY);
  if (clipped.grads !== grads) tf.dispose(Object.values(grads));
  if (!Number.isFinite(clipped.norm) || !Number.isFinite(lossTotal)) {
    tf.dispose(Object.values(clipped.grads));
    return { applied: false, gradNorm: clipped.norm, lr, weightDecay, momentum, teacherTemp, centerNorm: l2Norm(state.center) };
  }
  state.optimizer.step(clipped.grads, { lr, weightDecay, freezeLastLayer: step < schedules.lastLayerLrZeroUntilStep });
  tf.dispose(Object.values(clipped.grads));
  emaUpdate(state.teacher, state.student, momentum);
  if (recipe.targets === 'centering' && options.centers !== 'external') {
    const m = recipe.teacher.centerMomentum;
    state.center = updateCenter(state.center, sums.cls, sums.clsCount, m);
    if (state.ibotCenter !== null && sums.patch !== null && sums.patchCount > 0) {
      state.ibotCenter = updateCenter(state.ibotCenter, sums.patch, sums.patchCount, m);
    }
  }
  state.step = step + 1;
  refreshGramTeacher(state);
  return { applied: true, gradNorm: clipped.norm, lr, weightDecay, momentum, teacherTemp, centerNorm: l2Norm(state.center) };
}

/** Euclidean norm with a loop: `Math.hypot(...v)` overflows the call stack for 262 144 prototypes. */
function l2Norm(values: Float32Array): number {
  let sum = 0;
  for (const v of values) sum += v * v;
  return Math.sqrt(sum);
}

/** DINOv3: the Gram teacher is a frozen copy of the EMA teacher, retaken every `refreshSteps`. */
function refreshGramTeacher(state: DinoState): void {
  const gram = state.recipe.gram;
  if (gram === null || state.step < gram.startStep || (state.step - gram.startStep) % gram.refreshSteps !== 0) return;
  const next: Record<string, tf.Variable> = {};
  for (const [name, v] of Object.entries(state.teacher)) next[name] = tf.variable(v, false);
  for (const v of Object.values(state.gramTeacher ?? {})) v.dispose();
  state.gramTeacher = next;
}

/** Everything a step reports: losses, optimiser state, collapse indicators. */
export interface StepMetrics extends UpdateResult {
  readonly step: number;
  readonly loss: LossParts;
  /** Mean entropy of the teacher targets (nats); near 0 or near ln K signals collapse. */
  readonly teacherEntropy: number;
  /** Fraction of global crops where student and teacher pick the same prototype. */
  readonly agreement: number;
}

/** A full step in one process (the reference the cluster is checked against). */
export async function trainStep(state: DinoState, batch: CropBatch): Promise<StepMetrics> {
  const step = state.step;
  const local = await computeLocalStep(state, batch, singleProcessCollective(batch.batchSize));
  const update = applyUpdate(state, local.grads, local.teacherSums, local.loss.total);
  return {
    ...update,
    step,
    loss: local.loss,
    teacherEntropy: local.collapse.teacherEntropy / local.collapse.rows,
    agreement: local.collapse.agreement / local.collapse.rows,
  };
}
