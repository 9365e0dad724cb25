/**
 * Named Vision Transformer shapes: a tiny one for tests, the default Fashion-MNIST model,
 * and the reference sizes of DINO / DINOv2 / DINOv3, whose hyperparameters follow Meta's
 * `dinov2/models/vision_transformer.py`, `dinov3/models/vision_transformer.py` and
 * `dinov3/configs/train/dinov3_vit7b16_pretrain.yaml`.
 */

/** The architecture of one ViT backbone. All sizes are counts (pixels, channels, features). */
export interface VitConfig {
  /** The registry key, e.g. `'vit-s16'`. */
  readonly name: string;
  /** Side of the square global crop in pixels; the learned position grid is `imageSize / patchSize` a side. */
  readonly imageSize: number;
  /** Side of a square patch in pixels. Input heights and widths must be multiples of it. */
  readonly patchSize: number;
  /** Image channels (1 for grayscale, 3 for RGB). */
  readonly inChannels: number;
  /** Token width `D`. */
  readonly embedDim: number;
  /** Number of transformer blocks. */
  readonly depth: number;
  /** Attention heads; `embedDim` must be divisible by it (and `embedDim / numHeads` by 4 for RoPE). */
  readonly numHeads: number;
  /**
   * Feed-forward kind. `'mlp'`: `fc2(gelu(fc1(x)))`. `'swiglu'`: `w3(silu(a) · b)` with
   * `[a, b] = w12(x)`, the gated FFN of DINOv2 g/14 and DINOv3 7B.
   */
  readonly ffn: 'mlp' | 'swiglu';
  /**
   * Hidden width of the FFN. For `'mlp'` usually `4 · embedDim`. For `'swiglu'` it is the
   * width of each gate half *after* the reference's 2/3 rule and rounding (DINOv2:
   * `(int(4D · 2/3) + 7) // 8 · 8`; DINOv3 `swiglu64`: `int(ratio · D · 2/3)` rounded up to 64).
   */
  readonly ffnHiddenDim: number;
  /** Register ("storage") tokens appended after CLS (Darcet et al. 2024; DINOv3 uses 4). */
  readonly numRegisterTokens: number;
  /** LayerScale initial value (Touvron et al., CaiT), or `null` for no LayerScale parameters. */
  readonly layerScaleInit: number | null;
  /** Whether the fused q, k, v projection has a bias (DINOv3 7B has none). */
  readonly qkvBias: boolean;
  /**
   * `'learned'`: a learned table for the patch grid, interpolated to other grids (DINO, DINOv2).
   * `'rope'`: 2-D axial rotary embedding on q and k, no parameters (DINOv3).
   */
  readonly posEmbed: 'learned' | 'rope';
}

/** The names of the built-in configurations. */
export type VitName = 'vit-test-tiny' | 'vit-fmnist' | 'vit-s16' | 'vit-b16' | 'vit-l16' | 'vit-g14' | 'vit-7b16';

/**
 * Built-in configurations. S/B/L/g follow DINOv2 (learned position table, no registers,
 * LayerScale 1e-5, the `ssl_default_config.yaml` default), with patch 16 for S/B/L as in DINO
 * and DINOv3; 7B follows DINOv3's pretraining config.
 */
