import * as tf from '@tensorflow/tfjs-core';

/**
 * The layer primitives the model is built from. Model code calls only these for its
 * dense algebra, so that their implementations (and custom gradients) can be tuned for a
 * backend without touching the model.
 *
 * Layouts: activations are 2-D `[rows, features]` with rows = batch × tokens; weights are
 * stored input-major `[in, out]` so the forward matMul needs no transpose (PyTorch stores
 * `[out, in]`; checkpoint export transposes).
 *
 * Why custom gradients (tuned for tfjs-backend-wasm 4.22, correct on every backend, only
 * public tfjs-core ops):
 * - The wasm backend sends a matMul to XNNPACK (~30 GFLOP/s) only when both operands are
 *   2-D and neither is transposed (`batch_mat_mul_impl.cc`); tfjs's stock MatMul gradient
 *   uses transposeA/transposeB, which fall to a naive loop (~2.5 GFLOP/s). The backward
 *   passes below transpose explicitly (`tf.transpose`, ~10 ns/element) and then call
 *   plain 2-D matMuls.
 * - Reductions over axis 0 (bias and LayerNorm-affine gradients) transpose first on wasm;
 *   a `ones[1, N] · dy` matMul does the same column sum on XNNPACK.
 * - Elementwise kernels vary 50× in cost on wasm: add/sub/mul/square/sigmoid/softmax run
 *   in XNNPACK (~0.2 ns/element), erf/exp/tanh/sqrt/transpose are scalar loops (8–20 ns),
 *   so the closed-form gradients are written with the fast ones and as few of the slow
 *   ones as the maths allows.
 * Every `gradFunc` runs inside `tf.tidy` so its intermediates are freed at once instead of
 * at the end of the whole backward pass.
 */

/** tfjs-core does not export `CustomGradientFunc`; the typed closures below are cast to it. */
type CustomGradientFunc = Parameters<typeof tf.customGrad>[0];

/** Column sums of a 2-D tensor, `[N, C] -> [C]`, as a matMul (see the module comment). */
function columnSum(m: tf.Tensor2D): tf.Tensor1D {
  const ones = tf.ones<tf.Rank.R2>([1, m.shape[0]]);
  return tf.reshape(tf.matMul(ones, m), [m.shape[1]]);
}

/** `dy · wᵀ` and `xᵀ · dy` with explicit transposes, so both matMuls stay on XNNPACK. */
function linearBackward(dy: tf.Tensor2D, x: tf.Tensor2D, w: tf.Tensor2D): [tf.Tensor2D, tf.Tensor2D] {
  const dx: tf.Tensor2D = tf.matMul(dy, tf.transpose(w));
  // Transposing costs per element: transpose the narrower of x [N, in] and dy [N, out]
  // (dwᵀ = dyᵀ · x, then transpose the small [out, in] result back).
  const [inDim, outDim] = w.shape;
  const dw: tf.Tensor2D =
    inDim <= outDim ? tf.matMul(tf.transpose(x), dy) : tf.transpose(tf.matMul<tf.Tensor2D>(tf.transpose(dy), x));
  return [dx, dw];
}

const linearNoBias = tf.customGrad(((x: tf.Tensor2D, w: tf.Tensor2D, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    value: tf.matMul(x, w),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) =>
      tf.tidy(() => linearBackward(dy, saved[0] as tf.Tensor2D, saved[1] as tf.Tensor2D)),
  };
}) as unknown as CustomGradientFunc);

const linearBias = tf.customGrad(((x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    // The fused bias rides along in the XNNPACK fully-connected operator for free.
    value: tf.fused.matMul({ a: x, b: w, bias: b }),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) =>
      tf.tidy(() => [...linearBackward(dy, saved[0] as tf.Tensor2D, saved[1] as tf.Tensor2D), columnSum(dy)]),
  };
}) as unknown as CustomGradientFunc);

/**
 * `x @ w + b` for x `[N, in]`, w `[in, out]`, b `[out]`.
 * Gradients: dx = dy·wᵀ, dw = xᵀ·dy, db = Σ_rows dy, each a non-transposed 2-D matMul.
 */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  return (b === undefined ? linearNoBias(x, w) : linearBias(x, w, b)) as tf.Tensor2D;
}

/** 1/√(2π), the standard normal density's constant. */
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

