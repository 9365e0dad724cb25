/**
 * Rank 0's checkpoints and teacher snapshots (docs/cluster.md, step loop item 10 and "S3
 * layout", "Checkpoints (changes)"): the tensors of a {@link DinoState} as safetensors,
 * named `student/<name>`, `teacher/<name>`, `optim/m/<name>`, `optim/v/<name>`, `center`,
 * `ibot_center`, `gram/<name>`; and loading one back into a state.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type * as tf from '@tensorflow/tfjs-core';
import { encodeSafetensors, readCheckpoint, writeCheckpoint } from '@dinofleet/data';
import { dinoStateTensors, loadDinoStateTensors } from '@dinofleet/dino';
import type { DinoState } from '@dinofleet/dino';
import { DataLossError, InvalidArgumentError, NotFoundError } from '@dinofleet/proto';
import type { CheckpointFile } from '@dinofleet/proto';

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

/** Every tensor of a checkpoint (`gram/<name>` too once the Gram teacher exists), and the optimiser's step counts. */
export async function checkpointTensors(
  state: DinoState,
): Promise<{ tensors: Record<string, StateTensor>; optimizerSteps: Record<string, number>; optimizerStep: number }> {
  const { tensors, scalars } = await dinoStateTensors(state);
  return { tensors, optimizerSteps: { ...scalars.optimizerSteps }, optimizerStep: scalars.optimizerStep };
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

/** What {@link saveCheckpoint} wrote. */
export interface SavedCheckpoint {
  /** The step prefix, `<uri><jobId>/step-<8 digits>/`. */
  readonly uri: string;
  /** The objects written, for CommitStep.checkpoint_files (names relative to `uri`). */
  readonly files: CheckpointFile[];
}

/**
 * Writes `model.safetensors` and `state.json` of `state` (after its `state.step` steps)
 * under `<uri><jobId>/step-<8 digits>/`, but not `manifest.json` nor `latest.json`: the
 * coordinator completes the checkpoint once the step committed (docs/cluster.md,
 * "Checkpoints (changes)"). `stateHash` goes into `state.json`.
 */
export async function saveCheckpoint(target: CheckpointTarget, state: DinoState, stateHash: Uint8Array): Promise<SavedCheckpoint> {
  const { tensors, optimizerSteps, optimizerStep } = await checkpointTensors(state);
  const files: CheckpointFile[] = [];
  const uri = await writeCheckpoint(
    target.s3,
    target.uri,
    target.jobId,
    state.step,
    tensors,
    { seed: state.seed, recipe: state.recipe, optimizerSteps, optimizerStep, stateHash: Buffer.from(stateHash).toString('hex') },
    { commit: false, onFileWritten: (file) => files.push({ name: file.key, bytes: file.bytes, sha256: file.sha256 }) },
  );
  return { uri, files };
}

/** Where a `restore_checkpoint_uri` points: the spec's checkpoint URI, the job and the step. */
export interface CheckpointLocation {
  /** `s3://bucket/prefix/`, what `readCheckpoint` takes. */
  readonly prefixUri: string;
  readonly jobId: string;
  readonly step: number;
}

/**
 * Splits a checkpoint's step prefix, `s3://bucket/prefix/<jobId>/step-<8 digits>/`.
 * @throws InvalidArgumentError for anything else.
 */
export function parseCheckpointUri(uri: string): CheckpointLocation {
  const match = /^(s3:\/\/[^/]+\/(?:.*\/)?)([^/]+)\/step-(\d+)\/?$/s.exec(uri);
  if (match === null) throw new InvalidArgumentError(`checkpoint URI ${JSON.stringify(uri)} must look like s3://bucket/prefix/<jobId>/step-<8 digits>/`);
  return { prefixUri: match[1] as string, jobId: match[2] as string, step: Number(match[3]) };
}

/**
 * Reads the complete checkpoint at `uri` (a step prefix) into `state`, a fresh
 * `createDinoState` of the job's recipe. Returns the `stateHash` it recorded ("" when none).
 *
 * @throws NotFoundError when there is no complete checkpoint there; DataLossError when it
 *   does not fit the model; the S3 error when reading fails.
 */
export async function loadCheckpointInto(s3: S3Client, uri: string, jobId: string, state: DinoState): Promise<{ step: number; stateHash: string }> {
  const location = parseCheckpointUri(uri);
  if (location.jobId !== jobId) throw new InvalidArgumentError(`checkpoint ${uri} belongs to job ${location.jobId}, not ${jobId}`);
  const loaded = await readCheckpoint(s3, location.prefixUri, jobId, location.step);
  if (loaded === null) throw new NotFoundError(`no complete checkpoint at ${uri} (it has no manifest.json)`);
  const json = loaded.state;
  const optimizerSteps = (json.optimizerSteps ?? {}) as Record<string, number>;
  // Checkpoints written before issue 4 lack the global count; it only feeds AdamW.stepCount.
  const optimizerStep = typeof json.optimizerStep === 'number' ? json.optimizerStep : Math.max(0, ...Object.values(optimizerSteps));
  try {
    loadDinoStateTensors(state, loaded.tensors, { step: loaded.step, optimizerStep, optimizerSteps });
  } catch (err) {
    throw new DataLossError(`checkpoint ${uri} does not fit the model: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return { step: loaded.step, stateHash: typeof json.stateHash === 'string' ? json.stateHash : '' };
}
