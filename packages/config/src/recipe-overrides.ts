/**
 * The recipe knobs a job may override, as a whitelist: a deep partial of `DinoRecipe`
 * limited to hyperparameters that are safe to change per job. Architecture (ViT, head
 * shapes), crop sizes and normalisation stay with the preset: they are tied to the data
 * and to checkpoints. The batch size is not here: it is `spec.training.globalBatchSize`.
 */
import type { DinoRecipe } from '@dinofleet/dino';
import { z } from 'zod';
import { boundedInt, boundedNumber, oneOf, orderedPair, strictMapping } from './field-schemas.ts';

const EPOCHS = () => boundedNumber(0, 1e6);
const WEIGHT = () => boundedNumber(0, 1e3);
const TEMPERATURE = () => boundedNumber(0, 10, { minExclusive: true });
const UNIT = () => boundedNumber(0, 1);

const OPTIM_OVERRIDES = strictMapping({
  /** Peak learning rate before batch-size scaling, in (0, 10]. */
  baseLr: boundedNumber(0, 10, { minExclusive: true }).optional(),
  /** How `baseLr` scales with the global batch: `linear256` (×B/256), `sqrt1024` (×√(B/1024)), `none`. */
  lrScaling: oneOf(['linear256', 'sqrt1024', 'none']).optional(),
  /** Final learning rate of the cosine schedule, in [0, 10]. */
  minLr: boundedNumber(0, 10).optional(),
  /** Weight decay at the start, in [0, 10]. */
  weightDecay: boundedNumber(0, 10).optional(),
  /** Weight decay at the end (cosine), in [0, 10]. */
  weightDecayEnd: boundedNumber(0, 10).optional(),
  /** Max global gradient norm, in [0, 1e6]; 0 disables clipping. */
  clipGrad: boundedNumber(0, 1e6).optional(),
  /** Layer-wise lr decay, in (0, 1]; 1 disables. */
  layerDecay: boundedNumber(0, 1, { minExclusive: true }).optional(),
  /** Learning-rate multiplier of the patch embedding, in [0, 10]. */
  patchEmbedLrMult: boundedNumber(0, 10).optional(),
  /** AdamW β1, in [0, 1). */
  beta1: boundedNumber(0, 1, { maxExclusive: true }).optional(),
  /** AdamW β2, in [0, 1). */
  beta2: boundedNumber(0, 1, { maxExclusive: true }).optional(),
  /** Learning-rate warm-up, in reference epochs, [0, 1e6]. */
  warmupEpochs: EPOCHS().optional(),
  /** Reference epochs during which the last head layer is frozen, [0, 1e6]. */
  freezeLastLayerEpochs: EPOCHS().optional(),
  /** Constant lr / wd after warm-up (DINOv3) instead of cosine decay. */
  constantSchedules: z.boolean({ error: 'must be true or false' }).optional(),
}).describe('Optimiser knobs (AdamW, schedules).');

const TEACHER_OVERRIDES = strictMapping({
  /** EMA momentum at step 0, in [0, 1]. */
  momentum: UNIT().optional(),
  /** EMA momentum at the end (cosine), in [0, 1]. */
  momentumEnd: UNIT().optional(),
  /** Teacher softmax temperature after warm-up, in (0, 10]. */
  teacherTemp: TEMPERATURE().optional(),
  /** Teacher temperature at step 0, in (0, 10]. */
  warmupTeacherTemp: TEMPERATURE().optional(),
  /** Teacher-temperature warm-up, in reference epochs, [0, 1e6]. */
  warmupTeacherTempEpochs: EPOCHS().optional(),
  /** Center EMA momentum (centering only), in [0, 1]. */
  centerMomentum: UNIT().optional(),
}).describe('EMA teacher knobs.');

const IBOT_OVERRIDES = strictMapping({
  /** iBOT loss weight, in [0, 1000]. */
  weight: WEIGHT().optional(),
  /** Fraction of patches masked, `[low, high]` within [0, 1]. */
  maskRatio: orderedPair(0, 1).optional(),
  /** Fraction of images that get a mask, in [0, 1]. */
  maskProbability: UNIT().optional(),
}).describe('iBOT knobs; only for presets with iBOT (dinov2, dinov3).');

const GRAM_OVERRIDES = strictMapping({
  /** Gram loss weight once ramped up, in [0, 1000]. */
  weight: WEIGHT().optional(),
  /** Step at which Gram anchoring starts, in [0, 1e9]. */
  startStep: boundedInt(0, 1e9).optional(),
  /** Gram teacher refresh period in steps, in [1, 1e9]. */
  refreshSteps: boundedInt(1, 1e9).optional(),
  /** Steps over which the weight ramps from 0, in [0, 1e9]. */
  rampSteps: boundedInt(0, 1e9).optional(),
}).describe('Gram anchoring knobs; only for presets with Gram anchoring (dinov3).');

