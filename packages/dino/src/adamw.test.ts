import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdamW } from './adamw.ts';
import type { ParamGroup } from './param-groups.ts';
import { useTestBackend } from './testing/backend.ts';

/** torch.optim.AdamW's single-tensor step for one parameter, in double precision. */
class ReferenceAdamW {
  m: number[];
  v: number[];
  t = 0;
  constructor(
    public p: number[],
    private readonly beta1 = 0.9,
    private readonly beta2 = 0.999,
    private readonly eps = 1e-8,
  ) {
    this.m = p.map(() => 0);
    this.v = p.map(() => 0);
  }
  step(g: number[], lr: number, wd: number): void {
    this.t++;
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    this.p = this.p.map((p, i) => {
      const gi = g[i] as number;
      const m = this.beta1 * (this.m[i] as number) + (1 - this.beta1) * gi;
      const v = this.beta2 * (this.v[i] as number) + (1 - this.beta2) * gi * gi;
      this.m[i] = m;
      this.v[i] = v;
      const decayed = p * (1 - lr * wd);
      return decayed - ((lr / bc1) * m) / (Math.sqrt(v) / Math.sqrt(bc2) + this.eps);
    });
  }
}

const f32 = (xs: number[]): number[] => xs.map((x) => Math.fround(x));
const values = (t: tf.Tensor): number[] => Array.from(t.dataSync());

function expectClose(actual: number[], expected: number[], tol = 1e-6): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((a, i) => expect(Math.abs(a - (expected[i] as number)), `index ${i}: ${a} vs ${expected[i]}`).toBeLessThan(tol));
}

const GROUPS: Record<string, ParamGroup> = {
  'backbone.blocks.0.mlp.fc1.weight': { lrMultiplier: 0.5, wdMultiplier: 1, isLastLayer: false },
  'backbone.blocks.0.mlp.fc1.bias': { lrMultiplier: 1, wdMultiplier: 0, isLastLayer: false },
  'dino_head.last_layer.weight': { lrMultiplier: 1, wdMultiplier: 1, isLastLayer: true },
};
const groupOf = (name: string): ParamGroup => GROUPS[name] as ParamGroup;

const P0 = {
  'backbone.blocks.0.mlp.fc1.weight': f32([0.5, -1.25, 2, 0.125]),
  'backbone.blocks.0.mlp.fc1.bias': f32([0.3, -0.7]),
  'dino_head.last_layer.weight': f32([1.5, -0.2, 0.05]),
};
const GRADS: Record<string, number[][]> = {
  'backbone.blocks.0.mlp.fc1.weight': [f32([0.1, -0.4, 1.3, 0]), f32([-0.2, 0.05, 0.9, 2.5]), f32([0.7, 0.3, -0.01, -1])],
  'backbone.blocks.0.mlp.fc1.bias': [f32([1, -2]), f32([0.5, 0.25]), f32([-3, 0.125])],
  'dino_head.last_layer.weight': [f32([0.2, 0.2, -0.6]), f32([-1, 0.4, 0.3]), f32([0.05, -0.9, 2])],
};
const SCHEDULE = [
  { lr: 0.1, weightDecay: 0.04 },
  { lr: 0.05, weightDecay: 0.2 },
  { lr: 0.02, weightDecay: 0.4 },
];

function makeVariables(): Record<string, tf.Variable> {
  return Object.fromEntries(Object.entries(P0).map(([n, p]) => [n, tf.variable(tf.tensor1d(p), true, undefined, 'float32')]));
}

function gradsAt(step: number, names = Object.keys(GRADS)): Record<string, tf.Tensor> {
  return Object.fromEntries(names.map((n) => [n, tf.tensor1d((GRADS[n] as number[][])[step] as number[])]));
}

function disposeAll(...records: Record<string, tf.Tensor>[]): void {
  for (const r of records) for (const t of Object.values(r)) t.dispose();
}

