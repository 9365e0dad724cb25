import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initComputeBackend } from '@dinofleet/compute';
import { createDinoState, disposeDinoState, isTrainable } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import { STATE_HASH_BYTES, stateHash } from './state-hash.ts';
import { tinyDinoRecipe } from './testing/recipes.ts';

/** A state whose optimiser has moments (one step of constant gradients). */
function stateWithMoments(seed: number): DinoState {
  const state = createDinoState(tinyDinoRecipe(), seed, { totalSteps: 10 });
  const grads = Object.fromEntries(
    Object.entries(state.student)
      .filter(([name]) => isTrainable(name))
      .map(([name, v]) => [name, tf.fill(v.shape, 0.01)]),
  );
  state.optimizer.step(grads, { lr: 1e-3, weightDecay: 0, freezeLastLayer: false });
  tf.dispose(Object.values(grads));
  return state;
}

/** Adds `delta` to element `index` of variable `v`. */
function bump(v: tf.Variable, index: number, delta: number): void {
  const values = v.dataSync().slice();
  values[index] = (values[index] as number) + delta;
  v.assign(tf.tensor(values, v.shape));
}

describe('stateHash', () => {
  beforeAll(() => initComputeBackend('cpu'));

  it('is a SHA-256, equal for states built the same way and different for another seed', async () => {
    const a = stateWithMoments(3);
    const b = stateWithMoments(3);
    const c = stateWithMoments(4);
    const ha = await stateHash(a);
    expect(ha.length).toBe(STATE_HASH_BYTES);
    expect((await stateHash(b)).equals(ha)).toBe(true);
    expect((await stateHash(c)).equals(ha)).toBe(false);
    // Hashing reads the state without changing it.
    expect((await stateHash(a)).equals(ha)).toBe(true);
    for (const s of [a, b, c]) disposeDinoState(s);
  });

  it('changes when any single value changes: student, teacher, moments, step counts, centers, step', async () => {
    const reference = stateWithMoments(5);
    const base = await stateHash(reference);
    const name = 'backbone.blocks.1.mlp.fc2.weight';
    const mutations: Record<string, (s: DinoState) => void> = {
      'a student weight (last element)': (s) => bump(s.student[name] as tf.Variable, (s.student[name] as tf.Variable).size - 1, 1e-6),
      'a non-trainable student weight_g': (s) => bump(s.student['dino_head.last_layer.weight_g'] as tf.Variable, 0, 1e-3),
      'a teacher weight (first element)': (s) => bump(s.teacher['backbone.cls_token'] as tf.Variable, 0, 1e-6),
      'a first moment': (s) => {
        const optim = s.optimizer.state();
        const m = optim.m[name] as tf.Tensor;
        const values = m.dataSync().slice();
        values[7] = (values[7] as number) * 2;
        optim.m[name] = tf.tensor(values, m.shape);
        m.dispose();
        s.optimizer.loadState(optim);
        tf.dispose([...Object.values(optim.m), ...Object.values(optim.v)]);
      },
      'a second moment': (s) => {
        const optim = s.optimizer.state();
        const v = optim.v[name] as tf.Tensor;
        const values = v.dataSync().slice();
        values[0] = (values[0] as number) + 1e-9;
        optim.v[name] = tf.tensor(values, v.shape);
        v.dispose();
        s.optimizer.loadState(optim);
        tf.dispose([...Object.values(optim.m), ...Object.values(optim.v)]);
      },
      "a parameter's AdamW step count": (s) => {
        const optim = s.optimizer.state();
        optim.paramSteps[name] = 2;
        s.optimizer.loadState(optim);
        tf.dispose([...Object.values(optim.m), ...Object.values(optim.v)]);
      },
      'the center': (s) => {
        s.center = s.center.slice();
        s.center[s.center.length - 1] = 1e-7;
      },
      'the step': (s) => {
        s.step += 1;
      },
    };
    const seen = new Set([base.toString('hex')]);
    for (const [what, mutate] of Object.entries(mutations)) {
      const state = stateWithMoments(5);
      expect((await stateHash(state)).equals(base), what).toBe(true);
      mutate(state);
      const hash = (await stateHash(state)).toString('hex');
      expect(seen.has(hash), `${what} must change the hash`).toBe(false);
      seen.add(hash);
      disposeDinoState(state);
    }
    disposeDinoState(reference);
  });
});
