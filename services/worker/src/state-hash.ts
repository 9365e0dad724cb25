/**
 * The state hash every rank reports with a step (docs/cluster.md, step loop item 9). Equal
 * hashes on every rank of a generation are the coordinator's proof that the ranks are in
 * lock-step, so every value that the next step depends on goes in, in a fixed order.
 */
import { createHash } from 'node:crypto';
import type * as tf from '@tensorflow/tfjs-core';
import type { DinoState } from '@dinofleet/dino';

/** Length of a state hash, in bytes (SHA-256). */
export const STATE_HASH_BYTES = 32;

function u64(value: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(BigInt(value));
  return out;
}

function float32Bytes(values: Float32Array): Buffer {
  // Float32Array uses the host's byte order; @dinofleet/collective already refuses
  // big-endian hosts, so these bytes are little-endian.
  return Buffer.from(values.buffer, values.byteOffset, values.byteLength);
}

async function tensorBytes(t: tf.Tensor): Promise<Buffer> {
  return float32Bytes((await t.data()) as Float32Array);
}

/**
 * SHA-256 over, in order: `state.step` (u64 LE); then for each parameter name in sorted
 * order the student values, the teacher values, the AdamW first and second moments
 * (float32 LE; absent for parameters that never got a gradient, e.g. `weight_g`) and the
 * parameter's AdamW step count (u64 LE, 0 without moments); then `center` and, when the
 * recipe has one, `ibotCenter` (float32 LE).
 */
export async function stateHash(state: DinoState): Promise<Buffer> {
  const hash = createHash('sha256');
  hash.update(u64(state.step));
  const optim = state.optimizer.state();
  try {
    for (const name of Object.keys(state.student).sort()) {
      const student = state.student[name];
      const teacher = state.teacher[name];
      if (student === undefined || teacher === undefined) throw new Error(`stateHash: teacher has no parameter ${name}`);
      hash.update(await tensorBytes(student));
      hash.update(await tensorBytes(teacher));
      const m = optim.m[name];
      const v = optim.v[name];
      if (m !== undefined && v !== undefined) {
        hash.update(await tensorBytes(m));
        hash.update(await tensorBytes(v));
      }
      hash.update(u64(optim.paramSteps[name] ?? 0));
    }
  } finally {
    for (const t of [...Object.values(optim.m), ...Object.values(optim.v)]) t.dispose();
  }
  hash.update(float32Bytes(state.center));
  if (state.ibotCenter !== null) hash.update(float32Bytes(state.ibotCenter));
  return hash.digest();
}
