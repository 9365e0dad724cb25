import * as tf from '@tensorflow/tfjs-core';
import type { ParamGroup } from './param-groups.ts';

/** Hyper-parameters of {@link AdamW} that do not follow a schedule. */
export interface AdamWOptions {
  /** First-moment decay, in [0, 1). @default 0.9 (dinov2 `adamw_beta1`) */
  beta1?: number;
  /** Second-moment decay, in [0, 1). @default 0.999 (dinov2 `adamw_beta2`) */
  beta2?: number;
  /** Added to `√v̂` in the denominator, `> 0`. @default 1e-8 (torch's default) */
  eps?: number;
}

/** The scheduled values of one optimiser step. */
export interface AdamWStepOptions {
  /** Learning rate before the parameter's `lrMultiplier`, `>= 0`. */
  lr: number;
  /** Weight-decay coefficient before the parameter's `wdMultiplier`, `>= 0`. */
  weightDecay: number;
  /** Train `isLastLayer` parameters with learning rate 0 this step (see {@link AdamW.step}). */
  freezeLastLayer: boolean;
}

/**
 * Optimiser state for checkpoints and state transfer. Moments exist only for parameters that
 * have received a gradient (torch creates its per-parameter state lazily the same way).
 */
export interface AdamWState {
  /** Number of `step()` calls. */
  step: number;
  /** Per-parameter step count used for bias correction (torch's `state[p]['step']`). */
  paramSteps: Record<string, number>;
  /** First moments `m`, keyed by parameter name. */
  m: Record<string, tf.Tensor>;
  /** Second moments `v`, keyed by parameter name. */
  v: Record<string, tf.Tensor>;
}

interface Moments {
  step: number;
  m: tf.Variable;
  v: tf.Variable;
}

/**
 * AdamW over named `tf.Variable`s, numerically the single-tensor path of `torch.optim.AdamW`
 * (`amsgrad=False`, `maximize=False`), which dinov2/dinov3 `train.py::build_optimizer` use with
 * one param group per (lrMultiplier, wdMultiplier, isLastLayer):
 *
 * ```
 * t ← t + 1
 * p ← p · (1 − lr·wd)                       (decoupled weight decay, before the moments)
 * m ← β1·m + (1 − β1)·g
 * v ← β2·v + (1 − β2)·g²
 * p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
 * ```
 *
 * with `lr = opts.lr · lrMultiplier` (0 for a frozen last layer) and
 * `wd = opts.weightDecay · wdMultiplier`. Scalars are computed in double precision, tensors in
 * float32. Moments are created on a parameter's first gradient; `t` counts per parameter.
 */
export class AdamW {
  private readonly params: Readonly<Record<string, tf.Variable>>;
  private readonly groups: ReadonlyMap<string, ParamGroup>;
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly moments = new Map<string, Moments>();
  private steps = 0;

  /**
   * @param params the trained variables, updated in place by {@link step}.
   * @param groups the group of each parameter name (e.g. `(n) => paramGroupFor(n, opts)`),
   *   evaluated once per name here.
   */
  constructor(
    params: Readonly<Record<string, tf.Variable>>,
    groups: (name: string) => ParamGroup,
    options: AdamWOptions = {},
  ) {
    this.params = params;
    this.groups = new Map(Object.keys(params).map((name) => [name, groups(name)]));
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    if (!(this.beta1 >= 0 && this.beta1 < 1)) throw new RangeError(`beta1 must be in [0, 1), got ${this.beta1}`);
    if (!(this.beta2 >= 0 && this.beta2 < 1)) throw new RangeError(`beta2 must be in [0, 1), got ${this.beta2}`);
    if (!(this.eps > 0)) throw new RangeError(`eps must be > 0, got ${this.eps}`);
  }

