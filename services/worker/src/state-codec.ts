/**
 * The byte encoding of a whole training state, "dinofleet-state-v1" (docs/cluster.md,
 * "Elasticity and failures", worker item 2): what StateTransfer streams to a joining rank.
 * A safetensors file (`encodeSafetensors` of `@dinofleet/data`) of the tensors
 * `dinoStateTensors` (`@dinofleet/dino`) names, with the scalars in `__metadata__`. It
 * round-trips the state bit for bit, so `stateHash` is equal after decoding.
 */
import { DataLossError } from '@dinofleet/proto';
import { SafetensorsError, decodeSafetensors, encodeSafetensors } from '@dinofleet/data';
import { dinoStateTensors, loadDinoStateTensors } from '@dinofleet/dino';
import type { DinoState, DinoStateScalars } from '@dinofleet/dino';

/** The encoding's name, in its metadata and in StateHeader.format. */
export const DINO_STATE_FORMAT = 'dinofleet-state-v1';

/** What the metadata of an encoded state says besides the tensors. */
export interface EncodedStateInfo extends DinoStateScalars {
  readonly jobId: string;
}

/** Encodes every tensor and scalar of `state` (deterministic: tensors in sorted name order). */
export async function encodeDinoState(state: DinoState, jobId: string): Promise<Uint8Array> {
  const { tensors, scalars } = await dinoStateTensors(state);
  return encodeSafetensors(tensors, {
    format: DINO_STATE_FORMAT,
    jobId,
    step: String(scalars.step),
    optimizerStep: String(scalars.optimizerStep),
    optimizerSteps: JSON.stringify(scalars.optimizerSteps),
  });
}

function parseCount(value: string | undefined, field: string): number {
  const n = Number(value);
  if (value === undefined || !/^\d+$/.test(value) || !Number.isSafeInteger(n)) {
    throw new DataLossError(`the encoded state's ${field} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return n;
}

function parseSteps(value: string | undefined): Record<string, number> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value ?? '');
  } catch {
    throw new DataLossError(`the encoded state's optimizerSteps is not JSON: ${JSON.stringify(value)}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new DataLossError('the encoded state\'s optimizerSteps must be an object');
  const out: Record<string, number> = {};
  for (const [name, steps] of Object.entries(parsed)) {
    if (!Number.isSafeInteger(steps) || (steps as number) < 1) throw new DataLossError(`the encoded state's optimizerSteps.${name} must be an integer >= 1`);
    out[name] = steps as number;
  }
  return out;
}

/**
 * Replaces the contents of `state` (a `createDinoState` of the same recipe) by the encoded
 * state in `bytes`. Nothing changes when it throws.
 *
 * @throws DataLossError for bytes that are not a "dinofleet-state-v1" encoding of a state
 *   of this model.
 */
export function decodeDinoStateInto(state: DinoState, bytes: Uint8Array): EncodedStateInfo {
  let decoded;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new DataLossError(`the encoded state is not safetensors: ${err.message}`, { cause: err });
    throw err;
  }
  const { metadata, tensors } = decoded;
  if (metadata.format !== DINO_STATE_FORMAT) {
    throw new DataLossError(`the encoded state has format ${JSON.stringify(metadata.format)}, expected ${DINO_STATE_FORMAT}`);
  }
  const scalars: DinoStateScalars = {
    step: parseCount(metadata.step, 'step'),
    optimizerStep: parseCount(metadata.optimizerStep, 'optimizerStep'),
    optimizerSteps: parseSteps(metadata.optimizerSteps),
  };
  try {
    loadDinoStateTensors(state, tensors, scalars);
  } catch (err) {
    throw new DataLossError(`the encoded state does not fit the model: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return { ...scalars, jobId: metadata.jobId ?? '' };
}
