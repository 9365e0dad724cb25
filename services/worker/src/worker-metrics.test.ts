import { describe, expect, it } from 'vitest';
import type { AllReduceStats } from '@dinofleet/collective';
import { Registry } from '@dinofleet/telemetry';
import { ALLREDUCE_SECONDS_BUCKETS, BUSBW_MIN_BYTES, WorkerMetrics } from './worker-metrics.ts';

const MiB = 1024 * 1024;

/** The figures RingAllReduce reports for `sizeBytes` in `seconds` over `worldSize` ranks (allReduceStats' formulas). */
function stats(sizeBytes: number, seconds: number, algorithm: AllReduceStats['algorithm'] = 'ring', worldSize = 4): AllReduceStats {
  const algbwGBps = sizeBytes / seconds / 1e9;
  return { step: 3, op: 1, worldSize, sizeBytes, algorithm, compression: 'none', seconds, algbwGBps, busbwGBps: (algbwGBps * 2 * (worldSize - 1)) / worldSize };
}

/** `name{labels} value` lines of the exposition text, keyed by name and sorted labels. */
async function samples(registry: Registry): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await registry.metrics()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not an exposition line: ${line}`);
    const labels = [...(match[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((m) => `${m[1]}=${m[2]}`).sort();
    out.set(`${match[1]}{${labels.join(',')}}`, match[3] === '+Inf' ? Infinity : Number(match[3]));
  }
  return out;
}

describe('WorkerMetrics.collective', () => {
  it('records every call, the last gradient busbw, the link and their ratio under job and rank', async () => {
    const registry = new Registry();
    const run = new WorkerMetrics(registry).collective({ job: 'j-1', rank: '2' });
    run.recordCall(stats(64 * MiB, 0.2)); // 0.2 s: in (0.1, 0.25]
    run.recordCall(stats(4096, 0.0004, 'recursive-doubling')); // under 1 ms
    run.recordGradientBucket(stats(64 * MiB, 0.2));
    run.recordLink({ peerRank: 1, peerAddress: '10.0.0.2:7100', bandwidthGBps: 1.25, bytes: 8 * MiB });
    const s = await samples(registry);

    const seconds = (algorithm: string, le: string): number | undefined =>
      s.get(`dinofleet_collective_allreduce_seconds_bucket{algorithm=${algorithm},job=j-1,le=${le},rank=2}`);
    expect(seconds('ring', '0.1')).toBe(0);
    expect(seconds('ring', '0.25')).toBe(1);
    expect(s.get('dinofleet_collective_allreduce_seconds_sum{algorithm=ring,job=j-1,rank=2}')).toBeCloseTo(0.2, 12);
    expect(seconds('recursive-doubling', '0.001')).toBe(1);
    expect(s.get('dinofleet_collective_allreduce_seconds_count{algorithm=recursive-doubling,job=j-1,rank=2}')).toBe(1);
    expect(ALLREDUCE_SECONDS_BUCKETS[0]).toBe(0.001);
    expect(ALLREDUCE_SECONDS_BUCKETS.at(-1)).toBe(60);

    expect(s.get('dinofleet_collective_bytes_total{job=j-1,rank=2}')).toBe(64 * MiB + 4096);
    // 64 MiB in 0.2 s is 0.33554432 GB/s of algbw; × 2·3/4 over 4 ranks.
    const busbw = ((64 * MiB) / 0.2 / 1e9) * 1.5;
    expect(s.get('dinofleet_collective_busbw_bytes_per_second{job=j-1,rank=2}')).toBeCloseTo(busbw * 1e9, 3);
    expect(s.get('dinofleet_collective_link_bandwidth_bytes_per_second{job=j-1,peer_rank=1,rank=2}')).toBe(1.25e9);
    expect(s.get('dinofleet_collective_busbw_link_ratio{job=j-1,rank=2}')).toBeCloseTo(busbw / 1.25, 12);
  });

  it('leaves busbw to buckets of at least 1 MiB, and sets the ratio only once both figures exist', async () => {
    const registry = new Registry();
    const run = new WorkerMetrics(registry).collective({ job: 'j', rank: '0' });
    run.recordGradientBucket(stats(BUSBW_MIN_BYTES - 4, 0.001));
    let s = await samples(registry);
    expect(s.has('dinofleet_collective_busbw_bytes_per_second{job=j,rank=0}')).toBe(false);
    // The link alone: no ratio yet.
    run.recordLink({ peerRank: 3, peerAddress: 'w3:7100', bandwidthGBps: 2, bytes: 8 * MiB });
    s = await samples(registry);
    expect(s.get('dinofleet_collective_link_bandwidth_bytes_per_second{job=j,peer_rank=3,rank=0}')).toBe(2e9);
    expect(s.has('dinofleet_collective_busbw_link_ratio{job=j,rank=0}')).toBe(false);
    // A 1 MiB bucket counts; the ratio follows the latest busbw.
    run.recordGradientBucket(stats(BUSBW_MIN_BYTES, 0.001)); // algbw 1.048576 GB/s, busbw 1.572864
    run.recordGradientBucket(stats(2 * MiB, 0.004)); // algbw 0.524288, busbw 0.786432
    s = await samples(registry);
    expect(s.get('dinofleet_collective_busbw_bytes_per_second{job=j,rank=0}')).toBeCloseTo(0.786432e9, 3);
    expect(s.get('dinofleet_collective_busbw_link_ratio{job=j,rank=0}')).toBeCloseTo(0.393216, 12);
    // A single rank moves nothing: busbw 0 is not a measurement.
    run.recordGradientBucket(stats(64 * MiB, 0.01, 'local', 1));
    s = await samples(registry);
    expect(s.get('dinofleet_collective_busbw_bytes_per_second{job=j,rank=0}')).toBeCloseTo(0.786432e9, 3);
  });

  it('removes the series of its job and rank only, and starts the byte counter at 0', async () => {
    const registry = new Registry();
    const metrics = new WorkerMetrics(registry);
    const ended = metrics.collective({ job: 'j', rank: '0' });
    const kept = metrics.collective({ job: 'j', rank: '1' });
    expect((await samples(registry)).get('dinofleet_collective_bytes_total{job=j,rank=0}')).toBe(0);
    for (const run of [ended, kept]) {
      run.recordCall(stats(8 * MiB, 0.05));
      run.recordCall(stats(4, 0.0001, 'recursive-doubling'));
      run.recordGradientBucket(stats(8 * MiB, 0.05));
      run.recordLink({ peerRank: 1, peerAddress: 'w1:7100', bandwidthGBps: 1, bytes: 8 * MiB });
    }
    ended.remove();
    ended.remove();
    // A late callback of the closing ring records nothing.
    ended.recordCall(stats(8 * MiB, 0.05));
    ended.recordGradientBucket(stats(8 * MiB, 0.05));
    ended.recordLink({ peerRank: 2, peerAddress: 'w2:7100', bandwidthGBps: 1, bytes: 8 * MiB });
    const names = [...(await samples(registry)).keys()].filter((key) => key.startsWith('dinofleet_collective_'));
    expect(names.filter((key) => key.includes('rank=0'))).toEqual([]);
    for (const name of ['allreduce_seconds_count', 'busbw_bytes_per_second', 'link_bandwidth_bytes_per_second', 'busbw_link_ratio', 'bytes_total']) {
      expect(names.some((key) => key.startsWith(`dinofleet_collective_${name}{`) && key.includes('rank=1'))).toBe(true);
    }
  });
});
