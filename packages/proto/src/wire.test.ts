// The wire types round-trip what the protocol puts in them: oneof unions, raw float32
// payloads, 64-bit counters as JS numbers.
import { describe, expect, it } from 'vitest';
import { CollectivePhase, ExchangeRequest } from './generated/dinofleet/v1/collective.ts';
import { ComputeBackend, ControlRequest, ControlResponse } from './generated/dinofleet/v1/worker.ts';

describe('generated wire types', () => {
  it('round-trips a CommitStep inside the ControlRequest union', () => {
    const message: ControlRequest = {
      message: {
        $case: 'commitStep',
        commitStep: {
          generation: 7,
          step: 2 ** 53 - 1, // the largest step a JS number holds exactly
          stateHash: Buffer.from('0123456789abcdef0123456789abcdef', 'hex'),
          dataCursors: [
            { leaseId: 'e2-s3', epoch: 2, position: 8192, exhausted: true, positionWithin: 0, windowConsumed: 0 },
            { leaseId: 'e2-s4', epoch: 2, position: 4096, exhausted: false, positionWithin: 1536, windowConsumed: 17 },
          ],
          sampleCount: 64,
          lossParts: { dino: 10.5, koleo: -0.25 },
          sampleIds: [0, 37, 2 ** 40],
          skipped: [{ sampleId: 74, key: 'train/0/12.png', reason: 'decode_error' }],
          imagesPerSecond: 21.5,
          lr: 1e-4,
          checkpointUri: 's3://b/ckpt/j-1/step-00000007/',
          nonfinite: false,
          sampleEpochs: [0, 0, 1],
          checkpointFiles: [{ name: 'model.safetensors', bytes: 1024, sha256: 'ab'.repeat(32) }],
        },
      },
    };
    const decoded = ControlRequest.decode(ControlRequest.encode(message).finish());
    expect(decoded).toEqual(message);
    expect(decoded.message?.$case).toBe('commitStep');
  });

  it('round-trips an Assignment with its rank list', () => {
    const message: ControlResponse = {
      message: {
        $case: 'assignment',
        assignment: {
          jobId: 'j-1',
          generation: 3,
          ranks: [
            { rank: 0, workerId: 'w-a', collectiveAddress: '127.0.0.1:4000' },
            { rank: 1, workerId: 'w-b', collectiveAddress: '127.0.0.1:4001' },
          ],
          rank: 1,
          globalBatch: 256,
          perRankBatch: 64,
          gradientAccumulation: 2,
          startStep: 120,
          shardLease: { leaseId: 'e0-s1', epoch: 0, begin: 0, end: 1000, cursor: 128, shard: 1, cursorWithin: 512, cursorConsumed: 3 },
          jobSpecJson: '{}',
          teacherSyncAddress: '127.0.0.1:5000',
          totalSteps: 1000,
          manifestUri: 's3://bucket/manifest.txt',
          manifestEtag: '"abc"',
          stateSource: '127.0.0.1:4000',
          startStateHash: Buffer.alloc(32, 7),
          restoreCheckpointUri: '',
        },
      },
    };
    expect(ControlResponse.decode(ControlResponse.encode(message).finish())).toEqual(message);
    expect(ComputeBackend.COMPUTE_BACKEND_WASM).toBe(1);
  });

  it('carries a float32 payload bit-exactly as little-endian bytes', () => {
    const values = new Float32Array([1.5, -0, Number.NaN, 3.4028234663852886e38, 1e-45]);
    const payload = Buffer.alloc(values.length * 4);
    values.forEach((v, i) => payload.writeFloatLE(v, i * 4));
    const chunk: ExchangeRequest = {
      jobId: 'j',
      generation: 1,
      step: 9,
      phase: CollectivePhase.COLLECTIVE_PHASE_REDUCE_SCATTER,
      round: 0,
      sequence: 5,
      fromRank: 2,
      segment: 1,
      offset: 1024,
      payload,
    };
    const decoded = ExchangeRequest.decode(ExchangeRequest.encode(chunk).finish());
    expect(Buffer.compare(decoded.payload, payload)).toBe(0);
    const back = new Float32Array(decoded.payload.length / 4).map((_, i) => decoded.payload.readFloatLE(i * 4));
    expect(Buffer.from(back.buffer).equals(Buffer.from(values.buffer))).toBe(true);
  });

  it('refuses a 64-bit value a JS number cannot hold instead of rounding it', () => {
    const bytes = ExchangeRequest.encode({ ...ExchangeRequest.fromPartial({}), step: 2 ** 53 - 1 }).finish();
    // Bump the varint's top bits: 2^53 + 1 is not representable.
    const tooBig = Buffer.from(bytes);
    const stepField = tooBig.indexOf(0x18); // field 3, varint
    expect(stepField).toBeGreaterThanOrEqual(0);
    tooBig[stepField + 8] = 0x20; // 7 * 7 + 4 bits -> sets bit 53
    expect(() => ExchangeRequest.decode(tooBig)).toThrow(/MAX_SAFE_INTEGER/);
  });
});