  /**
   * Applies one update in place. `grads` is keyed like the parameters; a parameter without a
   * gradient is skipped entirely (no decay, no moment update, its step count unchanged), as
   * torch skips parameters whose `.grad` is None. The gradients are not disposed.
   *
   * `freezeLastLayer` follows dinov2/dinov3 `train.py`: there the last layer's lr comes from a
   * copy of the lr schedule zeroed over `freeze_last_layer_epochs`, so AdamW still receives its
   * gradient with lr 0: the weights do not move (`1 − 0·wd = 1`, update `× 0`) while its moments
   * and step count advance. DINO v1's `utils.cancel_gradients_last_layer` instead sets the grad
   * to None; to get that behaviour, leave the last layer's names out of `grads`.
   *
   * @throws Error for a gradient of an unknown parameter or of the wrong shape.
   */
  step(grads: Readonly<Record<string, tf.Tensor>>, opts: AdamWStepOptions): void {
    const { lr, weightDecay, freezeLastLayer } = opts;
    if (!(lr >= 0)) throw new RangeError(`lr must be >= 0, got ${lr}`);
    if (!(weightDecay >= 0)) throw new RangeError(`weightDecay must be >= 0, got ${weightDecay}`);
    for (const [name, grad] of Object.entries(grads)) {
      const param = this.params[name];
      if (param === undefined) throw new Error(`AdamW.step: gradient for unknown parameter ${name}`);
      assertSameShape(name, param.shape, grad.shape, 'gradient');
    }
    this.steps++;
    for (const name of Object.keys(grads).sort()) {
      const grad = grads[name] as tf.Tensor;
      const param = this.params[name] as tf.Variable;
      const group = this.groups.get(name) as ParamGroup;
      const moments = this.momentsOf(name, param);
      moments.step++;
      const paramLr = group.isLastLayer && freezeLastLayer ? 0 : lr * group.lrMultiplier;
      const paramWd = weightDecay * group.wdMultiplier;
      const biasCorrection1 = 1 - this.beta1 ** moments.step;
      const biasCorrection2Sqrt = Math.sqrt(1 - this.beta2 ** moments.step);
      const stepSize = paramLr / biasCorrection1;
      tf.tidy(() => {
        const m = tf.add(tf.mul(moments.m, this.beta1), tf.mul(grad, 1 - this.beta1));
        const v = tf.add(tf.mul(moments.v, this.beta2), tf.mul(tf.square(grad), 1 - this.beta2));
        moments.m.assign(m);
        moments.v.assign(v);
        const decayed = paramWd === 0 || paramLr === 0 ? param : tf.mul(param, 1 - paramLr * paramWd);
        if (stepSize === 0) {
          if (decayed !== param) param.assign(decayed);
          return;
        }
        const denom = tf.add(tf.div(tf.sqrt(v), biasCorrection2Sqrt), this.eps);
        param.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize)));
      });
    }
  }

  /** Number of {@link step} calls so far. */
  get stepCount(): number {
    return this.steps;
  }

  /** A copy of the state; the caller owns (and disposes) the returned tensors. */
  state(): AdamWState {
    const paramSteps: Record<string, number> = {};
    const m: Record<string, tf.Tensor> = {};
    const v: Record<string, tf.Tensor> = {};
    for (const name of [...this.moments.keys()].sort()) {
      const moments = this.moments.get(name) as Moments;
      paramSteps[name] = moments.step;
      m[name] = tf.clone(moments.m);
      v[name] = tf.clone(moments.v);
    }
    return { step: this.steps, paramSteps, m, v };
  }

  /**
   * Replaces the state with a copy of `s` (as returned by {@link state}); `s` stays the
   * caller's. Parameters absent from `s.paramSteps` start fresh.
   * @throws Error for unknown names, missing moments or wrong shapes; the state is then unchanged.
   */
  loadState(s: AdamWState): void {
    if (!Number.isInteger(s.step) || s.step < 0) throw new RangeError(`state step must be an integer >= 0, got ${s.step}`);
    for (const [name, step] of Object.entries(s.paramSteps)) {
      const param = this.params[name];
      if (param === undefined) throw new Error(`AdamW.loadState: state for unknown parameter ${name}`);
      if (!Number.isInteger(step) || step < 1) throw new RangeError(`AdamW.loadState: ${name} step must be an integer >= 1, got ${step}`);
      const m = s.m[name], v = s.v[name];
      if (m === undefined || v === undefined) throw new Error(`AdamW.loadState: moments missing for ${name}`);
      assertSameShape(name, param.shape, m.shape, 'first moment');
      assertSameShape(name, param.shape, v.shape, 'second moment');
    }
    this.disposeMoments();
    for (const [name, step] of Object.entries(s.paramSteps)) {
      this.moments.set(name, {
        step,
        m: tf.variable(s.m[name] as tf.Tensor, false, undefined, 'float32'),
        v: tf.variable(s.v[name] as tf.Tensor, false, undefined, 'float32'),
      });
    }
    this.steps = s.step;
  }

  /** Frees the moments; the parameters stay the caller's. Idempotent. */
  dispose(): void {
    this.disposeMoments();
  }

  private momentsOf(name: string, param: tf.Variable): Moments {
    let moments = this.moments.get(name);
    if (moments === undefined) {
      // tf.variable shares the zeros' data; tidy then drops only the temporary handle.
      const zeroVariable = (): tf.Variable => tf.tidy(() => tf.variable(tf.zerosLike(param), false, undefined, 'float32'));
      moments = { step: 0, m: zeroVariable(), v: zeroVariable() };
      this.moments.set(name, moments);
    }
    return moments;
  }

  private disposeMoments(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
  }
}

function assertSameShape(name: string, expected: readonly number[], got: readonly number[], what: string): void {
  if (expected.length !== got.length || expected.some((d, i) => d !== got[i])) {
    throw new Error(`AdamW: ${what} of ${name} has shape [${got.join(', ')}], parameter has [${expected.join(', ')}]`);
  }
}
