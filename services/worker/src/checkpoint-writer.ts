/**
 * Rank 0's checkpoints and teacher snapshots (docs/cluster.md, step loop item 10 and "S3
 * layout"): the tensors of a {@link DinoState} as safetensors, named `student/<name>`,
 * `teacher/<name>`, `optim/m/<name>`, `optim/v/<name>`, `center`, `ibot_center`.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type * as tf from '@tensorflow/tfjs-core';
import { encodeSafetensors, writeCheckpoint } from '@dinofleet/data';
import type { DinoState } from '@dinofleet/dino';

/** A float32 tensor as `@dinofleet/data` writes it. */
export interface StateTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

async function toStateTensor(t: tf.Tensor): Promise<StateTensor> {
  // data() copies, so the result outlives the tensor.
  return { shape: [...t.shape], data: (await t.data()) as Float32Array };
}

/** The teacher's tensors, `teacher/<name>` (what a teacher snapshot holds). */
export async function teacherTensors(state: DinoState): Promise<Record<string, StateTensor>> {
  const out: Record<string, StateTensor> = {};
  for (const name of Object.keys(state.teacher).sort()) out[`teacher/${name}`] = await toStateTensor(state.teacher[name] as tf.Tensor);
  return out;
}

/** Every tensor of a checkpoint, and the optimiser's per-parameter step counts. */
export async function checkpointTensors(
  state: DinoState,
): Promise<{ tensors: Record<string, StateTensor>; optimizerSteps: Record<string, number> }> {
  const tensors: Record<string, StateTensor> = {};
  for (const name of Object.keys(state.student).sort()) tensors[`student/${name}`] = await toStateTensor(state.student[name] as tf.Tensor);
  Object.assign(tensors, await teacherTensors(state));
  const optim = state.optimizer.state();
  try {
    for (const name of Object.keys(optim.m).sort()) {
      tensors[`optim/m/${name}`] = await toStateTensor(optim.m[name] as tf.Tensor);
      tensors[`optim/v/${name}`] = await toStateTensor(optim.v[name] as tf.Tensor);
    }
  } finally {
    for (const t of [...Object.values(optim.m), ...Object.values(optim.v)]) t.dispose();
  }
  tensors.center = { shape: [state.center.length], data: state.center.slice() };
  if (state.ibotCenter !== null) tensors.ibot_center = { shape: [state.ibotCenter.length], data: state.ibotCenter.slice() };
  return { tensors, optimizerSteps: optim.paramSteps };
}

/** Encodes the teacher as a safetensors snapshot (for PutTeacherSnapshot). */
export async function encodeTeacherSnapshot(state: DinoState, jobId: string): Promise<Uint8Array> {
  // Snapshot tensors are named by parameter alone (docs/cluster.md, "teacher-sync"): a
  // snapshot is the teacher, loadable as a backbone + head without knowing checkpoint prefixes.
  const tensors: Record<string, StateTensor> = {};
  for (const name of Object.keys(state.teacher).sort()) tensors[name] = await toStateTensor(state.teacher[name] as tf.Tensor);
  return encodeSafetensors(tensors, { jobId, step: String(state.step) });
}

/** Where and for which job {@link saveCheckpoint} writes. */
export interface CheckpointTarget {
  /** Client for the checkpoint's endpoint. */
  readonly s3: S3Client;
  /** The spec's `checkpoint.uri`, `s3://bucket/prefix/`. */
  readonly uri: string;
  readonly jobId: string;
}

/**
 * Writes the checkpoint of `state` (after its `state.step` steps) and returns its prefix
 * URI, `<uri><jobId>/step-<8 digits>/`.
 */
export async function saveCheckpoint(target: CheckpointTarget, state: DinoState): Promise<string> {
  const { tensors, optimizerSteps } = await checkpointTensors(state);
  return writeCheckpoint(target.s3, target.uri, target.jobId, state.step, tensors, {
    seed: state.seed,
    recipe: state.recipe,
    optimizerSteps,
  });
}