describe('AdamW', () => {
  beforeAll(() => useTestBackend());

  it('matches torch AdamW in double precision over 3 steps with per-group lr and wd', () => {
    const vars = makeVariables();
    const opt = new AdamW(vars, groupOf);
    const refs = Object.fromEntries(Object.entries(P0).map(([n, p]) => [n, new ReferenceAdamW(p)]));
    for (let s = 0; s < 3; s++) {
      const { lr, weightDecay } = SCHEDULE[s] as { lr: number; weightDecay: number };
      const grads = gradsAt(s);
      opt.step(grads, { lr, weightDecay, freezeLastLayer: false });
      disposeAll(grads);
      for (const [n, ref] of Object.entries(refs)) {
        const g = groupOf(n);
        ref.step((GRADS[n] as number[][])[s] as number[], lr * g.lrMultiplier, weightDecay * g.wdMultiplier);
        expectClose(values(vars[n] as tf.Variable), ref.p);
      }
    }
    expect(opt.stepCount).toBe(3);
    opt.dispose();
    disposeAll(vars);
  });

  it('keeps a frozen last layer unchanged while its moments advance (dinov2 lr 0)', () => {
    const vars = makeVariables();
    const opt = new AdamW(vars, groupOf);
    const name = 'dino_head.last_layer.weight';
    const ref = new ReferenceAdamW(P0[name]);
    for (let s = 0; s < 3; s++) {
      const { lr, weightDecay } = SCHEDULE[s] as { lr: number; weightDecay: number };
      const freezeLastLayer = s < 2;
      const grads = gradsAt(s);
      opt.step(grads, { lr, weightDecay, freezeLastLayer });
      disposeAll(grads);
      ref.step((GRADS[name] as number[][])[s] as number[], freezeLastLayer ? 0 : lr, weightDecay);
      if (freezeLastLayer) expect(values(vars[name] as tf.Variable)).toEqual(P0[name]);
      else expectClose(values(vars[name] as tf.Variable), ref.p);
    }
    // the third step used bias correction for t = 3 and the moments of all three gradients
    expect(opt.state().paramSteps[name]).toBe(3);
    opt.dispose();
    disposeAll(vars);
  });

  it('skips a parameter without a gradient, as torch skips grad None', () => {
    const vars = makeVariables();
    const opt = new AdamW(vars, groupOf);
    const skipped = 'backbone.blocks.0.mlp.fc1.bias';
    const ref = new ReferenceAdamW(P0[skipped]);
    const g0 = gradsAt(0, ['backbone.blocks.0.mlp.fc1.weight', 'dino_head.last_layer.weight']);
    opt.step(g0, { lr: 0.1, weightDecay: 0.5, freezeLastLayer: false });
    expect(values(vars[skipped] as tf.Variable)).toEqual(P0[skipped]);
    const g1 = gradsAt(1);
    opt.step(g1, { lr: 0.05, weightDecay: 0.2, freezeLastLayer: false });
    // its first real step: bias correction with t = 1
    ref.step((GRADS[skipped] as number[][])[1] as number[], 0.05, 0);
    expectClose(values(vars[skipped] as tf.Variable), ref.p);
    expect(opt.state().paramSteps).toMatchObject({ [skipped]: 1, 'dino_head.last_layer.weight': 2 });
    disposeAll(g0, g1);
    opt.dispose();
    disposeAll(vars);
  });

  it('leaks no tensors', () => {
    const vars = makeVariables();
    const grads = gradsAt(0);
    const before = tf.memory().numTensors;
    const opt = new AdamW(vars, groupOf);
    opt.step(grads, { lr: 0.1, weightDecay: 0.1, freezeLastLayer: false });
    const afterFirst = tf.memory().numTensors;
    expect(afterFirst).toBe(before + 2 * 3); // m and v of three parameters
    opt.step(grads, { lr: 0.1, weightDecay: 0.1, freezeLastLayer: true });
    opt.step(grads, { lr: 0, weightDecay: 0.1, freezeLastLayer: false });
    expect(tf.memory().numTensors).toBe(afterFirst);
    const st = opt.state();
    opt.loadState(st);
    disposeAll(st.m, st.v);
    expect(tf.memory().numTensors).toBe(afterFirst);
    opt.dispose();
    opt.dispose();
    expect(tf.memory().numTensors).toBe(before);
    disposeAll(grads, vars);
  });

  it('round-trips its state: a restored optimiser makes identical next updates', () => {
    const varsA = makeVariables();
    const optA = new AdamW(varsA, groupOf);
    for (let s = 0; s < 2; s++) {
      const grads = gradsAt(s);
      optA.step(grads, { ...(SCHEDULE[s] as { lr: number; weightDecay: number }), freezeLastLayer: false });
      disposeAll(grads);
    }
    const saved = optA.state();
    expect(saved.step).toBe(2);
    const varsB = Object.fromEntries(Object.entries(varsA).map(([n, v]) => [n, tf.variable(v.clone(), true, undefined, 'float32')]));
    const optB = new AdamW(varsB, groupOf);
    optB.loadState(saved);
    disposeAll(saved.m, saved.v);
    expect(optB.stepCount).toBe(2);
    const grads = gradsAt(2);
    optA.step(grads, { lr: 0.02, weightDecay: 0.4, freezeLastLayer: false });
    optB.step(grads, { lr: 0.02, weightDecay: 0.4, freezeLastLayer: false });
    for (const n of Object.keys(varsA)) expect(values(varsB[n] as tf.Variable)).toEqual(values(varsA[n] as tf.Variable));
    disposeAll(grads);
    optA.dispose();
    optB.dispose();
    disposeAll(varsA, varsB);
  });

  it('rejects gradients of unknown parameters or wrong shapes', () => {
    const vars = makeVariables();
    const opt = new AdamW(vars, groupOf);
    const bad = { 'backbone.blocks.0.mlp.fc1.bias': tf.tensor1d([1, 2, 3]) };
    expect(() => opt.step(bad, { lr: 0.1, weightDecay: 0, freezeLastLayer: false })).toThrow(/shape/);
    const unknown = { 'backbone.nope': tf.tensor1d([1]) };
    expect(() => opt.step(unknown, { lr: 0.1, weightDecay: 0, freezeLastLayer: false })).toThrow(/unknown/);
    expect(opt.stepCount).toBe(0);
    disposeAll(bad, unknown, vars);
    opt.dispose();
  });
});