const geluCustom = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
  // Φ(x) = ½(1 + erf(x/√2)); erf is one of the slow scalar kernels, so it runs once.
  const cdf = tf.tidy(() => tf.add(tf.mul(tf.erf(tf.mul(x, Math.SQRT1_2)), 0.5), 0.5));
  save([x, cdf]);
  return {
    value: tf.mul(x, cdf),
    // d/dx x·Φ(x) = Φ(x) + x·φ(x), φ(x) = exp(−x²/2)/√(2π): one exp, the rest XNNPACK.
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [xs, cdfs] = saved as [tf.Tensor, tf.Tensor];
        const density = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), INV_SQRT_2PI);
        return tf.mul(dy, tf.add(cdfs, tf.mul(xs, density)));
      }),
  };
}) as unknown as CustomGradientFunc);

/** Exact GELU, `0.5 x (1 + erf(x / √2))` (Hendrycks & Gimpel), as in the reference ViT. */
export function gelu<T extends tf.Tensor>(x: T): T {
  return geluCustom(x) as T;
}

function layerNormCustom(eps: number) {
  return tf.customGrad(((x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, save: tf.GradSaveFunc) => {
    const [xhat, rstd] = tf.tidy(() => {
      const centred = tf.sub(x, tf.mean(x, -1, true));
      const r = tf.rsqrt(tf.add(tf.mean(tf.square(centred), -1, true), eps));
      return [tf.mul(centred, r), r];
    }) as [tf.Tensor2D, tf.Tensor2D];
    save([xhat, rstd, gamma]);
    return {
      value: tf.add(tf.mul(xhat, gamma), beta),
      // The standard closed form (e.g. the PyTorch/Apex LayerNorm backward), with
      // g = dy·γ: dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)), dγ = Σ_rows dy·x̂, dβ = Σ_rows dy.
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [xh, r, g] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
          const dxhat = tf.mul(dy, g);
          const meanG = tf.mul(tf.mean(dxhat, -1, true), r);
          const meanGX = tf.mul(tf.mean(tf.mul(dxhat, xh), -1, true), r);
          const dx = tf.sub(tf.mul(dxhat, r), tf.add(tf.mul(xh, meanGX), meanG));
          return [dx, columnSum(tf.mul(dy, xh)), columnSum(dy)];
        }),
    };
  }) as unknown as CustomGradientFunc);
}

/** LayerNorm over the last axis of `[N, D]` with affine `gamma`, `beta` `[D]`. */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps = 1e-6): tf.Tensor2D {
  return layerNormCustom(eps)(x, gamma, beta) as tf.Tensor2D;
}

/**
 * Attention keeps the heads in the batch dimension: each of q, k, v `[N, H·d]` is viewed as
 * `[N, H, d]` and transposed to `[H, N, d]` (a transpose that keeps the innermost d-run
 * whole is ~30× cheaper per element on wasm than a general one), i.e. `[H·B, T, d]`.
 * q, k and v arrive as separate tensors: splitting a fused `[N, 3D]` activation costs
 * SplitV/Slice at ~8 ns per element on wasm (15-20 % of a training step), while the
 * model slices only the small fused weight. Batched matMuls never reach XNNPACK (a naive
 * loop, transposed operands cost the same there), so the backward uses transposed flags
 * freely and one batched matMul covers all heads.
 */
