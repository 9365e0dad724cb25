import type { DinoHeadConfig } from './heads.ts';
import { FMNIST_MULTI_CROP, type MultiCropConfig } from './multi-crop.ts';
import { VIT_CONFIGS, type VitConfig } from './vit-configs.ts';

/** The recipes dinofleet ships. */
export const PRESET_NAMES = ['dino', 'dinov2', 'dinov3'] as const;
/** A recipe name. */
export type PresetName = (typeof PRESET_NAMES)[number];

/** How teacher outputs become targets. */
export type TargetMethod = 'centering' | 'sinkhorn_knopp';

/** iBOT masked-patch objective (DINOv2 / DINOv3). */
export interface IbotRecipe {
  /** Loss weight. */
  readonly weight: number;
  /** A head of its own (DINOv3) or the DINO head shared (DINOv2 default). */
  readonly separateHead: boolean;
  /** The separate head's shape (ignored when shared). */
  readonly head: DinoHeadConfig;
  /** Fraction of patches masked, spread over the masked images. @default [0.1, 0.5] */
  readonly maskRatio: readonly [number, number];
  /** Fraction of images that get a mask at all. @default 0.5 */
  readonly maskProbability: number;
}

/** DINOv3 Gram anchoring. */
export interface GramRecipe {
  /** Weight once ramped up. */
  readonly weight: number;
  /** Step at which the Gram teacher is first taken from the EMA teacher and the loss starts. */
  readonly startStep: number;
  /** The Gram teacher is refreshed from the EMA teacher every this many steps (dinov3: 10 000). */
  readonly refreshSteps: number;
  /** Steps over which the weight ramps linearly from 0. */
  readonly rampSteps: number;
}

/** Optimiser and learning-rate recipe. */
export interface OptimRecipe {
  /** Peak learning rate before batch-size scaling. */
  readonly baseLr: number;
  /** How `baseLr` scales with the global batch. */
  readonly lrScaling: 'linear256' | 'sqrt1024' | 'none';
  readonly minLr: number;
  readonly weightDecay: number;
  readonly weightDecayEnd: number;
  /** Max global gradient norm; 0 disables clipping. */
  readonly clipGrad: number;
  /** Layer-wise lr decay; 1 disables. */
  readonly layerDecay: number;
  readonly patchEmbedLrMult: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly warmupEpochs: number;
  /** The prototypes' layer gets no update for this many epochs (DINO: stabilises the start). */
  readonly freezeLastLayerEpochs: number;
  /** Constant lr / wd after warm-up (DINOv3) instead of cosine decay. */
  readonly constantSchedules: boolean;
}

/** Teacher recipe. */
export interface TeacherRecipe {
  /** EMA momentum at step 0. */
  readonly momentum: number;
  /** EMA momentum at the end (cosine), equal to `momentum` for a constant schedule. */
  readonly momentumEnd: number;
  readonly teacherTemp: number;
  readonly warmupTeacherTemp: number;
  readonly warmupTeacherTempEpochs: number;
  /** Center EMA momentum (centering only). @default 0.9 */
  readonly centerMomentum: number;
}

/** A complete DINO-family recipe: model, objectives, augmentation, optimiser, schedules. */
export interface DinoRecipe {
  readonly name: PresetName;
  readonly vit: VitConfig;
  readonly dinoHead: DinoHeadConfig;
  readonly targets: TargetMethod;
  /** Sinkhorn-Knopp iterations. @default 3 */
  readonly sinkhornIterations: number;
  readonly studentTemp: number;
  readonly dinoWeight: number;
  readonly ibot: IbotRecipe | null;
  readonly koleoWeight: number;
  readonly gram: GramRecipe | null;
  readonly crops: MultiCropConfig;
  readonly optim: OptimRecipe;
  readonly teacher: TeacherRecipe;
  /** Stochastic depth rate of the last block. */
  readonly dropPathRate: number;
  /** Images per step over the whole fleet. */
  readonly globalBatchSize: number;
  /**
   * Length of the reference run in epochs. A run of any length is mapped onto it for the
   * schedules (warm-up, teacher-temperature warm-up, last-layer freeze are given in
   * reference epochs), so a short run keeps the reference schedule's shape.
   */
  readonly referenceEpochs: number;
}

const FMNIST_VIT = VIT_CONFIGS['vit-fmnist'];

// Heads scaled down with the backbone: the reference uses 65 536 (DINO, DINOv2) or
// 262 144 (DINOv3) prototypes for a 1.2 M-1.7 B image corpus; 10 classes of 28x28 clothes
// need far fewer, and fewer prototypes keep the head's share of the FLOPs small.
const SMALL_HEAD: DinoHeadConfig = {
  inDim: FMNIST_VIT.embedDim,
  hiddenDim: 512,
  bottleneckDim: 128,
  outDim: 1024,
  nLayers: 3,
  weightNorm: true,
};

/**
 * DINO (Caron et al. 2021), following facebookresearch/dino `main_dino.py` defaults for
 * ViT-S/16: centering + sharpening, teacher temperature 0.04 (warm-up 0.04 -> 0.04),
 * EMA 0.996 -> 1, AdamW lr 5e-4 x B/256, wd 0.04 -> 0.4, clip 3, last layer frozen for
 * one epoch, weight-normed last layer, global crops (0.4, 1), local crops (0.05, 0.4).
 */
