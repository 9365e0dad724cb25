import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { knnPredict, knnTop1Accuracy } from './knn.ts';
import { Rng } from './rng.ts';
import { useTestBackend } from './testing/backend.ts';

/** Plain-JS reference of eval_knn.py's vote, in float64. */
function referencePredict(train: number[][], trainLabels: Int32Array, test: number[][], k: number, t: number, numClasses: number): number[] {
  const unit = (v: number[]): number[] => {
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  const trainUnit = train.map(unit);
  return test.map((q) => {
    const qu = unit(q);
    const sims = trainUnit.map((v, i) => ({ sim: v.reduce((s, x, d) => s + x * (qu[d] as number), 0), i }));
    sims.sort((a, b) => b.sim - a.sim);
    const votes = new Array<number>(numClasses).fill(0);
    for (const { sim, i } of sims.slice(0, k)) votes[trainLabels[i] as number]! += Math.exp(sim / t);
    return votes.indexOf(Math.max(...votes));
  });
}

describe('weighted k-NN (eval_knn.py)', () => {
  beforeAll(() => useTestBackend());

  it('classifies two well-separated clusters perfectly', () => {
    const rng = new Rng(1);
    const point = (cx: number, cy: number): number[] => [cx + 0.1 * rng.normal(), cy + 0.1 * rng.normal(), 0.05 * rng.normal()];
    const train = [...Array.from({ length: 30 }, () => point(3, 0)), ...Array.from({ length: 30 }, () => point(0, 3))];
    const trainLabels = Int32Array.from({ length: 60 }, (_, i) => (i < 30 ? 0 : 1));
    const test = [...Array.from({ length: 10 }, () => point(1, 0)), ...Array.from({ length: 10 }, () => point(0, 5))];
    const testLabels = Int32Array.from({ length: 20 }, (_, i) => (i < 10 ? 0 : 1));
    const accuracy = tf.tidy(() =>
      knnTop1Accuracy(tf.tensor2d(train), trainLabels, tf.tensor2d(test), testLabels, { numClasses: 2, k: 5 }),
    );
    expect(accuracy).toBe(1);
  });

  it('weights votes by exp(sim / T): one close neighbour beats two farther ones below T = 0.1 / ln 2', () => {
    // Query (1, 0). Class 0: A at cosine 1, and D at cosine −1. Class 1: B and C at cosine 0.9.
    // With k = 3 the neighbours are A, B, C: class 0 gets e^{1/T}, class 1 gets 2 e^{0.9/T};
    // class 0 wins iff e^{0.1/T} > 2, i.e. T < 0.1 / ln 2 ≈ 0.144. A plain majority would say 1.
    const s = Math.sqrt(1 - 0.81);
    // Scaled rows: normalisation must make the lengths irrelevant.
    const train = tf.tensor2d([[2, 0], [0.9 * 5, s * 5], [0.9 * 0.5, -s * 0.5], [-3, 0]]);
    const labels = Int32Array.from([0, 1, 1, 0]);
    const query = tf.tensor2d([[4, 0]]);
    const predict = (temperature: number, k = 3): number => knnPredict(train, labels, query, { numClasses: 2, k, temperature })[0] as number;
    expect(predict(0.07)).toBe(0);
    expect(predict(0.1)).toBe(0);
    expect(predict(0.14)).toBe(0);
    expect(predict(0.15)).toBe(1);
    expect(predict(0.5)).toBe(1);
    // k = 4 adds D's vote e^{−1/T}: at T = 0.15 class 0 gets e^{6.67} + e^{−6.67} = 785.2 + 0.0013,
    // class 1 gets 2 e^{6} = 806.9, so class 1 still wins.
    expect(predict(0.15, 4)).toBe(1);
    train.dispose();
    query.dispose();
  });

  it('handles k larger than the training set as k = nTrain', () => {
    const train = tf.tensor2d([[1, 0], [0.8, 0.6], [0, 1]]);
    const labels = Int32Array.from([0, 1, 1]);
    const test = tf.tensor2d([[1, 0.1], [0.2, 1]]);
    const big = knnPredict(train, labels, test, { numClasses: 2, k: 50, temperature: 0.5 });
    const exact = knnPredict(train, labels, test, { numClasses: 2, k: 3, temperature: 0.5 });
    expect(Array.from(big)).toEqual(Array.from(exact));
    // Hand check of query 0 at T = 0.5: sims ≈ 0.995, 0.856, 0.0995 → class 0: e^{1.990} = 7.32;
    // class 1: e^{1.712} + e^{0.199} = 5.54 + 1.22 = 6.76 → class 0.
    expect(Array.from(big)).toEqual([0, 1]);
    tf.dispose([train, test]);
  });

  it('matches a float64 reference for any chunk size, and leaks no tensors', () => {
    const rng = new Rng(5);
    const nTrain = 200;
    const nTest = 37;
    const dim = 16;
    const numClasses = 4;
    // Class means plus noise, so the problem is neither trivial nor random.
    const means = Array.from({ length: numClasses }, () => Array.from({ length: dim }, () => rng.normal()));
    const sample = (c: number): number[] => (means[c] as number[]).map((m) => m + 1.2 * rng.normal());
    const trainLabels = Int32Array.from({ length: nTrain }, () => rng.int(numClasses));
    const testLabels = Int32Array.from({ length: nTest }, () => rng.int(numClasses));
    const trainRows = Array.from(trainLabels, sample);
    const testRows = Array.from(testLabels, sample);
    const expected = referencePredict(trainRows, trainLabels, testRows, 20, 0.07, numClasses);
    const train = tf.tensor2d(trainRows);
    const test = tf.tensor2d(testRows);
    const before = tf.memory().numTensors;
    for (const chunkSize of [1, 5, 16, 256]) {
      const predicted = knnPredict(train, trainLabels, test, { numClasses, chunkSize });
      expect(Array.from(predicted)).toEqual(expected);
    }
    const accuracy = knnTop1Accuracy(train, trainLabels, test, testLabels, { numClasses, chunkSize: 8 });
    const expectedAccuracy = expected.filter((p, i) => p === testLabels[i]).length / nTest;
    expect(accuracy).toBeCloseTo(expectedAccuracy, 10);
    expect(accuracy).toBeGreaterThan(0.5);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([train, test]);
  });

  it('breaks exact ties towards the lowest class and rejects bad input', () => {
    const train = tf.tensor2d([[1, 0], [1, 0]]);
    const query = tf.tensor2d([[1, 0]]);
    expect(Array.from(knnPredict(train, Int32Array.from([1, 0]), query, { numClasses: 2 }))).toEqual([0]);
    expect(() => knnPredict(train, Int32Array.from([0]), query, { numClasses: 2 })).toThrow(RangeError);
    expect(() => knnPredict(train, Int32Array.from([0, 2]), query, { numClasses: 2 })).toThrow(RangeError);
    expect(() => knnPredict(train, Int32Array.from([0, 1]), query, { numClasses: 2, temperature: 0 })).toThrow(RangeError);
    expect(() => knnTop1Accuracy(train, Int32Array.from([0, 1]), query, Int32Array.from([0, 1]), { numClasses: 2 })).toThrow(RangeError);
    tf.dispose([train, query]);
  });
});
