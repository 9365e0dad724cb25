import * as tf from '@tensorflow/tfjs-core';

/**
 * Weighted k-nearest-neighbour classification of frozen features, the protocol of DINO's
 * `eval_knn.py` (`knn_classifier`, after Wu et al. 2018): features are L2-normalised, the
 * k training features with the highest cosine similarity vote for their class with weight
 * `exp(similarity / T)`, and the class with the largest summed weight is the prediction.
 */

/** Options of {@link knnPredict} and {@link knnTop1Accuracy}. */
export interface KnnOptions {
  /** Neighbours that vote; clipped to the training-set size. DINO reports k = 20. @default 20 */
  readonly k?: number;
  /** Temperature T of the vote weights `exp(sim / T)`, > 0. @default 0.07 */
  readonly temperature?: number;
  /** Number of classes; labels lie in [0, numClasses). */
  readonly numClasses: number;
  /**
   * Test rows per similarity matMul; bounds the `[chunkSize, nTrain]` similarity block
   * (chunkSize · nTrain · 4 bytes, e.g. 61 MB for 256 × 60,000). @default 256
   */
  readonly chunkSize?: number;
}

function l2Normalize(x: tf.Tensor2D): tf.Tensor2D {
  // F.normalize(dim=1) with its eps, so that an all-zero row stays zero instead of NaN.
  return tf.div(x, tf.maximum(tf.norm(x, 'euclidean', 1, true), 1e-12));
}

/**
 * Predicted class of each test row.
 * @param trainFeatures `[nTrain, D]`, need not be normalised (they are L2-normalised here).
 * @param trainLabels `nTrain` labels in [0, numClasses).
 * @param testFeatures `[nTest, D]`.
 * @returns `nTest` predicted labels. Ties in the summed votes go to the lowest class index.
 */
export function knnPredict(
  trainFeatures: tf.Tensor2D,
  trainLabels: Int32Array,
  testFeatures: tf.Tensor2D,
  opts: KnnOptions,
): Int32Array {
  const [nTrain, dim] = trainFeatures.shape;
  const [nTest, testDim] = testFeatures.shape;
  const k = Math.min(opts.k ?? 20, nTrain);
  const temperature = opts.temperature ?? 0.07;
  const chunkSize = opts.chunkSize ?? 256;
  const { numClasses } = opts;
  if (nTrain === 0) throw new RangeError('knnPredict: the training set is empty');
  if (testDim !== dim) throw new RangeError(`knnPredict: test features have ${testDim} dims, train features ${dim}`);
  if (trainLabels.length !== nTrain) {
    throw new RangeError(`knnPredict: ${trainLabels.length} train labels for ${nTrain} train features`);
  }
  if (!(k >= 1)) throw new RangeError(`knnPredict: k must be ≥ 1, got ${opts.k}`);
  if (!(temperature > 0)) throw new RangeError(`knnPredict: temperature must be > 0, got ${temperature}`);
  if (!(chunkSize >= 1)) throw new RangeError(`knnPredict: chunkSize must be ≥ 1, got ${chunkSize}`);
  for (const label of trainLabels) {
    if (!(label >= 0 && label < numClasses)) throw new RangeError(`knnPredict: train label ${label} outside [0, ${numClasses})`);
  }

  const predictions = new Int32Array(nTest);
  // Transposed once, [D, nTrain], so every chunk is a plain (non-transposed) matMul.
  const trainT = tf.tidy(() => tf.transpose(l2Normalize(trainFeatures)));
  try {
    const votes = new Float64Array(numClasses);
    for (let start = 0; start < nTest; start += chunkSize) {
      const rows = Math.min(chunkSize, nTest - start);
      const [values, indices] = tf.tidy(() => {
        const chunk = l2Normalize(tf.slice(testFeatures, [start, 0], [rows, dim]));
        const { values, indices } = tf.topk(tf.matMul(chunk, trainT), k, true);
        return [values, indices];
      });
      const similarities = values.dataSync();
      const neighbours = indices.dataSync();
      values.dispose();
      indices.dispose();
      for (let r = 0; r < rows; r++) {
        votes.fill(0);
        // Sorted descending, so the first similarity is the largest; dividing every weight by
        // exp(max / T) keeps the argmax and avoids overflow at small temperatures.
        const top = similarities[r * k] as number;
        for (let j = 0; j < k; j++) {
          const label = trainLabels[neighbours[r * k + j] as number] as number;
          votes[label] = (votes[label] as number) + Math.exp(((similarities[r * k + j] as number) - top) / temperature);
        }
        let best = 0;
        for (let c = 1; c < numClasses; c++) if ((votes[c] as number) > (votes[best] as number)) best = c;
        predictions[start + r] = best;
      }
    }
  } finally {
    trainT.dispose();
  }
  return predictions;
}

/**
 * Top-1 accuracy in [0, 1] of {@link knnPredict} against `testLabels`, the number DINO
 * reports as "k-NN".
 */
export function knnTop1Accuracy(
  trainFeatures: tf.Tensor2D,
  trainLabels: Int32Array,
  testFeatures: tf.Tensor2D,
  testLabels: Int32Array,
  opts: KnnOptions,
): number {
  const nTest = testFeatures.shape[0];
  if (testLabels.length !== nTest) throw new RangeError(`knnTop1Accuracy: ${testLabels.length} test labels for ${nTest} test features`);
  if (nTest === 0) throw new RangeError('knnTop1Accuracy: the test set is empty');
  const predictions = knnPredict(trainFeatures, trainLabels, testFeatures, opts);
  let correct = 0;
  for (let i = 0; i < nTest; i++) if (predictions[i] === testLabels[i]) correct++;
  return correct / nTest;
}
