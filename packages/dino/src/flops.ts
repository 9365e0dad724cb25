import type { DinoHeadConfig } from './heads.ts';
import type { DinoRecipe } from './presets.ts';
import type { VitConfig } from './vit-configs.ts';

/**
 * Analytic FLOP counts (multiply-add = 2 FLOPs), matrix products only: elementwise ops,
 * norms and softmax are memory-bound and left out, as is usual for "model FLOPs".
 *
 * ViT forward on `images` images of `size` px, T = patches + 1 + registers tokens:
 *   patch embed   2·n·P·(p²C)·D
 *   per block     2·n·T·D·3D (qkv) + 2·2·n·T²·D (scores, mix) + 2·n·T·D² (proj)
 *                 + FFN: 2·2·n·T·D·H (MLP) or 3·2·n·T·D·H (SwiGLU)
 * Head on r rows: 2·r·(in·hid + (nLayers−2)·hid·hid + hid·bn + bn·K).
 * A training step: backward = 2 × forward for the student, forward only for the teachers.
 */
export function vitForwardFlops(vit: VitConfig, images: number, size: number): number {
  const grid = size / vit.patchSize;
  const patches = grid * grid;
  const T = patches + 1 + vit.numRegisterTokens;
  const D = vit.embedDim;
  const H = vit.ffnHiddenDim;
  const patchEmbed = 2 * images * patches * vit.patchSize * vit.patchSize * vit.inChannels * D;
  const ffn = (vit.ffn === 'swiglu' ? 3 : 2) * 2 * images * T * D * H;
  const block = 2 * images * T * D * 3 * D + 2 * 2 * images * T * T * D + 2 * images * T * D * D + ffn;
  return patchEmbed + vit.depth * block;
}

/** Forward FLOPs of a DINO head on `rows` rows. */
export function headForwardFlops(head: DinoHeadConfig, rows: number): number {
  const hidden = head.inDim * head.hiddenDim + Math.max(0, head.nLayers - 2) * head.hiddenDim * head.hiddenDim;
  return 2 * rows * (hidden + head.hiddenDim * head.bottleneckDim + head.bottleneckDim * head.outDim);
}

/** The shape of one step's work. */
export interface StepShape {
  readonly batchSize: number;
  readonly nGlobal: number;
  readonly nLocal: number;
  readonly globalSize: number;
  readonly localSize: number;
  /** Masked patches in the step (iBOT rows through the heads). */
  readonly maskedPatches: number;
  /** Whether a Gram teacher forward runs. */
  readonly gram: boolean;
}

/** FLOPs of one training step (student forward + backward, teacher forward). */
export function trainStepFlops(recipe: DinoRecipe, shape: StepShape): number {
  const g = shape.nGlobal * shape.batchSize;
  const l = shape.nLocal * shape.batchSize;
  const ibotHead = recipe.ibot?.separateHead === true ? recipe.ibot.head : recipe.dinoHead;
  const backboneGlobal = vitForwardFlops(recipe.vit, g, shape.globalSize);
  const backboneLocal = l > 0 ? vitForwardFlops(recipe.vit, l, shape.localSize) : 0;
  const studentForward =
    backboneGlobal + backboneLocal + headForwardFlops(recipe.dinoHead, g + l) + headForwardFlops(ibotHead, shape.maskedPatches);
  const teacherForward = backboneGlobal + headForwardFlops(recipe.dinoHead, g) + headForwardFlops(ibotHead, shape.maskedPatches);
  return 3 * studentForward + teacherForward + (shape.gram ? backboneGlobal : 0);
}