const DINO: DinoRecipe = {
  name: 'dino',
  vit: FMNIST_VIT,
  dinoHead: SMALL_HEAD,
  targets: 'centering',
  sinkhornIterations: 3,
  studentTemp: 0.1,
  dinoWeight: 1,
  ibot: null,
  koleoWeight: 0,
  gram: null,
  // 4 local crops instead of the reference's 8: local crops cost a third of the student's
  // FLOPs here, and a 15-minute CPU budget buys more steps with fewer of them.
  crops: { ...FMNIST_MULTI_CROP, nLocal: 4, globalScale: [0.4, 1], localScale: [0.05, 0.4] },
  optim: {
    baseLr: 5e-4,
    lrScaling: 'linear256',
    minLr: 1e-6,
    weightDecay: 0.04,
    weightDecayEnd: 0.4,
    clipGrad: 3,
    layerDecay: 1,
    patchEmbedLrMult: 1,
    beta1: 0.9,
    beta2: 0.999,
    warmupEpochs: 10,
    freezeLastLayerEpochs: 1,
    constantSchedules: false,
  },
  teacher: {
    momentum: 0.996,
    momentumEnd: 1,
    teacherTemp: 0.04,
    warmupTeacherTemp: 0.04,
    warmupTeacherTempEpochs: 0,
    centerMomentum: 0.9,
  },
  dropPathRate: 0.1,
  globalBatchSize: 64,
  referenceEpochs: 100,
};

/**
 * DINOv2 (Oquab et al. 2023), following facebookresearch/dinov2
 * `configs/ssl_default_config.yaml` with `vitl16_short.yaml`'s Sinkhorn-Knopp: iBOT with a
 * shared head (mask ratio 0.1-0.5 on half the images), KoLeo 0.1, lr 4e-3 x sqrt(B/1024),
 * layer decay 0.9, patch-embed lr x0.2, EMA 0.992 -> 1, teacher temperature 0.04 -> 0.07
 * over 30 epochs, global crops (0.32, 1), local crops (0.05, 0.32).
 */
const DINOV2: DinoRecipe = {
  ...DINO,
  name: 'dinov2',
  targets: 'sinkhorn_knopp',
  ibot: {
    weight: 1,
    separateHead: false,
    head: SMALL_HEAD,
    maskRatio: [0.1, 0.5],
    maskProbability: 0.5,
  },
  koleoWeight: 0.1,
  crops: { ...FMNIST_MULTI_CROP, nLocal: 4, globalScale: [0.32, 1], localScale: [0.05, 0.32] },
  optim: {
    ...DINO.optim,
    baseLr: 4e-3,
    lrScaling: 'sqrt1024',
    layerDecay: 0.9,
    patchEmbedLrMult: 0.2,
  },
  teacher: {
    ...DINO.teacher,
    // The reference's 0.992 (EMA time constant ~125 steps) is for 100 epochs of 1.2 M
    // images; a run of a few hundred steps needs a teacher that follows within ~50 steps,
    // else the evaluated teacher is still mostly its initialisation.
    momentum: 0.98,
    teacherTemp: 0.07,
    warmupTeacherTemp: 0.04,
    warmupTeacherTempEpochs: 30,
  },
  dropPathRate: 0.1,
};

/**
 * DINOv3 (Siméoni et al. 2025), following facebookresearch/dinov3
 * `configs/train/dinov3_vit7b16_pretrain.yaml` and `..._gram_anchor.yaml`: Sinkhorn-Knopp,
 * iBOT with a separate head, KoLeo 0.1, constant schedules after warm-up (lr, wd 0.04,
 * EMA 0.999), layer decay 0.98, AdamW beta2 0.99, clip 30, no weight norm on the last layer,
 * and Gram anchoring against a periodically refreshed earlier teacher (weight ramping to 2).
 */
const DINOV3: DinoRecipe = {
  ...DINOV2,
  name: 'dinov3',
  dinoHead: { ...SMALL_HEAD, weightNorm: false },
  ibot: {
    weight: 1,
    separateHead: true,
    head: { ...SMALL_HEAD, weightNorm: false },
    maskRatio: [0.1, 0.5],
    maskProbability: 0.5,
  },
  gram: { weight: 2, startStep: 1000, refreshSteps: 1000, rampSteps: 200 },
  optim: {
    ...DINOV2.optim,
    layerDecay: 0.98,
    beta2: 0.99,
    clipGrad: 30,
    weightDecayEnd: 0.04,
    constantSchedules: true,
    warmupEpochs: 100,
    freezeLastLayerEpochs: 5,
  },
  teacher: {
    ...DINOV2.teacher,
    warmupTeacherTempEpochs: 100,
    momentum: 0.999,
    momentumEnd: 0.999,
  },
  // dinov3_vit7b16_pretrain.yaml: 1000 epochs of 1000 iterations, warm-ups of 100.
  referenceEpochs: 1000,
};

/** The shipped recipes, sized for 28x28 Fashion-MNIST. */
export const PRESETS: { readonly [name in PresetName]: DinoRecipe } = { dino: DINO, dinov2: DINOV2, dinov3: DINOV3 };
