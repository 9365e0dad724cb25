// Gradients are registered separately from tfjs-core's ops; every user of this package
// computes gradients, so they are registered once here.
import '@tensorflow/tfjs-core/dist/register_all_gradients.js';

export { Rng } from './rng.ts';
export { attention, gelu, layerNorm, linear } from './ops.ts';
export { paramNames, type GradMap, type ParamMap } from './params.ts';
