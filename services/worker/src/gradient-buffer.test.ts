import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { allReduceFused } from '@dinofleet/collective';
import { initComputeBackend } from '@dinofleet/compute';
import { Rng, createDinoState, disposeDinoState, isTrainable } from '@dinofleet/dino';
import { GradientLayout } from './gradient-buffer.ts';
import { tinyDinoRecipe } from './testing/recipes.ts';

/** The flat buffer of `grads` and `loss`: the fused parts with nothing summed. */
async function flatten(layout: GradientLayout, grads: Readonly<Record<string, tf.Tensor>>, loss: number): Promise<Float32Array> {
  return (await allReduceFused(layout.parts(grads, loss), (bucket) => Promise.resolve(bucket))).values;
}

describe('GradientLayout', () => {
  beforeAll(() => initComputeBackend('cpu'));

  it('lays out trainable parameters in sorted name order, then the loss slot', () => {
    const state = createDinoState(tinyDinoRecipe(), 1, { totalSteps: 4 });
    const layout = new GradientLayout(state.student);
    const names = layout.slots.map((s) => s.name);
    expect(names).toEqual(Object.keys(state.student).filter(isTrainable).sort());
    expect(names).not.toContain('dino_head.last_layer.weight_g');
    let offset = 0;
    for (const slot of layout.slots) {
      expect(slot.offset).toBe(offset);
      expect(slot.size).toBe((state.student[slot.name] as tf.Variable).size);
      offset += slot.size;
    }
    expect(layout.gradientSize).toBe(offset);
    expect(layout.size).toBe(offset + 1);
    disposeDinoState(state);
  });

  it('round-trips gradients and the loss bit for bit', async () => {
    const state = createDinoState(tinyDinoRecipe(), 1, { totalSteps: 4 });
    const layout = new GradientLayout(state.student);
    const rng = new Rng(9);
    const grads: Record<string, tf.Tensor> = {};
    // Insertion order differs from the layout's, which must not matter.
    for (const slot of [...layout.slots].reverse()) {
      grads[slot.name] = tf.tensor(Float32Array.from({ length: slot.size }, () => rng.normal() * 10 ** rng.int(8 - 4)), [...slot.shape]);
    }
    const loss = 3.1415927;
    const flat = await flatten(layout, grads, loss);
    expect(flat.length).toBe(layout.size);
    expect(flat[layout.gradientSize]).toBe(Math.fround(loss));
    const back = layout.unflatten(flat);
    expect(back.loss).toBe(Math.fround(loss));
    expect(Object.keys(back.grads).sort()).toEqual(Object.keys(grads).sort());
    for (const [name, g] of Object.entries(grads)) {
      const restored = back.grads[name] as tf.Tensor;
      expect(restored.shape).toEqual(g.shape);
      const bytes = (t: Float32Array): Buffer => Buffer.from(t.buffer, t.byteOffset, t.byteLength);
      expect(bytes((await restored.data()) as Float32Array).equals(bytes((await g.data()) as Float32Array))).toBe(true);
    }
    tf.dispose([...Object.values(grads), ...Object.values(back.grads)]);
    disposeDinoState(state);
  });

  it('fused in buckets that split tensors, sums two ranks element by element into the reused output', async () => {
    const state = createDinoState(tinyDinoRecipe(), 1, { totalSteps: 4 });
    const layout = new GradientLayout(state.student);
    const rng = new Rng(5);
    const randomGrads = (): Record<string, tf.Tensor> =>
      Object.fromEntries(layout.slots.map((slot) => [slot.name, tf.tensor(Float32Array.from({ length: slot.size }, () => rng.normal()), [...slot.shape])]));
    const mine = randomGrads();
    const theirs = randomGrads();
    const theirFlat = await flatten(layout, theirs, 0.25);
    // 37 elements per bucket: most tensors start in one bucket and end in another.
    const capacity = 37;
    const output = new Float32Array(layout.size);
    const seen: number[] = [];
    const result = await allReduceFused(
      layout.parts(mine, 1.5),
      (bucket, index) => {
        // The other rank's contribution at this bucket's place in the flat buffer.
        seen.push(index);
        for (let i = 0; i < bucket.length; i++) bucket[i] = (bucket[i] as number) + (theirFlat[index * capacity + i] as number);
        return Promise.resolve(bucket);
      },
      { bucketBytes: 4 * capacity, output },
    );
    expect(result.values).toBe(output);
    expect(seen).toEqual(Array.from({ length: Math.ceil(layout.size / capacity) }, (_, k) => k));
    const summed = layout.unflatten(output);
    expect(summed.loss).toBe(1.75);
    for (const slot of layout.slots) {
      const a = (await (mine[slot.name] as tf.Tensor).data()) as Float32Array;
      const b = (await (theirs[slot.name] as tf.Tensor).data()) as Float32Array;
      const got = (await (summed.grads[slot.name] as tf.Tensor).data()) as Float32Array;
      expect(Array.from(got)).toEqual(Array.from(a, (x, i) => Math.fround(x + (b[i] as number))));
    }
    tf.dispose([...Object.values(mine), ...Object.values(theirs), ...Object.values(summed.grads)]);
    disposeDinoState(state);
  });

  it('refuses a missing or mis-sized gradient and a buffer of the wrong length', () => {
    const state = createDinoState(tinyDinoRecipe(), 1, { totalSteps: 4 });
    const layout = new GradientLayout(state.student);
    const first = layout.slots[0];
    if (first === undefined) throw new Error('no slots');
    const grads = Object.fromEntries(layout.slots.map((s) => [s.name, tf.zeros([...s.shape])]));
    const wrong = tf.zeros([first.size + 1]);
    expect(() => layout.parts({}, 0)).toThrow(/parts: no gradient for/);
    expect(() => layout.parts({ ...grads, [first.name]: wrong }, 0)).toThrow(/elements/);
    expect(layout.parts(grads, 0).map((part) => part.length)).toEqual([...layout.slots.map((slot) => slot.size), 1]);
    expect(() => layout.unflatten(new Float32Array(layout.size - 1))).toThrow(/expected/);
    tf.dispose([...Object.values(grads), wrong]);
    disposeDinoState(state);
  });
});
