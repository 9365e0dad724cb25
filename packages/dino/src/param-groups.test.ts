import { describe, expect, it } from 'vitest';
import { paramGroupFor } from './param-groups.ts';

const DINOV2 = { depth: 12, layerDecay: 0.9, patchEmbedLrMult: 0.2 };

describe('paramGroupFor', () => {
  it('gives dinov2 layer-wise lr multipliers', () => {
    const lr = (name: string): number => paramGroupFor(name, DINOV2).lrMultiplier;
    expect(lr('backbone.patch_embed.weight')).toBeCloseTo(0.9 ** 13 * 0.2, 15);
    expect(lr('backbone.patch_embed.bias')).toBeCloseTo(0.9 ** 13 * 0.2, 15);
    for (const token of ['cls_token', 'pos_embed', 'mask_token', 'register_tokens']) {
      expect(lr(`backbone.${token}`)).toBeCloseTo(0.9 ** 13, 15);
    }
    expect(lr('backbone.blocks.0.attn.qkv.weight')).toBeCloseTo(0.9 ** 12, 15);
    expect(lr('backbone.blocks.5.mlp.fc1.bias')).toBeCloseTo(0.9 ** 7, 15);
    expect(lr('backbone.blocks.11.ls2.gamma')).toBeCloseTo(0.9, 15);
    expect(lr('backbone.norm.weight')).toBe(1);
    expect(lr('dino_head.mlp.0.weight')).toBe(1);
    expect(lr('ibot_head.last_layer.weight')).toBe(1);
  });

  it('turns weight decay off for biases, norms and LayerScale, keeps it for weights and tokens', () => {
    const wd = (name: string): number => paramGroupFor(name, DINOV2).wdMultiplier;
    for (const name of [
      'backbone.patch_embed.bias',
      'backbone.blocks.3.norm1.weight',
      'backbone.blocks.3.norm2.bias',
      'backbone.blocks.3.attn.qkv.bias',
      'backbone.blocks.3.ls1.gamma',
      'backbone.norm.weight',
      'backbone.norm.bias',
      'dino_head.mlp.2.bias',
    ]) {
      expect(wd(name), name).toBe(0);
    }
    for (const name of [
      'backbone.patch_embed.weight',
      'backbone.cls_token',
      'backbone.pos_embed',
      'backbone.register_tokens',
      'backbone.mask_token',
      'backbone.blocks.3.mlp.fc2.weight',
      'dino_head.mlp.0.weight',
      'dino_head.last_layer.weight',
      'dino_head.last_layer.weight_g',
    ]) {
      expect(wd(name), name).toBe(1);
    }
  });

  it('marks the last layer of both heads only', () => {
    expect(paramGroupFor('dino_head.last_layer.weight', DINOV2).isLastLayer).toBe(true);
    expect(paramGroupFor('ibot_head.last_layer.weight_g', DINOV2).isLastLayer).toBe(true);
    expect(paramGroupFor('dino_head.mlp.2.weight', DINOV2).isLastLayer).toBe(false);
    expect(paramGroupFor('backbone.blocks.11.mlp.fc2.weight', DINOV2).isLastLayer).toBe(false);
  });

  it('is all ones with decay and patch multiplier off, and rejects a block past depth', () => {
    const off = { depth: 4, layerDecay: 1, patchEmbedLrMult: 1 };
    expect(paramGroupFor('backbone.patch_embed.weight', off).lrMultiplier).toBe(1);
    expect(paramGroupFor('backbone.blocks.2.attn.proj.weight', off).lrMultiplier).toBe(1);
    expect(() => paramGroupFor('backbone.blocks.4.attn.proj.weight', off)).toThrow(RangeError);
    expect(() => paramGroupFor('backbone.norm.weight', { ...off, layerDecay: 0 })).toThrow(/layerDecay/);
  });
});
