import * as tf from '@tensorflow/tfjs-core';
import type { ParamMap } from './params.ts';
import type { VitConfig } from './vit-configs.ts';
import { vitForward } from './vit.ts';

/**
 * CLS features of a backbone for evaluation (k-NN), computed in chunks so memory stays
 * bounded. `images` is NHWC `[count, H, W, C]`, already normalised like training crops.
 * @returns `[count, embedDim]` (the caller disposes it).
 */
export function embedImages(
  params: ParamMap,
  vit: VitConfig,
  images: Float32Array,
  count: number,
  size: number,
  channels: number,
  chunk = 256,
): tf.Tensor2D {
  const pixels = size * size * channels;
  const parts: tf.Tensor2D[] = [];
  for (let start = 0; start < count; start += chunk) {
    const n = Math.min(chunk, count - start);
    parts.push(
      tf.tidy(() => {
        const x = tf.tensor4d(images.subarray(start * pixels, (start + n) * pixels), [n, size, size, channels]);
        return vitForward(params, vit, x).cls;
      }),
    );
  }
  const out = tf.concat(parts, 0);
  tf.dispose(parts);
  return out;
}
