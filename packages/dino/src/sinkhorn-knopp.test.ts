import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Rng } from './rng.ts';
import { identityReduce, sinkhornKnoppTargets, type ReduceSum } from './sinkhorn-knopp.ts';
import { useTestBackend } from './testing/backend.ts';

function randn(rows: number, cols: number, seed: number, scale = 1): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: rows }, () => Array.from({ length: cols }, () => rng.normal() * scale));
}

/** dinov2's SinkhornKnoppTeacher transcribed literally, in double precision. Rows = samples. */
function dinov2Reference(logits: number[][], temp: number, iterations: number): number[][] {
  const bCount = logits.length, kCount = logits[0]!.length;
  const q = Array.from({ length: kCount }, (_, k) => logits.map((row) => Math.exp(row[k]! / temp)));
  const total = q.flat().reduce((a, b) => a + b, 0);
  q.forEach((row) => row.forEach((_, b) => (row[b]! /= total)));
  for (let it = 0; it < iterations; it++) {
    for (const row of q) {
      const s = row.reduce((a, b) => a + b, 0);
      row.forEach((_, b) => (row[b] = row[b]! / s / kCount));
    }
    for (let b = 0; b < bCount; b++) {
      const s = q.reduce((acc, row) => acc + row[b]!, 0);
      q.forEach((row) => (row[b] = row[b]! / s / bCount));
    }
  }
  return logits.map((_, b) => q.map((row) => row[b]! * bCount));
}

function logSumExp(values: number[]): number {
  const m = Math.max(...values);
  return m + Math.log(values.reduce((acc, v) => acc + Math.exp(v - m), 0));
}

/** The same algorithm in the log domain, double precision: valid for any logit magnitude. */
function logDomainReference(logits: number[][], temp: number, iterations: number): number[][] {
  const bCount = logits.length, kCount = logits[0]!.length;
  const l = logits.map((row) => row.map((v) => v / temp));
  for (let it = 0; it < iterations; it++) {
    for (let k = 0; k < kCount; k++) {
      const s = logSumExp(l.map((row) => row[k]!)) + Math.log(kCount);
      l.forEach((row) => (row[k] = row[k]! - s));
    }
    l.forEach((row) => {
      const s = logSumExp(row) + Math.log(bCount);
      row.forEach((_, k) => (row[k] = row[k]! - s));
    });
  }
  return l.map((row) => row.map((v) => Math.exp(v + Math.log(bCount))));
}

/** n simulated ranks: each rank's reduceSum resolves once all n have contributed that call. */
function simulatedRanks(n: number): ReduceSum[] {
  const rounds: { parts: Float32Array[]; shape: number[]; waiters: ((t: tf.Tensor) => void)[] }[] = [];
  return Array.from({ length: n }, () => {
    let call = 0;
    return (local: tf.Tensor) =>
      new Promise<tf.Tensor>((resolve) => {
        const round = (rounds[call] ??= { parts: [], shape: local.shape, waiters: [] });
        call++;
        round.parts.push(local.dataSync() as Float32Array);
        round.waiters.push(resolve);
        if (round.parts.length < n) return;
        const sum = new Float32Array(round.parts[0]!.length);
        for (const part of round.parts) part.forEach((v, i) => (sum[i] = sum[i]! + v));
        for (const wake of round.waiters) wake(tf.tensor(sum, round.shape));
      });
  });
}

function expectClose(got: number[][], expected: number[][], digits: number): void {
  expect(got.length).toBe(expected.length);
  got.forEach((row, b) => row.forEach((v, k) => expect(v).toBeCloseTo(expected[b]![k]!, digits)));
}

async function targets(logits: number[][], teacherTemp: number, iterations: number): Promise<number[][]> {
  const out = await sinkhornKnoppTargets(tf.tensor2d(logits), {
    teacherTemp,
    iterations,
    reduceSum: identityReduce,
    globalBatch: logits.length,
  });
  return out.arraySync();
}

