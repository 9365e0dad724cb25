import type * as tf from '@tensorflow/tfjs-core';

/**
 * Named parameters. Names follow the reference implementations (Meta's dinov2/dinov3
 * `state_dict` keys) so that optimiser rules and checkpoint export are name-based:
 *
 * - `backbone.patch_embed.weight` `[p·p·C, D]`, `backbone.patch_embed.bias`
 * - `backbone.cls_token` `[1, D]`, `backbone.register_tokens` `[R, D]`, `backbone.mask_token` `[1, D]`
 * - `backbone.pos_embed` `[gh·gw, D]` (patch positions at the config's image size)
 * - `backbone.blocks.{i}.norm1.{weight,bias}`, `.attn.qkv.{weight,bias}`, `.attn.proj.{weight,bias}`,
 *   `.ls1.gamma`, `.norm2.{weight,bias}`, `.mlp.fc1.{weight,bias}`, `.mlp.fc2.{weight,bias}`, `.ls2.gamma`
 * - `backbone.norm.{weight,bias}`
 * - `dino_head.mlp.{0,1,2}.{weight,bias}`, `dino_head.last_layer.weight` (and `.weight_g` with weight norm)
 * - `ibot_head.…` likewise
 *
 * Weights are input-major `[in, out]` (see ops.ts). Iteration order of the record is the
 * canonical order used for flattening, hashing and all-reduce.
 */
export type ParamMap = Readonly<Record<string, tf.Tensor>>;

/** Gradients keyed like the parameters they belong to. */
export type GradMap = Record<string, tf.Tensor>;

/** Parameter names in canonical (sorted) order: the order of flat buffers and state hashes. */
export function paramNames(params: ParamMap): string[] {
  return Object.keys(params).sort();
}
