import * as tf from '@tensorflow/tfjs-core';
import type { ParamMap } from './params.ts';

/**
 * The EMA teacher update `teacher ← m·teacher + (1 − m)·student`, for every teacher parameter
 * (backbone and heads, named like the student's), in place. dinov2/dinov3 `ssl_meta_arch.py::
 * update_teacher` / `update_ema` do the same with `_foreach_mul_(teacher, m)` then
 * `_foreach_add_(teacher, student, alpha=1 − m)`; the rounding order is kept.
 *
 * @param momentum `m` in [0, 1], from the momentum schedule (0.996 → 1 cosine).
 * @throws Error when a teacher parameter has no student counterpart or a different shape,
 *   before anything is updated.
 */
export function emaUpdate(teacher: Readonly<Record<string, tf.Variable>>, student: ParamMap, momentum: number): void {
  if (!(momentum >= 0 && momentum <= 1)) throw new RangeError(`momentum must be in [0, 1], got ${momentum}`);
  const names = Object.keys(teacher).sort();
  for (const name of names) {
    const t = teacher[name] as tf.Variable;
    const s = student[name];
    if (s === undefined) throw new Error(`emaUpdate: student has no parameter ${name}`);
    if (t.shape.length !== s.shape.length || t.shape.some((d, i) => d !== s.shape[i])) {
      throw new Error(`emaUpdate: ${name} has shape [${s.shape.join(', ')}] in the student, [${t.shape.join(', ')}] in the teacher`);
    }
  }
  // m = 1 leaves the teacher bit-identical, as the final momentum of the schedule intends.
  if (momentum === 1) return;
  for (const name of names) {
    const t = teacher[name] as tf.Variable;
    const s = student[name] as tf.Tensor;
    tf.tidy(() => {
      t.assign(tf.add(tf.mul(t, momentum), tf.mul(s, 1 - momentum)));
    });
  }
}
