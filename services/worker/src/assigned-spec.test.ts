import { describe, expect, it } from 'vitest';
import { resolveJobSpec } from '@dinofleet/config';
import { parseAssignedJobSpec } from './assigned-spec.ts';

describe('parseAssignedJobSpec', () => {
  it('reads back JSON.stringify(resolveJobSpec(...)) as the same spec', () => {
    const input = {
      apiVersion: 'dinofleet/v1',
      kind: 'TrainingJob',
      metadata: { name: 'round-trip' },
      spec: {
        recipe: { preset: 'dino', overrides: { crops: { nLocal: 0 } } },
        data: { manifest: 's3://bucket/manifest.txt' },
        training: { steps: 10, globalBatchSize: 8 },
      },
    };
    const spec = resolveJobSpec(input);
    // Unset fields are written as null (data.shards, checkpoint, epochs).
    expect(spec.spec.data.shards).toBeNull();
    expect(parseAssignedJobSpec(JSON.stringify(spec))).toEqual(spec);
    const withCheckpoint = resolveJobSpec({ ...input, spec: { ...input.spec, checkpoint: { uri: 's3://bucket/ckpt/', everySteps: 5 } } });
    expect(parseAssignedJobSpec(JSON.stringify(withCheckpoint))).toEqual(withCheckpoint);
  });

  it('names what is wrong', () => {
    expect(() => parseAssignedJobSpec('{')).toThrow(/not JSON/);
    expect(() => parseAssignedJobSpec('{"apiVersion":"dinofleet/v1"}')).toThrow(/not a valid job spec/);
  });
});
