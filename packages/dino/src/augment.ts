/**
 * `@dinofleet/dino/augment`: multi-crop augmentation and its random streams without the
 * model (no tfjs), for data-loader threads that must start fast and stay small.
 */
export { FMNIST_MULTI_CROP, REFERENCE_MULTI_CROP, multiCrop, type Image, type MultiCropConfig } from './multi-crop.ts';
export { cropImageRng, stepCropSeed } from './crop-batch.ts';
export { Rng } from './rng.ts';
