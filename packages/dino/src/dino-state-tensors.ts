import * as tf from '@tensorflow/tfjs-core';
import type { DinoState } from './train-step.ts';

/**
 * A {@link DinoState} as named float32 arrays plus the scalars beside them: what a
 * checkpoint or a state transfer stores (docs/cluster.md, "S3 layout" and "Elasticity and
 * failures"). Tensor names: `student/<param>`, `teacher/<param>`, `optim/m/<param>`,
 * `optim/v/<param>` (parameters that have moments), `center`, `ibot_center` (when the
 * state has one), `gram/<param>` (when the Gram teacher exists). The byte encoding
 * (safetensors) is the caller's: this package does no I/O.
 */
export interface DinoStateTensors {
  /** Every tensor, values copied out of the state (row-major, float32). */
  readonly tensors: Record<string, StateTensorData>;
  readonly scalars: DinoStateScalars;
}

/** A float32 array and its shape (structurally `NamedTensor` of `@dinofleet/data`). */
export interface StateTensorData {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** The numbers of a state that are not tensors. */
export interface DinoStateScalars {
  /** `state.step`: optimisation steps done. */
  readonly step: number;
  /** AdamW `step()` calls so far (`AdamW.stepCount`). */
  readonly optimizerStep: number;
  /** AdamW's per-parameter step counts, for the parameters that have moments. */
  readonly optimizerSteps: Readonly<Record<string, number>>;
}

async function values(t: tf.Tensor): Promise<StateTensorData> {
  // data() copies, so the result outlives the tensor.
  return { shape: [...t.shape], data: (await t.data()) as Float32Array };
}

/** Copies every tensor and scalar of `state` out (see {@link DinoStateTensors} for the names). */
export async function dinoStateTensors(state: DinoState): Promise<DinoStateTensors> {
  const tensors: Record<string, StateTensorData> = {};
  for (const name of Object.keys(state.student).sort()) tensors[`student/${name}`] = await values(state.student[name] as tf.Tensor);
  for (const name of Object.keys(state.teacher).sort()) tensors[`teacher/${name}`] = await values(state.teacher[name] as tf.Tensor);
  const optim = state.optimizer.state();
  try {
    for (const name of Object.keys(optim.m).sort()) {
      tensors[`optim/m/${name}`] = await values(optim.m[name] as tf.Tensor);
      tensors[`optim/v/${name}`] = await values(optim.v[name] as tf.Tensor);
    }
  } finally {
    tf.dispose([...Object.values(optim.m), ...Object.values(optim.v)]);
  }
  tensors.center = { shape: [state.center.length], data: state.center.slice() };
  if (state.ibotCenter !== null) tensors.ibot_center = { shape: [state.ibotCenter.length], data: state.ibotCenter.slice() };
  for (const name of Object.keys(state.gramTeacher ?? {}).sort()) tensors[`gram/${name}`] = await values(state.gramTeacher?.[name] as tf.Tensor);
  return { tensors, scalars: { step: state.step, optimizerStep: optim.step, optimizerSteps: optim.paramSteps } };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Replaces the contents of `state` (made by `createDinoState` with the same recipe) by
 * `tensors` and `scalars`, bit for bit: a state loaded from what {@link dinoStateTensors}
 * returned hashes equal to the original. Everything is checked before anything is
 * changed, so on a throw the state is as it was.
 *
 * @throws Error naming the tensor for a missing, unknown or mis-shaped tensor or a bad
 *   scalar.
 */
export function loadDinoStateTensors(
  state: DinoState,
  tensors: Readonly<Record<string, StateTensorData>>,
  scalars: DinoStateScalars,
): void {
  const expected = new Map<string, readonly number[]>();
  for (const [name, v] of Object.entries(state.student)) expected.set(`student/${name}`, v.shape);
  for (const [name, v] of Object.entries(state.teacher)) expected.set(`teacher/${name}`, v.shape);
  for (const name of Object.keys(scalars.optimizerSteps)) {
    const param = state.student[name];
    if (param === undefined) throw new Error(`the state has optimizer moments of ${name}, which the model does not have`);
    expected.set(`optim/m/${name}`, param.shape);
    expected.set(`optim/v/${name}`, param.shape);
  }
  expected.set('center', [state.center.length]);
  if (state.ibotCenter !== null) expected.set('ibot_center', [state.ibotCenter.length]);
  const hasGram = Object.keys(tensors).some((name) => name.startsWith('gram/'));
  if (hasGram) for (const [name, v] of Object.entries(state.teacher)) expected.set(`gram/${name}`, v.shape);

  for (const [name, shape] of expected) {
    const t = tensors[name];
    if (t === undefined) throw new Error(`the state has no tensor ${name}`);
    if (!sameShape(t.shape, shape)) throw new Error(`tensor ${name} has shape [${t.shape.join(', ')}], the model [${shape.join(', ')}]`);
    if (t.data.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`tensor ${name} has ${t.data.length} values for shape [${shape.join(', ')}]`);
  }
  for (const name of Object.keys(tensors)) if (!expected.has(name)) throw new Error(`the state has an unknown tensor ${name}`);
  if (!Number.isSafeInteger(scalars.step) || scalars.step < 0) throw new Error(`state step must be an integer >= 0, got ${scalars.step}`);

  const make = (name: string): tf.Tensor => {
    const t = tensors[name] as StateTensorData;
    return tf.tensor(t.data, [...t.shape], 'float32');
  };
  const m: Record<string, tf.Tensor> = {};
  const v: Record<string, tf.Tensor> = {};
  for (const name of Object.keys(scalars.optimizerSteps)) {
    m[name] = make(`optim/m/${name}`);
    v[name] = make(`optim/v/${name}`);
  }
  try {
    // First, as it validates the step counts and may throw: nothing else has changed yet.
    state.optimizer.loadState({ step: scalars.optimizerStep, paramSteps: { ...scalars.optimizerSteps }, m, v });
  } finally {
    tf.dispose([...Object.values(m), ...Object.values(v)]);
  }
  for (const [name, variable] of Object.entries(state.student)) {
    const value = make(`student/${name}`);
    variable.assign(value);
    value.dispose();
  }
  for (const [name, variable] of Object.entries(state.teacher)) {
    const value = make(`teacher/${name}`);
    variable.assign(value);
    value.dispose();
  }
  for (const gram of Object.values(state.gramTeacher ?? {})) gram.dispose();
  state.gramTeacher = hasGram
    ? Object.fromEntries(
        Object.keys(state.teacher).map((name) => {
          const value = make(`gram/${name}`);
          const variable = tf.variable(value, false);
          value.dispose();
          return [name, variable];
        }),
      )
    : null;
  state.center = (tensors.center as StateTensorData).data.slice();
  state.ibotCenter = state.ibotCenter === null ? null : (tensors.ibot_center as StateTensorData).data.slice();
  state.step = scalars.step;
}
