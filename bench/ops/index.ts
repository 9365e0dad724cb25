/**
 * `npm run bench -- ops [--images 16] [--blocks 4] [--reps 5]`: forward+backward of a
 * stack of pre-norm ViT blocks built from the layer primitives in `@dinofleet/dino`'s
 * `ops.ts`, on the wasm backend, against the plain-autodiff versions of the same
 * primitives (the baseline, kept below) and a 1024² matMul measured in the same run.
 *
 * Shapes are DINO's multi-crop at the default model config: per image 2 global crops
 * (T = 17: 16 patches of a 28×28 image at patch 7, plus CLS) and 6 local crops (T = 5),
 * D = 192, 3 heads of 64, MLP 768. Global and local crops go through the blocks as two
 * separate batches, as in the training step.
 *
 * Last stdout line: `{"block_gflops", "naive_block_gflops", "matmul_gflops", "ratio", ...}`.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initComputeBackend } from '@dinofleet/compute';
import { attention, gelu, layerNorm, linear } from '@dinofleet/dino';
import { log, median, report } from '../lib/report.ts';

const { values } = parseArgs({
  options: {
    images: { type: 'string', default: '16' },
    blocks: { type: 'string', default: '4' },
    reps: { type: 'string', default: '5' },
  },
});
const IMAGES = Number(values.images);
const BLOCKS = Number(values.blocks);
const REPS = Number(values.reps);
const DIM = 192;
const HEADS = 3;
const MLP_DIM = 4 * DIM;
/** [crops per image, tokens per crop]: global then local crops. */
const CROPS: ReadonlyArray<readonly [number, number]> = [
  [2, 17],
  [6, 5],
];

/** The primitives a block is built from, so the same block runs on either implementation. */
interface Primitives {
  linear: typeof linear;
  gelu: typeof gelu;
  layerNorm: typeof layerNorm;
  attention: typeof attention;
}

/** The original plain-autodiff primitives (tfjs's stock gradients): the baseline. */
const NAIVE: Primitives = {
  linear(x, w, b) {
    const y: tf.Tensor2D = tf.matMul(x, w);
    return b === undefined ? y : tf.add<tf.Tensor2D>(y, b);
  },
  gelu(x) {
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
  },
  layerNorm(x, gamma, beta, eps = 1e-6) {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), gamma), beta);
  },
  attention(qkv, batch, tokens, heads) {
    const dim = qkv.shape[1] / 3;
    const headDim = dim / heads;
    const split = tf.transpose(tf.reshape(qkv, [batch, tokens, 3, heads, headDim]), [2, 0, 3, 1, 4]);
    const [q, k, v] = tf.unstack(split, 0) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
    const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(headDim));
    const out = tf.matMul(tf.softmax(scores, -1), v);
    return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch * tokens, dim]);
  },
};
const TUNED: Primitives = { linear, gelu, layerNorm, attention };

/** Parameter order of one block, as passed to `tf.grads`. */
const BLOCK_PARAMS = [
  ['ln1g', [DIM]],
  ['ln1b', [DIM]],
  ['qkvW', [DIM, 3 * DIM]],
  ['qkvB', [3 * DIM]],
  ['projW', [DIM, DIM]],
  ['projB', [DIM]],
  ['ln2g', [DIM]],
  ['ln2b', [DIM]],
  ['fc1W', [DIM, MLP_DIM]],
  ['fc1B', [MLP_DIM]],
  ['fc2W', [MLP_DIM, DIM]],
  ['fc2B', [DIM]],
] as const;

/** One pre-norm ViT block: x + proj(attn(qkv(ln1 x))), then + fc2(gelu(fc1(ln2 x))). */
function block(ops: Primitives, x: tf.Tensor2D, p: readonly tf.Tensor[], batch: number, tokens: number): tf.Tensor2D {
  const [ln1g, ln1b, qkvW, qkvB, projW, projB, ln2g, ln2b, fc1W, fc1B, fc2W, fc2B] = p as [
    tf.Tensor1D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D,
    tf.Tensor1D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D, tf.Tensor1D,
  ];
  const qkv = ops.linear(ops.layerNorm(x, ln1g, ln1b), qkvW, qkvB);
  const h = tf.add<tf.Tensor2D>(x, ops.linear(ops.attention(qkv, batch, tokens, HEADS), projW, projB));
  const hidden = ops.gelu(ops.linear(ops.layerNorm(h, ln2g, ln2b), fc1W, fc1B));
  return tf.add<tf.Tensor2D>(h, ops.linear(hidden, fc2W, fc2B));
}

/**
 * FLOPs of one fwd+bwd of the block stack over all crops (elementwise work not counted):
 * linear 2·N·in·out forward, ×3 with backward (dx and dw) → 3·2·N·12·D² per block
 * (qkv 3D², proj D², fc1 4D², fc2 4D²); attention 4·B·H·T²·d forward (q·kᵀ and P·v),
 * ×3 with backward (dP, dV, dQ, dK).
 */
function stackFlops(): number {
  let flops = 0;
  for (const [crops, tokens] of CROPS) {
    const batch = IMAGES * crops;
    const rows = batch * tokens;
    flops += 3 * 2 * rows * 12 * DIM * DIM + 3 * 4 * batch * HEADS * tokens * tokens * (DIM / HEADS);
  }
  return flops * BLOCKS;
}

const backend = await initComputeBackend('wasm');
log(`backend ${backend.backend}, simd ${backend.simd}, threads ${backend.threads}`);
log(`${IMAGES} images × (2 global T=17 + 6 local T=5), ${BLOCKS} blocks, D ${DIM}, ${HEADS} heads, reps ${REPS}`);