const CROP_OVERRIDES = strictMapping({
  /** Number of local crops, in [0, 32]. */
  nLocal: boundedInt(0, 32).optional(),
  /** Area fraction range of the global crops, `[low, high]` within (0, 1]. */
  globalScale: orderedPair(1e-3, 1).optional(),
  /** Area fraction range of the local crops, `[low, high]` within (0, 1]. */
  localScale: orderedPair(1e-3, 1).optional(),
}).describe('Multi-crop knobs (crop sizes stay with the preset).');

/** The schema of `spec.recipe.overrides`. */
export const RECIPE_OVERRIDES_SCHEMA = strictMapping({
  /** Student softmax temperature, in (0, 10]. */
  studentTemp: TEMPERATURE().optional(),
  /** Weight of the DINO CLS loss, in [0, 1000]. */
  dinoWeight: WEIGHT().optional(),
  /** Weight of the KoLeo regulariser, in [0, 1000]; 0 disables. */
  koleoWeight: WEIGHT().optional(),
  /** Stochastic depth rate of the last block, in [0, 1). */
  dropPathRate: boundedNumber(0, 1, { maxExclusive: true }).optional(),
  /** Sinkhorn-Knopp iterations (sinkhorn_knopp targets only), in [1, 100]. */
  sinkhornIterations: boundedInt(1, 100).optional(),
  /** Length of the reference run in epochs, onto which schedules are mapped, in (0, 1e6]. */
  referenceEpochs: boundedNumber(0, 1e6, { minExclusive: true }).optional(),
  optim: OPTIM_OVERRIDES.optional(),
  teacher: TEACHER_OVERRIDES.optional(),
  ibot: IBOT_OVERRIDES.optional(),
  gram: GRAM_OVERRIDES.optional(),
  crops: CROP_OVERRIDES.optional(),
}).describe("Overrides of the preset's hyperparameters (a whitelisted deep partial of the recipe).");

/** A validated deep partial of the recipe's tunable knobs (`spec.recipe.overrides`). */
export type RecipeOverrides = z.output<typeof RECIPE_OVERRIDES_SCHEMA>;

/** A deep partial in which an absent field may also be `undefined` (as zod's output has it). */
type DeepPartial<T> = T extends readonly unknown[]
  ? T
  : T extends object
    ? { readonly [K in keyof T]?: DeepPartial<T[K]> | undefined }
    : T;

/** Paths of override keys that `R` does not have (`never` when all exist). */
type UnknownKeys<O, R> = {
  [K in keyof O]-?: K extends keyof R
    ? NonNullable<O[K]> extends readonly unknown[]
      ? never
      : NonNullable<O[K]> extends object
        ? UnknownKeys<NonNullable<O[K]>, NonNullable<R[K]>>
        : never
    : K;
}[keyof O];

// Compile-time proof that every whitelisted knob exists in DinoRecipe (the first line)
// with a compatible type (the second): a renamed recipe field breaks the build here
// instead of being silently ignored. `NonNullable` because ibot and gram are `null` in
// presets without them; that case is refused by the job spec schema.
type MergeableRecipe = {
  readonly [K in keyof DinoRecipe]: NonNullable<DinoRecipe[K]>;
};
const _everyOverrideExists: [UnknownKeys<RecipeOverrides, MergeableRecipe>] extends [never] ? true : false = true;
const _overridesFitRecipe = (overrides: RecipeOverrides): DeepPartial<MergeableRecipe> => overrides;
void _everyOverrideExists;
void _overridesFitRecipe;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Merges `patch` into `base`: objects recursively, everything else (tuples included) replaced. */
function mergeDeep(base: unknown, patch: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(patch)) return patch;
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(patch)) {
    if (value !== undefined) merged[key] = mergeDeep(base[key], value);
  }
  return merged;
}

/**
 * The recipe with `overrides` applied; fields not overridden keep the recipe's values (and
 * share its objects, which are read-only). Throws `RangeError` when overriding the iBOT or
 * Gram knobs of a recipe that has no such objective.
 */
export function applyRecipeOverrides(recipe: DinoRecipe, overrides: RecipeOverrides): DinoRecipe {
  if (overrides.ibot !== undefined && recipe.ibot === null) {
    throw new RangeError(`recipe '${recipe.name}' has no iBOT objective to override`);
  }
  if (overrides.gram !== undefined && recipe.gram === null) {
    throw new RangeError(`recipe '${recipe.name}' has no Gram anchoring to override`);
  }
  return mergeDeep(recipe, overrides) as DinoRecipe;
}
