/**
 * Name-based optimiser rules (layer-wise lr decay, weight-decay exclusions, the last layer),
 * following dinov2's `dinov2/utils/param_groups.py` and dinov3's `dinov3/train/param_groups.py`
 * over the names documented in params.ts.
 */

/** Options of {@link paramGroupFor}. */
export interface ParamGroupOptions {
  /** Number of transformer blocks of the backbone (`backbone.blocks.{0 … depth−1}`), `>= 0`. */
  depth: number;
  /** Layer-wise lr decay per block, in (0, 1]; 1 turns it off. dinov2 uses 0.9. */
  layerDecay: number;
  /** Extra lr factor for `patch_embed` parameters, `>= 0`; dinov2 uses 0.2, 1 turns it off. */
  patchEmbedLrMult: number;
}

/** What the optimiser does differently for one parameter. */
export interface ParamGroup {
  /** Factor on the scheduled learning rate, in (0, 1]. */
  lrMultiplier: number;
  /** Factor on the scheduled weight decay: 0 or 1. */
  wdMultiplier: number;
  /** True for the heads' `last_layer`, whose learning rate is 0 while it is frozen. */
  isLastLayer: boolean;
}

/**
 * Tokens and embeddings that sit before the first block (layer id 0). `register_tokens` is
 * dinov3's `storage_tokens`; dinov2 omits its registers from this list (so they get layer id
 * depth+1 there), which looks like an oversight that dinov3 fixed, so we follow dinov3.
 */
const LAYER_ZERO = new Set(['patch_embed', 'cls_token', 'pos_embed', 'mask_token', 'register_tokens']);

/**
 * The optimiser group of a parameter, from its name alone:
 *
 * - layer id: 0 for `backbone.{patch_embed.*, cls_token, pos_embed, mask_token,
 *   register_tokens}`, `i + 1` for `backbone.blocks.{i}.*`, `depth + 1` for everything else
 *   (`backbone.norm.*` and both heads; dinov2 builds the heads' groups with `n_blocks = 0`,
 *   which gives them multiplier 1 as well);
 * - `lrMultiplier = layerDecay^(depth + 1 − layerId)`, times `patchEmbedLrMult` for names
 *   containing `patch_embed`;
 * - `wdMultiplier = 0` for names ending in `bias` or containing `norm` or `gamma` (LayerScale),
 *   else 1. Tokens and `pos_embed` keep weight decay: neither dinov2 nor dinov3 excludes them
 *   (dinov3's comment says "learned tokens and embeddings" but its test only matches
 *   `fourier_w`), and DINO v1's `len(param.shape) == 1` rule also decays them;
 * - `isLastLayer` for names containing `last_layer`.
 *
 * @throws RangeError for a block index `>= depth` or options out of range.
 */
export function paramGroupFor(name: string, opts: ParamGroupOptions): ParamGroup {
  const { depth, layerDecay, patchEmbedLrMult } = opts;
  if (!Number.isInteger(depth) || depth < 0) throw new RangeError(`depth must be an integer >= 0, got ${depth}`);
  if (!(layerDecay > 0 && layerDecay <= 1)) throw new RangeError(`layerDecay must be in (0, 1], got ${layerDecay}`);
  if (!(patchEmbedLrMult >= 0)) throw new RangeError(`patchEmbedLrMult must be >= 0, got ${patchEmbedLrMult}`);

  const layerId = layerIdOf(name, depth);
  let lrMultiplier = layerDecay ** (depth + 1 - layerId);
  if (name.includes('patch_embed')) lrMultiplier *= patchEmbedLrMult;
  const noDecay = name.endsWith('bias') || name.includes('norm') || name.includes('gamma');
  return { lrMultiplier, wdMultiplier: noDecay ? 0 : 1, isLastLayer: name.includes('last_layer') };
}

/** dinov2's `get_vit_lr_decay_rate` layer id for our `backbone.`-prefixed names. */
function layerIdOf(name: string, depth: number): number {
  const parts = name.split('.');
  if (parts[0] !== 'backbone') return depth + 1;
  if (LAYER_ZERO.has(parts[1] ?? '')) return 0;
  if (parts[1] === 'blocks') {
    const block = Number(parts[2]);
    if (!Number.isInteger(block) || block < 0 || block >= depth) {
      throw new RangeError(`parameter ${name}: block index must be an integer in [0, ${depth}), depth ${depth}`);
    }
    return block + 1;
  }
  return depth + 1;
}