function attentionCustom(batch: number, tokens: number, heads: number) {
  return tf.customGrad(((q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, save: tf.GradSaveFunc) => {
    const rows = q.shape[0];
    const dim = q.shape[1];
    const headDim = dim / heads;
    const scale = 1 / Math.sqrt(headDim);
    const toHeads = (x: tf.Tensor2D): tf.Tensor3D =>
      tf.reshape<tf.Rank.R3>(tf.transpose(tf.reshape(x, [rows, heads, headDim]), [1, 0, 2]), [heads * batch, tokens, headDim]);
    const [qh, kh, vh, probs, value] = tf.tidy(() => {
      const [qs, ks, vs] = [toHeads(q), toHeads(k), toHeads(v)];
      const p = tf.softmax(tf.mul<tf.Tensor3D>(tf.matMul(qs, ks, false, true), scale), -1);
      const out = tf.transpose(tf.reshape(tf.matMul(p, vs), [heads, rows, headDim]), [1, 0, 2]);
      return [qs, ks, vs, p, tf.reshape<tf.Rank.R2>(out, [rows, dim])];
    }) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor2D];
    save([qh, kh, vh, probs]);
    // save() keeps clones; these handles are no longer needed.
    tf.dispose([qh, kh, vh, probs]);
    const fromHeads = (x: tf.Tensor3D): tf.Tensor2D =>
      tf.reshape<tf.Rank.R2>(tf.transpose(tf.reshape(x, [heads, rows, headDim]), [1, 0, 2]), [rows, dim]);
    return {
      value,
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [qs, ks, vs, ps] = saved as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
          const dOut = toHeads(dy);
          const dv: tf.Tensor3D = tf.matMul(ps, dOut, true, false);
          const dProbs = tf.matMul(dOut, vs, false, true);
          // Softmax backward: dS = P ⊙ (dP − Σ_j P·dP), times the 1/√d of the forward.
          const dScores = tf.mul<tf.Tensor3D>(tf.mul(ps, tf.sub(dProbs, tf.sum(tf.mul(ps, dProbs), -1, true))), scale);
          const dq: tf.Tensor3D = tf.matMul(dScores, ks);
          const dk: tf.Tensor3D = tf.matMul(dScores, qs, true, false);
          return [fromHeads(dq), fromHeads(dk), fromHeads(dv)];
        }),
    };
  }) as unknown as CustomGradientFunc);
}

/**
 * Multi-head scaled dot-product self-attention from separate projections, `softmax(q kᵀ /
 * √d) v` per head. The fast path: no activation is split.
 * @param q `[batch × tokens, dim]`, head h in columns `h·headDim ..`; `k`, `v` likewise.
 * @returns `[batch × tokens, dim]`, heads concatenated, ready for the output projection.
 */
export function multiHeadAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  batch: number,
  tokens: number,
  heads: number,
): tf.Tensor2D {
  const [rows, dim] = q.shape;
  if (rows !== batch * tokens || dim % heads !== 0 || k.shape.join() !== q.shape.join() || v.shape.join() !== q.shape.join()) {
    throw new Error(
      `attention: q [${q.shape.join(', ')}], k [${k.shape.join(', ')}], v [${v.shape.join(', ')}] do not fit ` +
        `batch ${batch} × tokens ${tokens} rows of heads ${heads} × headDim`,
    );
  }
  return attentionCustom(batch, tokens, heads)(q, k, v) as tf.Tensor2D;
}

/**
 * Multi-head scaled dot-product self-attention, `softmax(q kᵀ / √d) v` per head.
 * @param qkv `[batch × tokens, 3 × dim]`, the fused q, k, v projections in that order,
 *   each `[heads × headDim]` with head h in columns `h·headDim ..`.
 * @returns `[batch × tokens, dim]`, heads concatenated, ready for the output projection.
 */
export function attention(qkv: tf.Tensor2D, batch: number, tokens: number, heads: number): tf.Tensor2D {
  if (qkv.shape[0] !== batch * tokens || qkv.shape[1] % (3 * heads) !== 0) {
    throw new Error(
      `attention: qkv shape [${qkv.shape.join(', ')}] does not fit batch ${batch} × tokens ${tokens}, ` +
        `3 × heads ${heads} × headDim`,
    );
  }
  // Splitting the activation costs a copy; the model's fast path is multiHeadAttention.
  const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
  return multiHeadAttention(q, k, v, batch, tokens, heads);
}

/**
 * Rows `indices` of `x` `[N, D]` -> `[M, D]` (iBOT's masked patches). tfjs's Gather
 * gradient needs the UnsortedSegmentSum kernel, which tfjs-backend-wasm does not have;
 * this backward scatters with ScatterNd instead (every backend has it). Indices must be
 * distinct, as masked-patch indices are.
 */
export function gatherRows(x: tf.Tensor2D, indices: tf.Tensor1D): tf.Tensor2D {
  const gather = tf.customGrad(((xs: tf.Tensor2D, save: tf.GradSaveFunc) => {
    save([indices]);
    return {
      value: tf.gather(xs, indices),
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) =>
        tf.tidy(() => tf.scatterND(tf.reshape(saved[0] as tf.Tensor1D, [-1, 1]), dy, xs.shape)),
    };
  }) as unknown as CustomGradientFunc);
  return gather(x) as tf.Tensor2D;
}
