// Property-based fuzzing of the request messages every dinofleet server decodes from the
// network (JobService, WorkerControl, TeacherSync, Collective, StateTransfer). For
// arbitrary bytes, `decode` returns a message or throws an Error (never a non-Error, never
// a hang), and every message it returns survives encode → decode unchanged.
// Cases: 17 request types × (300 arbitrary + 300 wire-shaped) = 10,200.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { ExchangeRequest, FetchStateRequest, OpenDataLinkRequest } from './generated/dinofleet/v1/collective.ts';
import { CancelJobRequest, GetJobRequest, ListJobsRequest, ScaleJobRequest, SubmitJobRequest, WatchJobRequest } from './generated/dinofleet/v1/jobs.ts';
import {
  AttestTeacherRequest,
  GetCenterRequest,
  GetTeacherSnapshotRequest,
  PushTeacherSumsRequest,
  PutTeacherSnapshotRequest,
  WatchCentersRequest,
} from './generated/dinofleet/v1/teacher_sync.ts';
import { AcquireLeaseRequest, ControlRequest } from './generated/dinofleet/v1/worker.ts';

/** The part of ts-proto's `MessageFns` the wire uses. */
interface WireCodec {
  encode(message: never, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): unknown;
  fromPartial(object: never): unknown;
}

/** Every request message a dinofleet server reads off a socket, by service. */
const REQUESTS: Readonly<Record<string, WireCodec>> = {
  // JobService (public)
  SubmitJobRequest,
  GetJobRequest,
  ListJobsRequest,
  WatchJobRequest,
  ScaleJobRequest,
  CancelJobRequest,
  // WorkerControl
  ControlRequest,
  AcquireLeaseRequest,
  // TeacherSync
  PushTeacherSumsRequest,
  GetCenterRequest,
  WatchCentersRequest,
  GetTeacherSnapshotRequest,
  PutTeacherSnapshotRequest,
  AttestTeacherRequest,
  // Collective, StateTransfer
  ExchangeRequest,
  OpenDataLinkRequest,
  FetchStateRequest,
};

const RUNS_PER_TYPE = { bytes: 300, wire: 300 } as const;

const UTF8 = new TextEncoder();

function varint(value: bigint): number[] {
  const out: number[] = [];
  let rest = BigInt.asUintN(64, value);
  while (rest >= 0x80n) {
    out.push(Number(rest & 0x7fn) | 0x80);
    rest >>= 7n;
  }
  out.push(Number(rest));
  return out;
}

/** One protobuf field as raw wire bytes: its tag, then a value of the tag's wire type. */
type WireField = readonly number[];

/**
 * Protobuf-shaped bytes: a sequence of fields with the numbers and wire types the request
 * messages use (1–16, the odd unknown one), whose length-delimited values are strings,
 * packed numbers or nested messages of the same shape. Random bytes rarely get past the
 * first tag; these reach nested messages, oneofs, maps and 64-bit fields.
 */
const { message: wireMessage } = fc.letrec<{ message: Uint8Array; field: WireField }>((tie) => ({
  message: fc.array(tie('field'), { maxLength: 8 }).map((fields) => Uint8Array.from(fields.flat())),
  field: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.tuple(fc.integer({ min: 1, max: 16 }), fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(0n, 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 32n))).map(([field, value]) => [...varint(BigInt((field << 3) | 0)), ...varint(value)]),
    fc.tuple(fc.integer({ min: 1, max: 16 }), fc.uint8Array({ minLength: 8, maxLength: 8 })).map(([field, bytes]) => [...varint(BigInt((field << 3) | 1)), ...bytes]),
    fc.tuple(fc.integer({ min: 1, max: 16 }), fc.uint8Array({ minLength: 4, maxLength: 4 })).map(([field, bytes]) => [...varint(BigInt((field << 3) | 5)), ...bytes]),
    fc
      .tuple(
        fc.integer({ min: 1, max: 16 }),
        fc.oneof(
          fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('__proto__', 'constructor', 'dino', 'koleo', '')).map((text) => UTF8.encode(text)),
          fc.uint8Array({ maxLength: 40 }),
          tie<'message'>('message'),
        ),
      )
      .map(([field, bytes]) => [...varint(BigInt((field << 3) | 2)), ...varint(BigInt(bytes.byteLength)), ...bytes]),
  ),
}));

/** Arbitrary bytes, some with a length-delimited header that lies about its length. */
const arbitraryBytes = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  fc.tuple(fc.integer({ min: 1, max: 16 }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.uint8Array({ maxLength: 40 })).map(
    ([field, length, rest]) => Uint8Array.from([...varint(BigInt((field << 3) | 2)), ...varint(length), ...rest]),
  ),
  // Deep nesting: field 1 as a message inside itself, past ts-proto's recursion limit.
  fc.integer({ min: 1, max: 200 }).map((depth) => {
    let bytes: number[] = [];
    for (let i = 0; i < depth; i++) bytes = [0x0a, ...varint(BigInt(bytes.length)), ...bytes];
    return Uint8Array.from(bytes);
  }),
);

/** Decodes `bytes`; a thrown non-Error fails the property, a thrown Error is a clean refusal. */
function decodeOrRefuse(codec: WireCodec, bytes: Uint8Array): { message: unknown } | { error: Error } {
  try {
    return { message: codec.decode(bytes) };
  } catch (error) {
    expect(error).toBeInstanceOf(Error);
    return { error: error as Error };
  }
}

/** A decoded message re-encodes, decodes to itself, and `fromPartial` copies it exactly. */
function expectRoundTrip(codec: WireCodec, message: unknown): void {
  expect(typeof message).toBe('object');
  expect(message).not.toBeNull();
  const bytes = codec.encode(message as never).finish();
  const again = codec.decode(bytes);
  expect(again).toEqual(message);
  // Canonical: encoding the re-decoded message gives the same bytes.
  expect(codec.encode(again as never).finish()).toEqual(bytes);
  expect(codec.fromPartial(message as never)).toEqual(message);
}

describe('request message fuzzing: decode returns a message or throws an Error', () => {
  for (const [name, codec] of Object.entries(REQUESTS)) {
    it(`${name}: arbitrary bytes`, () => {
      fc.assert(
        fc.property(arbitraryBytes, (bytes) => {
          const result = decodeOrRefuse(codec, bytes);
          if ('message' in result) expectRoundTrip(codec, result.message);
        }),
        { numRuns: RUNS_PER_TYPE.bytes },
      );
    });

    it(`${name}: protobuf-shaped bytes round-trip`, () => {
      fc.assert(
        fc.property(wireMessage, (bytes) => {
          const result = decodeOrRefuse(codec, bytes);
          if ('message' in result) expectRoundTrip(codec, result.message);
        }),
        { numRuns: RUNS_PER_TYPE.wire },
      );
    });
  }
});
