import * as tf from '@tensorflow/tfjs-core';
import type { AdamWState } from './adamw.ts';
import type { DinoState } from './train-step.ts';

/**
 * Everything `applyUpdate` (and the cluster's center fetch after it) changes in a
 * {@link DinoState}, as it was before: the rollback copy a rank keeps between an update and
 * its acknowledgement (docs/cluster.md, "The worker's state around a step").
 *
 * The tensors are `tf.clone`s: they share the variables' data until the update assigns new
 * values, so taking a copy costs no memory until then, and one copy of the parameters and
 * moments after it.
 */
export interface DinoStateCopy {
  /** `state.step` when copied. */
  readonly step: number;
  readonly student: Readonly<Record<string, tf.Tensor>>;
  readonly teacher: Readonly<Record<string, tf.Tensor>>;
  /** The optimiser's state (moments, per-parameter and global step counts). */
  readonly optimizer: AdamWState;
  readonly center: Float32Array;
  readonly ibotCenter: Float32Array | null;
  /** The Gram teacher, or null when the state had none. */
  readonly gramTeacher: Readonly<Record<string, tf.Tensor>> | null;
}

function cloneAll(params: Readonly<Record<string, tf.Tensor>>): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [name, t] of Object.entries(params)) out[name] = tf.clone(t);
  return out;
}

/** A rollback copy of `state`; the caller owns it (restore it or dispose it). */
export function captureDinoState(state: DinoState): DinoStateCopy {
  return {
    step: state.step,
    student: cloneAll(state.student),
    teacher: cloneAll(state.teacher),
    optimizer: state.optimizer.state(),
    center: state.center.slice(),
    ibotCenter: state.ibotCenter?.slice() ?? null,
    gramTeacher: state.gramTeacher === null ? null : cloneAll(state.gramTeacher),
  };
}

/** Frees the tensors of a copy. */
export function disposeDinoStateCopy(copy: DinoStateCopy): void {
  tf.dispose([
    ...Object.values(copy.student),
    ...Object.values(copy.teacher),
    ...Object.values(copy.optimizer.m),
    ...Object.values(copy.optimizer.v),
    ...Object.values(copy.gramTeacher ?? {}),
  ]);
}

/**
 * Puts `state` back to what `copy` holds, bit for bit, in place (the variables stay the
 * same objects, so gradient bookkeeping and the optimiser's references stay valid), and
 * disposes `copy`.
 */
export function restoreDinoState(state: DinoState, copy: DinoStateCopy): void {
  try {
    for (const [name, value] of Object.entries(copy.student)) state.student[name]?.assign(value);
    for (const [name, value] of Object.entries(copy.teacher)) state.teacher[name]?.assign(value);
    // loadState copies the moments into fresh variables, so `copy` may be disposed after.
    state.optimizer.loadState(copy.optimizer);
    state.center = copy.center.slice();
    state.ibotCenter = copy.ibotCenter?.slice() ?? null;
    // The update may have replaced the Gram teacher (refreshGramTeacher); new variables
    // share the copy's data.
    for (const v of Object.values(state.gramTeacher ?? {})) v.dispose();
    state.gramTeacher =
      copy.gramTeacher === null ? null : Object.fromEntries(Object.entries(copy.gramTeacher).map(([name, t]) => [name, tf.variable(t, false)]));
    state.step = copy.step;
  } finally {
    disposeDinoStateCopy(copy);
  }
}
