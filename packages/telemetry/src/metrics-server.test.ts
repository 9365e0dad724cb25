import { Agent, get } from 'node:http';
import { createServer } from 'node:net';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { parseExposition, sampleValue } from './exposition.test-helper.ts';
import { MetricsServer } from './metrics-server.ts';
import { createTrainingMetrics } from './training-metrics.ts';
import type { StepMetricsLike } from './training-metrics.ts';

const STEP: StepMetricsLike = {
  step: 0,
  applied: true,
  gradNorm: 1.5,
  lr: 5e-4,
  weightDecay: 0.04,
  momentum: 0.996,
  teacherTemp: 0.04,
  centerNorm: 0.25,
  loss: { total: 10.75, dino: 8.5, ibot: 2, koleo: 0.25, gram: 0 },
  teacherEntropy: Math.log(16),
  agreement: 0.125,
};

async function scrape(port: number): Promise<ReturnType<typeof parseExposition>> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

/** Resolves whether something accepts TCP connections on 127.0.0.1:port, by trying to bind it. */
async function portIsFree(port: number): Promise<boolean> {
  const probe = createServer();
  return new Promise((resolve) => {
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

describe('MetricsServer', () => {
  it('serves the recorded step on /metrics and 200 on /healthz', async () => {
    await using server = new MetricsServer();
    const metrics = createTrainingMetrics(server.registry, { job: 'job-a', rank: '0' });
    const { port } = await server.start({ port: 0 });
    expect(port).toBeGreaterThan(0);
    expect(server.port).toBe(port);

    metrics.recordStep(STEP, { stepSeconds: 0.3, imagesPerSecond: 1024, prototypes: 256 });
    metrics.recordStep({ ...STEP, step: 1, applied: false, gradNorm: NaN, loss: { ...STEP.loss, total: NaN, dino: NaN } }, { prototypes: 256 });
    metrics.recordStep({ ...STEP, step: 2, lr: 4e-4 }, { prototypes: 256 });

    const samples = await scrape(port);
    const job = { job: 'job-a', rank: '0' };
    expect(sampleValue(samples, 'dinofleet_loss', { ...job, part: 'total' })).toBe(10.75);
    expect(sampleValue(samples, 'dinofleet_loss', { ...job, part: 'koleo' })).toBe(0.25);
    expect(sampleValue(samples, 'dinofleet_steps_committed_total', job)).toBe(2);
    expect(sampleValue(samples, 'dinofleet_nonfinite_steps_total', job)).toBe(1);
    expect(sampleValue(samples, 'dinofleet_step_duration_seconds_count', { ...job, phase: 'total' })).toBe(1);
    expect(sampleValue(samples, 'dinofleet_step_duration_seconds_sum', { ...job, phase: 'total' })).toBeCloseTo(0.3, 12);
    expect(sampleValue(samples, 'dinofleet_learning_rate', job)).toBe(4e-4);
    expect(sampleValue(samples, 'dinofleet_images_per_second', job)).toBe(1024);

    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe('ok\n');
    expect((await fetch(`http://127.0.0.1:${port}/nope`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('closes idempotently, releases the port and ends idle keep-alive sockets', async () => {
    const server = new MetricsServer({ closeGraceMs: 60_000 });
    const { port } = await server.start();
    const agent = new Agent({ keepAlive: true });
    // Wrapped in an object: resolving with a bare promise would wait for the socket to close.
    const { socketClosed } = await new Promise<{ socketClosed: Promise<void> }>((resolve, reject) => {
      get({ host: '127.0.0.1', port, path: '/healthz', agent }, (res) => {
        const socket = res.socket;
        res.resume();
        res.on('end', () => resolve({ socketClosed: new Promise<void>((done) => socket.once('close', () => done())) }));
      }).on('error', reject);
    });
    expect(await portIsFree(port)).toBe(false);

    // With a 60 s grace period, only closing idle sockets at once lets this finish in time.
    await Promise.all([server.close(), server.close()]);
    await socketClosed;
    await server.close();
    agent.destroy();
    expect(server.port).toBeNull();
    expect(await portIsFree(port)).toBe(true);
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
    await expect(server.start()).rejects.toThrow(/after close/);
  });

  it('close() before start() resolves and a second start() is refused', async () => {
    await new MetricsServer().close();
    await using server = new MetricsServer();
    await server.start();
    await expect(server.start()).rejects.toThrow(/twice/);
  });

  it('rejects start() on a port in use', async () => {
    await using first = new MetricsServer();
    const { port } = await first.start();
    await using second = new MetricsServer();
    await expect(second.start({ port })).rejects.toMatchObject({ code: 'EADDRINUSE' });
    await second.close();
  });

  it('keeps two registries in one process apart', async () => {
    await using a = new MetricsServer({ registry: new Registry() });
    await using b = new MetricsServer({ registry: new Registry() });
    // Same job labels, same metric names: with a shared global registry this would throw.
    const ma = createTrainingMetrics(a.registry, { job: 'same' });
    const mb = createTrainingMetrics(b.registry, { job: 'same' });
    ma.recordStep(STEP, { prototypes: 16 });
    mb.recordStep({ ...STEP, applied: false, loss: { ...STEP.loss, total: 3 } }, { prototypes: 16 });
    const [sa, sb] = await Promise.all([scrape((await a.start()).port), scrape((await b.start()).port)]);
    expect(sampleValue(sa, 'dinofleet_loss', { part: 'total' })).toBe(10.75);
    expect(sampleValue(sb, 'dinofleet_loss', { part: 'total' })).toBe(3);
    expect(sampleValue(sa, 'dinofleet_steps_committed_total')).toBe(1);
    expect(sampleValue(sb, 'dinofleet_steps_committed_total')).toBe(0);
    expect(sampleValue(sb, 'dinofleet_nonfinite_steps_total')).toBe(1);
  });

  it('adds default process metrics only when asked', async () => {
    await using plain = new MetricsServer();
    await using withDefaults = new MetricsServer({ defaultMetrics: true });
    expect(parseExposition(await plain.registry.metrics())).toEqual([]);
    const names = new Set(parseExposition(await withDefaults.registry.metrics()).map((s) => s.name));
    expect(names.has('dinofleet_process_cpu_user_seconds_total')).toBe(true);
  });
});