export const VIT_CONFIGS: { readonly [name in VitName]: VitConfig } = {
  /** For unit tests: 16 px, a 4 × 4 grid of 4 px patches, two blocks. */
  'vit-test-tiny': {
    name: 'vit-test-tiny',
    imageSize: 16,
    patchSize: 4,
    inChannels: 1,
    embedDim: 16,
    depth: 2,
    numHeads: 2,
    ffn: 'mlp',
    ffnHiddenDim: 64,
    numRegisterTokens: 0,
    // Not the 1e-5 of the big models: a test wants every branch to matter numerically.
    layerScaleInit: 0.1,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /**
   * The default model for 28 × 28 grayscale Fashion-MNIST: 7 px patches give a 4 × 4 grid
   * (14 px local crops give 2 × 2). ViT-Ti width (192, 3 heads) at depth 4, ≈ 1.8 M params.
   * No LayerScale: it exists to stabilise deep models (CaiT, DINOv2 ≥ ViT-L); at depth 4 from
   * scratch it only slows the start (residual branches begin at 1e-5 of their size), and DINO
   * (v1) trains ViT-S/16 from scratch without it.
   */
  'vit-fmnist': {
    name: 'vit-fmnist',
    imageSize: 28,
    patchSize: 7,
    inChannels: 1,
    embedDim: 128,
    depth: 4,
    numHeads: 2,
    ffn: 'mlp',
    ffnHiddenDim: 512,
    numRegisterTokens: 0,
    layerScaleInit: null,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /** ViT-S/16: reference ≈ 21.7 M (timm `vit_small_patch16_224` without its classifier; DINO paper "21M"). */
  'vit-s16': {
    name: 'vit-s16',
    imageSize: 224,
    patchSize: 16,
    inChannels: 3,
    embedDim: 384,
    depth: 12,
    numHeads: 6,
    ffn: 'mlp',
    ffnHiddenDim: 1536,
    numRegisterTokens: 0,
    layerScaleInit: 1e-5,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /** ViT-B/16: reference ≈ 85.8 M (timm `vit_base_patch16_224` without its classifier; DINO paper "85M"). */
  'vit-b16': {
    name: 'vit-b16',
    imageSize: 224,
    patchSize: 16,
    inChannels: 3,
    embedDim: 768,
    depth: 12,
    numHeads: 12,
    ffn: 'mlp',
    ffnHiddenDim: 3072,
    numRegisterTokens: 0,
    layerScaleInit: 1e-5,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /** ViT-L/16: reference ≈ 303.3 M (timm `vit_large_patch16_224` without its classifier; DINOv2 paper "300M"). */
  'vit-l16': {
    name: 'vit-l16',
    imageSize: 224,
    patchSize: 16,
    inChannels: 3,
    embedDim: 1024,
    depth: 24,
    numHeads: 16,
    ffn: 'mlp',
    ffnHiddenDim: 4096,
    numRegisterTokens: 0,
    layerScaleInit: 1e-5,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /**
   * ViT-g/14 (DINOv2 `vit_giant2`: D 1536, 40 blocks, 24 heads, fused SwiGLU with
   * mlp_ratio 4 → hidden `(int(6144 · 2/3) + 7) // 8 · 8 = 4096`). Reference ≈ 1.1 B (DINOv2
   * paper; the released `dinov2_vitg14` backbone has ≈ 1.14 B with its 37 × 37 position table).
   */
  'vit-g14': {
    name: 'vit-g14',
    imageSize: 224,
    patchSize: 14,
    inChannels: 3,
    embedDim: 1536,
    depth: 40,
    numHeads: 24,
    ffn: 'swiglu',
    ffnHiddenDim: 4096,
    numRegisterTokens: 0,
    layerScaleInit: 1e-5,
    qkvBias: true,
    posEmbed: 'learned',
  },
  /**
   * DINOv3 ViT-7B/16 (`vit_7b` + `dinov3_vit7b16_pretrain.yaml`): D 4096, 40 blocks, 32 heads,
   * `swiglu64` with ffn_ratio 3 → hidden `int(12288 · 2/3) = 8192`, 4 storage tokens, RoPE,
   * LayerScale 1e-5, no qkv bias, 256 px global crops. Reference 6,716 M (DINOv3 paper).
   * Not modelled: the untied local-crop CLS norm (`untie_global_and_local_cls_norm`, 8 K
   * params) and RoPE coordinate rescaling augmentation.
   */
  'vit-7b16': {
    name: 'vit-7b16',
    imageSize: 256,
    patchSize: 16,
    inChannels: 3,
    embedDim: 4096,
    depth: 40,
    numHeads: 32,
    ffn: 'swiglu',
    ffnHiddenDim: 8192,
    numRegisterTokens: 4,
    layerScaleInit: 1e-5,
    qkvBias: false,
    posEmbed: 'rope',
  },
};

/** Patches per side of the config's native (global-crop) grid. */
export function vitGridSize(cfg: VitConfig): number {
  return Math.floor(cfg.imageSize / cfg.patchSize);
}

/**
 * The number of parameters {@link initVitParams} allocates for `cfg`, computed from the shapes
 * alone (nothing is allocated, so it is safe for the 7B config).
 */
export function vitParamCount(cfg: VitConfig): number {
  const d = cfg.embedDim;
  const h = cfg.ffnHiddenDim;
  const grid = vitGridSize(cfg);
  const patchEmbed = cfg.patchSize * cfg.patchSize * cfg.inChannels * d + d;
  const tokens = d /* cls */ + cfg.numRegisterTokens * d + d /* mask */;
  const posEmbed = cfg.posEmbed === 'learned' ? grid * grid * d : 0;
  const attn = d * 3 * d + (cfg.qkvBias ? 3 * d : 0) + d * d + d;
  const ffn = cfg.ffn === 'mlp' ? d * h + h + h * d + d : d * 2 * h + 2 * h + h * d + d;
  const norms = 2 * 2 * d;
  const layerScale = cfg.layerScaleInit === null ? 0 : 2 * d;
  const block = attn + ffn + norms + layerScale;
  const finalNorm = 2 * d;
  return patchEmbed + tokens + posEmbed + cfg.depth * block + finalNorm;
}
