import { describe, expect, it } from 'vitest';
import {
  COMPRESSIONS,
  DEFAULT_CHUNK_BYTES,
  DEFAULT_FUSION_BUCKET_BYTES,
  DEFAULT_SMALL_MESSAGE_BYTES,
  MAX_CHUNK_BYTES,
  MAX_SMALL_MESSAGE_BYTES,
  Transport,
  resolveRingAllReduceConfig,
} from '@dinofleet/collective';
import { COLLECTIVE_COMPRESSIONS, COLLECTIVE_TRANSPORTS, DEFAULT_COLLECTIVE, JOB_SPEC_LIMITS, resolveJobSpec } from '@dinofleet/config';
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

describe('spec.collective and @dinofleet/collective', () => {
  // The config package mirrors the collective's lists and limits (it does not depend on it).
  it('offer the same transports, compressions, defaults and limits', () => {
    expect([...COLLECTIVE_TRANSPORTS]).toEqual(Object.values(Transport));
    expect([...COLLECTIVE_COMPRESSIONS]).toEqual([...COMPRESSIONS]);
    expect(DEFAULT_COLLECTIVE).toMatchObject({
      chunkBytes: DEFAULT_CHUNK_BYTES,
      smallMessageBytes: DEFAULT_SMALL_MESSAGE_BYTES,
      fusionBucketBytes: DEFAULT_FUSION_BUCKET_BYTES,
    });
    expect(JOB_SPEC_LIMITS.maxChunkBytes).toBe(MAX_CHUNK_BYTES);
    expect(JOB_SPEC_LIMITS.maxSmallMessageBytes).toBe(MAX_SMALL_MESSAGE_BYTES);
  });

  it('accepts every transport the spec allows, at the ends of its ranges', () => {
    const ring = { job: 'j', generation: 1, rank: 0, peers: ['a:1', 'b:2'] };
    const collectiveOf = (collective: Record<string, unknown>) =>
      resolveJobSpec({
        apiVersion: 'dinofleet/v1',
        kind: 'TrainingJob',
        metadata: { name: 'collective' },
        spec: { data: { manifest: 's3://bucket/manifest.txt' }, training: { steps: 1 }, collective },
      }).spec.collective;
    for (const collective of [
      collectiveOf({}),
      collectiveOf({ transport: 'grpc' }),
      collectiveOf({ compression: 'fp16', chunkBytes: 4, smallMessageBytes: JOB_SPEC_LIMITS.maxSmallMessageBytes }),
      collectiveOf({ transport: 'grpc', chunkBytes: JOB_SPEC_LIMITS.maxChunkBytes }),
    ]) {
      const { transport, compression, chunkBytes, smallMessageBytes } = collective;
      expect(resolveRingAllReduceConfig({ ...ring, transport, compression, chunkBytes, smallMessageBytes })).toMatchObject({
        transport,
        compression,
        chunkBytes,
        smallMessageBytes,
      });
    }
  });
});