const params: tf.Tensor[][] = Array.from({ length: BLOCKS }, () =>
  BLOCK_PARAMS.map(([name, shape]) =>
    name.endsWith('g') ? tf.ones([...shape]) : tf.randomNormal([...shape], 0, 0.02),
  ),
);
const inputs = CROPS.map(([crops, tokens]) => {
  const rows = IMAGES * crops * tokens;
  return { batch: IMAGES * crops, tokens, x: tf.randomNormal([rows, DIM]), r: tf.randomNormal([rows, DIM]) };
});

/** One training-like fwd+bwd: gradients of Σ r·blocks(x) w.r.t. x and every parameter. */
function step(ops: Primitives): void {
  tf.tidy(() => {
    for (const { batch, tokens, x, r } of inputs) {
      const loss = (...all: tf.Tensor[]): tf.Scalar => {
        let y = all[0] as tf.Tensor2D;
        for (let i = 0; i < BLOCKS; i++) {
          y = block(ops, y, all.slice(1 + i * BLOCK_PARAMS.length, 1 + (i + 1) * BLOCK_PARAMS.length), batch, tokens);
        }
        return tf.sum(tf.mul(y, r));
      };
      const grads = tf.grads(loss)([x, ...params.flat()]);
      // wasm kernels run synchronously; one scalar read closes the step.
      void tf.sum(grads[0] as tf.Tensor).dataSync()[0];
    }
  });
}

function timeMs(f: () => void, reps: number): number {
  f(); // warm-up: XNNPACK operator creation, wasm heap growth
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    f();
    times.push(performance.now() - t0);
  }
  return median(times);
}

/** Per-kernel time of one step, summed by kernel name, largest first. */
async function kernelBreakdown(ops: Primitives): Promise<Array<{ kernel: string; ms: number; calls: number }>> {
  const byName = new Map<string, { ms: number; calls: number }>();
  const info = await tf.profile(() => step(ops));
  for (const k of info.kernels) {
    // Wrappers (customGrad's 'forward', 'xxx__op') contain the kernels they call.
    if (k.name === 'forward' || k.name.endsWith('__op')) continue;
    // 2-D matMuls are XNNPACK's, batched (attention) ones the naive loop's.
    const name = k.name === 'BatchMatMul' ? `BatchMatMul ${k.inputShapes[0]?.length ?? 0}-D` : k.name;
    const entry = byName.get(name) ?? { ms: 0, calls: 0 };
    entry.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    entry.calls++;
    byName.set(name, entry);
  }
  return [...byName.entries()].map(([kernel, v]) => ({ kernel, ...v })).sort((a, b) => b.ms - a.ms);
}


const a = tf.randomNormal([1024, 1024]);
const b = tf.randomNormal([1024, 1024]);
const matmulMs = (): number => timeMs(() => tf.tidy(() => void tf.matMul(a, b).dataSync()[0]), REPS);
const flops = stackFlops();

// Interleave the measurements so that load from other processes hits all of them alike.
const matmulBefore = matmulMs();
const tunedMs = timeMs(() => step(TUNED), REPS);
const naiveMs = timeMs(() => step(NAIVE), Math.max(1, Math.ceil(REPS / 2)));
const matmulAfter = matmulMs();
const matmulGflops = (2 * 1024 ** 3) / (median([matmulBefore, matmulAfter]) * 1e6);
const blockGflops = flops / (tunedMs * 1e6);
const naiveGflops = flops / (naiveMs * 1e6);
log(`matMul 1024²: ${matmulGflops.toFixed(1)} GFLOP/s`);
log(`blocks fwd+bwd (${(flops / 1e9).toFixed(2)} GFLOP): tuned ${tunedMs.toFixed(0)} ms = ${blockGflops.toFixed(1)} GFLOP/s, naive ${naiveMs.toFixed(0)} ms = ${naiveGflops.toFixed(1)} GFLOP/s`);
log(`ratio to matMul: tuned ${(blockGflops / matmulGflops).toFixed(3)}, naive ${(naiveGflops / matmulGflops).toFixed(3)}; speed-up ×${(naiveMs / tunedMs).toFixed(2)}`);

const breakdown = await kernelBreakdown(TUNED);
const total = breakdown.reduce((s, k) => s + k.ms, 0);
log(`tuned step by kernel (tf.profile, ${total.toFixed(0)} ms in kernels):`);
for (const k of breakdown.slice(0, 14)) {
  log(`  ${k.kernel.padEnd(16)} ${k.ms.toFixed(1).padStart(8)} ms ${((100 * k.ms) / total).toFixed(1).padStart(5)} %  ${k.calls} calls`);
}

report({
  block_gflops: Number(blockGflops.toFixed(2)),
  naive_block_gflops: Number(naiveGflops.toFixed(2)),
  matmul_gflops: Number(matmulGflops.toFixed(2)),
  ratio: Number((blockGflops / matmulGflops).toFixed(3)),
  naive_ratio: Number((naiveGflops / matmulGflops).toFixed(3)),
  speedup: Number((naiveMs / tunedMs).toFixed(2)),
  block_ms: Number(tunedMs.toFixed(1)),
  naive_block_ms: Number(naiveMs.toFixed(1)),
  gflop: Number((flops / 1e9).toFixed(3)),
  images: IMAGES,
  blocks: BLOCKS,
  kernels_ms: Object.fromEntries(breakdown.slice(0, 10).map((k) => [k.kernel, Number(k.ms.toFixed(1))])),
});