describe('sinkhornKnoppTargets', () => {
  beforeAll(() => useTestBackend());

  it('matches dinov2 transcribed literally (double precision) for moderate logits', async () => {
    const logits = randn(6, 5, 1, 0.1);
    for (const iterations of [0, 1, 3]) {
      expectClose(await targets(logits, 0.07, iterations), dinov2Reference(logits, 0.07, iterations), 5);
    }
    expectClose(dinov2Reference(logits, 0.07, 3), logDomainReference(logits, 0.07, 3), 10);
  });

  it('gives each sample targets summing to 1 and each prototype ≈ B/K, exactly in the limit', async () => {
    const batch = 8, k = 4;
    const logits = randn(batch, k, 2, 0.2);
    // Largest relative deviation of a prototype's total from B/K.
    const imbalance = (q: number[][]): number =>
      Math.max(
        ...Array.from({ length: k }, (_, j) => Math.abs(q.reduce((acc, row) => acc + row[j]!, 0) / (batch / k) - 1)),
      );
    const before = await targets(logits, 0.1, 0);
    const after1 = await targets(logits, 0.1, 1);
    const after3 = await targets(logits, 0.1, 3);
    const after50 = await targets(logits, 0.1, 50);
    for (const q of [after1, after3, after50]) {
      q.forEach((row) => expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5));
    }
    // dinov2's last step normalises samples, so prototype totals are B/K only in the limit;
    // each round brings them closer.
    expect(imbalance(after1)).toBeLessThan(imbalance(before));
    expect(imbalance(after3)).toBeLessThan(imbalance(after1));
    expect(imbalance(after50)).toBeLessThan(1e-4);
  });

  it('stays finite and exact for logits of magnitude 50 at τ = 0.04 (|t/τ| ~ 1250)', async () => {
    const logits = randn(6, 5, 3, 50);
    const got = await targets(logits, 0.04, 3);
    expect(got.flat().every(Number.isFinite)).toBe(true);
    got.forEach((row) => expect(row.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5));
    expectClose(got, logDomainReference(logits, 0.04, 3), 4);
  });

  it('is invariant to a per-prototype offset (what the stabiliser relies on)', async () => {
    const logits = randn(5, 4, 4, 0.3);
    const offsets = [3, -2, 0.5, 1];
    const shifted = logits.map((row) => row.map((v, k) => v + offsets[k]!));
    expectClose(await targets(shifted, 0.1, 3), await targets(logits, 0.1, 3), 4);
  });

  it('two ranks with summing all-reduces give the one-rank targets', async () => {
    const logits = randn(7, 5, 5, 0.5);
    const single = await targets(logits, 0.07, 3);
    const [rankA, rankB] = simulatedRanks(2) as [ReduceSum, ReduceSum];
    const opts = { teacherTemp: 0.07, iterations: 3, globalBatch: 7 };
    const [a, b] = await Promise.all([
      sinkhornKnoppTargets(tf.tensor2d(logits.slice(0, 3)), { ...opts, reduceSum: rankA }),
      sinkhornKnoppTargets(tf.tensor2d(logits.slice(3)), { ...opts, reduceSum: rankB }),
    ]);
    expectClose([...a.arraySync(), ...b.arraySync()], single, 5);
  });

  it('two ranks whose maxima differ by ~2000 (the refinement path) match the exact result', async () => {
    // Prototype 0 is hot on rank A's samples and cold on rank B's: t/τ = ±1000.
    const logits = randn(6, 4, 6, 1).map((row, b) => row.map((v, k) => (k === 0 ? (b < 3 ? 40 : -40) : v)));
    const [rankA, rankB] = simulatedRanks(2) as [ReduceSum, ReduceSum];
    const opts = { teacherTemp: 0.04, iterations: 3, globalBatch: 6 };
    const [a, b] = await Promise.all([
      sinkhornKnoppTargets(tf.tensor2d(logits.slice(0, 3)), { ...opts, reduceSum: rankA }),
      sinkhornKnoppTargets(tf.tensor2d(logits.slice(3)), { ...opts, reduceSum: rankB }),
    ]);
    const got = [...a.arraySync(), ...b.arraySync()];
    expect(got.flat().every(Number.isFinite)).toBe(true);
    expectClose(got, logDomainReference(logits, 0.04, 3), 4);
  });

  it('a rank with no rows still takes part in every all-reduce', async () => {
    const logits = randn(4, 3, 7, 0.5);
    const [rankA, rankB] = simulatedRanks(2) as [ReduceSum, ReduceSum];
    const opts = { teacherTemp: 0.1, iterations: 3, globalBatch: 4 };
    const [a, empty] = await Promise.all([
      sinkhornKnoppTargets(tf.tensor2d(logits), { ...opts, reduceSum: rankA }),
      sinkhornKnoppTargets(tf.tensor2d([], [0, 3]), { ...opts, reduceSum: rankB }),
    ]);
    expect(empty.shape).toEqual([0, 3]);
    expectClose(a.arraySync(), await targets(logits, 0.1, 3), 5);
  });

  it('does not leak tensors', async () => {
    const input = tf.tensor2d(randn(4, 3, 8));
    const before = tf.memory().numTensors;
    const out = await sinkhornKnoppTargets(input, { teacherTemp: 0.1, iterations: 3, reduceSum: identityReduce, globalBatch: 4 });
    expect(tf.memory().numTensors).toBe(before + 1);
    out.dispose();
  });
});
