// tfjs-core registers gradients separately from its ops, and its ESM
// `register_all_gradients` cannot be loaded by plain Node (extensionless imports). The
// tfjs union package's Node bundle registers them on the shared global registry; every
// user of this package computes gradients, so it is loaded once here.
import '@tensorflow/tfjs';

// Primitives and parameters
export { Rng } from './rng.ts';
export { attention, gatherRows, gelu, layerNorm, linear, multiHeadAttention } from './ops.ts';
export { paramNames, type GradMap, type ParamMap } from './params.ts';

// Model
export { VIT_CONFIGS, vitGridSize, vitParamCount, type VitConfig, type VitName } from './vit-configs.ts';
export { initVitParams, interpolatePosEmbed, vitForward, type VitForwardOptions, type VitOutput } from './vit.ts';
export {
  dinoHeadForward,
  dinoHeadParamCount,
  initDinoHeadParams,
  lastLayerWeight,
  type DinoHeadConfig,
} from './heads.ts';

// Objectives
export { dinoCrossEntropyLoss, softCrossEntropy, type DinoLossOptions } from './dino-loss.ts';
export { centeredTeacherProbs, teacherLogitSums, updateCenter, type TeacherLogitSums } from './centering.ts';
export {
  identityReduce,
  sinkhornKnoppTargets,
  type ReduceSum,
  type SinkhornKnoppOptions,
} from './sinkhorn-knopp.ts';
export { ibotPatchLoss, type IbotLossOptions } from './ibot-loss.ts';
export { blockMask, sampleBatchMasks, type BatchMaskOptions, type BatchMasks, type BlockMaskOptions } from './block-mask.ts';
export { koleoLoss } from './koleo-loss.ts';
export { gramLoss, gramWeight, type GramWeightOptions } from './gram-loss.ts';

// Optimisation
export {
  buildTrainingSchedules,
  cosineSchedule,
  linearWarmupThenConstant,
  scaleLearningRate,
  type CosineScheduleOptions,
  type LinearWarmupOptions,
  type LrScalingRule,
  type ScheduleOptions,
  type StepSchedule,
  type TrainingSchedules,
} from './schedules.ts';
export { paramGroupFor, type ParamGroup, type ParamGroupOptions } from './param-groups.ts';
export { AdamW, type AdamWOptions, type AdamWState, type AdamWStepOptions } from './adamw.ts';
export { clipByGlobalNorm, globalNorm } from './clip.ts';
export { emaUpdate } from './ema.ts';

// Data augmentation and evaluation
export {
  centerResize,
  FMNIST_MULTI_CROP,
  multiCrop,
  normalizeImage,
  randomResizedCrop,
  REFERENCE_MULTI_CROP,
  stackCrops,
  type Image,
  type MultiCropConfig,
} from './multi-crop.ts';
export { buildCropBatch, cropImageRng, sliceCropBatch, stepCropSeed } from './crop-batch.ts';
export { knnPredict, knnTop1Accuracy, type KnnOptions } from './knn.ts';
export { embedImages } from './features.ts';

// Recipes, the step, the trainer
export {
  PRESET_NAMES,
  PRESETS,
  type DinoRecipe,
  type GramRecipe,
  type IbotRecipe,
  type OptimRecipe,
  type PresetName,
  type TargetMethod,
  type TeacherRecipe,
} from './presets.ts';
export {
  applyUpdate,
  type ApplyUpdateOptions,
  computeLocalStep,
  createDinoState,
  disposeDinoState,
  isTrainable,
  singleProcessCollective,
  stepRng,
  trainStep,
  type CollapseSums,
  type CropBatch,
  type DinoState,
  type LocalStepResult,
  type LossParts,
  type RunLength,
  type StepCollective,
  type StepMetrics,
  type TeacherSums,
  type UpdateResult,
} from './train-step.ts';
export { captureDinoState, disposeDinoStateCopy, restoreDinoState, type DinoStateCopy } from './dino-state-copy.ts';
export {
  dinoStateTensors,
  loadDinoStateTensors,
  type DinoStateScalars,
  type DinoStateTensors,
  type StateTensorData,
} from './dino-state-tensors.ts';
export { trainOneProcess, type ImageDataset, type TrainerOptions, type TrainerProgress, type TrainerResult } from './trainer.ts';
export { headForwardFlops, trainStepFlops, vitForwardFlops, type StepShape } from './flops.ts';
