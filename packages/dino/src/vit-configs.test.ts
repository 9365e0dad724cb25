import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';
import { VIT_CONFIGS, vitGridSize, vitParamCount, type VitConfig, type VitName } from './vit-configs.ts';
import { initVitParams } from './vit.ts';

/**
 * Published backbone sizes (no classifier head). S/B/L: timm's `vit_{small,base,large}_patch16_224`
 * totals less their 1000-class heads (DINO reports "21M" / "85M", DINOv2 "300M" for L).
 * g/14: the released `dinov2_vitg14` (1,136,480,768 with its 37 × 37 + CLS position table;
 * the paper rounds to 1.1B). 7B/16: DINOv3 paper, 6,716M.
 */
const REFERENCE_PARAMS: Partial<Record<VitName, number>> = {
  'vit-s16': 21_665_664,
  'vit-b16': 85_798_656,
  'vit-l16': 303_301_632,
  'vit-g14': 1_136_480_768,
  'vit-7b16': 6_716e6,
};

function allocatedCount(cfg: VitConfig): number {
  const params = initVitParams(cfg, new Rng(1));
  const total = Object.values(params).reduce((sum, t) => sum + t.size, 0);
  tf.dispose(Object.values(params));
  return total;
}

describe('ViT configurations', () => {
  beforeAll(() => useTestBackend());

  it.each(Object.entries(REFERENCE_PARAMS))('%s is within 3%% of its reference size', (name, reference) => {
    const count = vitParamCount(VIT_CONFIGS[name as VitName]);
    expect(Math.abs(count - reference) / reference).toBeLessThan(0.03);
  });

  it('gives the exact counts worked out by hand for S/16 and 7B/16', () => {
    // S/16 block: qkv 384·1152+1152, proj 384²+384, fc1 384·1536+1536, fc2 1536·384+384, 2 norms, 2 LayerScales.
    const sBlock = 443_520 + 147_840 + 591_360 + 590_208 + 4 * 384 + 2 * 384;
    const sRest = 768 * 384 + 384 + 384 + 384 + 196 * 384 + 2 * 384;
    expect(vitParamCount(VIT_CONFIGS['vit-s16'])).toBe(12 * sBlock + sRest);
    // 7B block: qkv without bias, proj with, SwiGLU 4096→2·8192→4096 with biases.
    const d = 4096;
    const bigBlock = d * 3 * d + d * d + d + d * 16384 + 16384 + 8192 * d + d + 4 * d + 2 * d;
    const bigRest = 768 * d + d + d + 4 * d + d + 2 * d;
    expect(vitParamCount(VIT_CONFIGS['vit-7b16'])).toBe(40 * bigBlock + bigRest);
  });

  it('counts exactly what initVitParams allocates, for every block variant', () => {
    const tiny = VIT_CONFIGS['vit-test-tiny'];
    const variants: VitConfig[] = [
      tiny,
      { ...tiny, ffn: 'swiglu', ffnHiddenDim: 24, numRegisterTokens: 2 },
      { ...tiny, posEmbed: 'rope', qkvBias: false, layerScaleInit: null, numRegisterTokens: 4 },
      VIT_CONFIGS['vit-fmnist'],
    ];
    for (const cfg of variants) expect(allocatedCount(cfg)).toBe(vitParamCount(cfg));
    expect(vitParamCount(tiny)).toBe(7216);
    expect(vitParamCount(VIT_CONFIGS['vit-fmnist'])).toBe(802_048);
  });

  it('has consistent shapes: whole patch grids, whole heads, a 4 × 4 Fashion-MNIST grid', () => {
    for (const cfg of Object.values(VIT_CONFIGS)) {
      expect(cfg.imageSize % cfg.patchSize).toBe(0);
      expect(cfg.embedDim % cfg.numHeads).toBe(0);
      if (cfg.posEmbed === 'rope') expect((cfg.embedDim / cfg.numHeads) % 4).toBe(0);
    }
    const fmnist = VIT_CONFIGS['vit-fmnist'];
    expect(vitGridSize(fmnist)).toBe(4);
    expect(14 / fmnist.patchSize).toBe(2);
    expect(Object.entries(VIT_CONFIGS).every(([key, cfg]) => key === cfg.name)).toBe(true);
  });
});
