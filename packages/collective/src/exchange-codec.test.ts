import { describe, expect, it } from 'vitest';
import { CollectivePhase, ExchangeRequest } from '@dinofleet/proto';
import { decodeExchangeRequest, encodeExchangeRequest } from './exchange-codec.ts';

const full: ExchangeRequest = {
  jobId: 'job-é1',
  generation: 2 ** 40 + 3,
  step: 123_456,
  phase: CollectivePhase.COLLECTIVE_PHASE_ALL_GATHER,
  round: 2 ** 32 - 1,
  sequence: 300,
  fromRank: 7,
  segment: 5,
  offset: Number.MAX_SAFE_INTEGER,
  payload: Buffer.from(new Float32Array([1.5, -2, 3e-38, Number.NaN]).buffer),
};

describe('exchange codec', () => {
  it('writes exactly the bytes of the generated encoder', () => {
    const generated = Buffer.from(ExchangeRequest.encode(full).finish());
    expect(encodeExchangeRequest(full).equals(generated)).toBe(true);
    const defaults = ExchangeRequest.fromPartial({});
    expect(encodeExchangeRequest(defaults).length).toBe(0);
    const some = ExchangeRequest.fromPartial({ step: 1, payload: Buffer.alloc(200, 7) });
    expect(encodeExchangeRequest(some).equals(Buffer.from(ExchangeRequest.encode(some).finish()))).toBe(true);
  });

  it('reads what the generated encoder writes, with the payload as a view', () => {
    const bytes = Buffer.from(ExchangeRequest.encode(full).finish());
    const decoded = decodeExchangeRequest(bytes);
    expect({ ...decoded, payload: undefined }).toEqual({ ...full, payload: undefined });
    expect(decoded.payload.equals(full.payload)).toBe(true);
    expect(decoded.payload.buffer).toBe(bytes.buffer); // no copy
    expect(decodeExchangeRequest(Buffer.alloc(0))).toEqual(ExchangeRequest.fromPartial({}));
  });

  it('skips unknown fields and refuses truncated input and integers above 2^53', () => {
    // field 15 (varint 5), field 16 (bytes "ab"), then step = 9
    const withUnknown = Buffer.from([0x78, 0x05, 0x82, 0x01, 0x02, 0x61, 0x62, 0x18, 0x09]);
    expect(decodeExchangeRequest(withUnknown).step).toBe(9);
    expect(() => decodeExchangeRequest(Buffer.from([0x52, 0x05, 0x01]))).toThrow(/truncated/);
    const huge = Buffer.from([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(() => decodeExchangeRequest(huge)).toThrow(/2\^53/);
    expect(() => encodeExchangeRequest({ ...full, step: -1 })).toThrow(/step/);
  });
});
