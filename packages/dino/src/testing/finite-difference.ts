import * as tf from '@tensorflow/tfjs-core';

/** Options for {@link checkGradients}. */
export interface GradientCheckOptions {
  /** Central-difference step. @default 1e-2 */
  readonly step?: number;
  /** Entries checked per input (a deterministic spread), all when smaller. @default 12 */
  readonly samplesPerInput?: number;
  /** Allowed |analytic − numeric| ≤ atol + rtol·|numeric|. @default 2e-3 */
  readonly atol?: number;
  /** @default 3e-2 */
  readonly rtol?: number;
}

/** One mismatch found by {@link checkGradients}. */
export interface GradientMismatch {
  readonly input: number;
  readonly index: number;
  readonly analytic: number;
  readonly numeric: number;
}

/**
 * Test-only: compares tfjs's analytic gradients of a scalar function with central finite
 * differences (float32, so the step is large and the tolerance loose). Returns the
 * mismatches (empty when the gradients agree) and how many entries were checked.
 */
export function checkGradients(
  f: (...inputs: tf.Tensor[]) => tf.Scalar,
  inputs: readonly tf.Tensor[],
  options: GradientCheckOptions = {},
): { mismatches: GradientMismatch[]; checked: number } {
  const step = options.step ?? 1e-2;
  const samples = options.samplesPerInput ?? 12;
  const atol = options.atol ?? 2e-3;
  const rtol = options.rtol ?? 3e-2;
  const analytic = tf.tidy(() => tf.grads(f)([...inputs]).map((g) => g.dataSync().slice()));
  const values = inputs.map((x) => x.dataSync().slice());
  const evalAt = (which: number, index: number, delta: number): number =>
    tf.tidy(() => {
      const shifted = values.map((v, i) => {
        if (i !== which) return tf.tensor(v, inputs[i]!.shape);
        const copy = v.slice();
        copy[index] = (copy[index] as number) + delta;
        return tf.tensor(copy, inputs[i]!.shape);
      });
      return f(...shifted).dataSync()[0] as number;
    });
  const mismatches: GradientMismatch[] = [];
  let checked = 0;
  values.forEach((v, which) => {
    const stride = Math.max(1, Math.floor(v.length / samples));
    for (let index = 0; index < v.length; index += stride) {
      const numeric = (evalAt(which, index, step) - evalAt(which, index, -step)) / (2 * step);
      const a = analytic[which]![index] as number;
      checked++;
      if (!(Math.abs(a - numeric) <= atol + rtol * Math.abs(numeric))) {
        mismatches.push({ input: which, index, analytic: a, numeric });
      }
    }
  });
  return { mismatches, checked };
}
