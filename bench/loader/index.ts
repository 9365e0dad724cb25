// `npm run bench -- loader [--images 320] [--steps 8] [--batch 64] [--threads N] [--backend wasm]`
//
// The data loader against the training step. JPEG photographs of ImageNet-like size
// (~500x375, ~100 KB, generated with sharp from smooth patterns and noise) are served by
// s3rver in its own process (the bench's process plays one worker, as S3 would be remote);
// the worker's real S3BatchLoader reads them through shard leases of a manifest, decodes
// and cuts DINO's reference multi-crop (2 x 224 px global, 8 x 96 px local, RGB) in its
// thread pool (all cores), and loads batches ahead within its byte budget.
//
// 1. Loader alone: batches as fast as it can make them -> images_per_s.
// 2. Loader under the step: the default config's training step (the default job spec:
//    preset dinov2, its ViT, global batch 64 on one worker) runs on the main thread and
//    takes one loader batch per step. data_wait_fraction = time the step waited for its
//    batch / wall time of those steps, after a first warm-up step. The default model is
//    the 28-pixel Fashion-MNIST ViT, which cannot take 224-pixel crops, so the step trains
//    on a fixed batch of its own crop sizes: its cost does not depend on the pixels, and
//    it competes with the loader's threads for the same cores, which is what is measured.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import { initComputeBackend, parseComputeBackend } from '@dinofleet/compute';
import { parseJobSpec, resolveRecipe } from '@dinofleet/config';
import { CropPool, planManifestSplits, resolveS3Config } from '@dinofleet/data';
import type { S3Config } from '@dinofleet/data';
import { REFERENCE_MULTI_CROP, Rng, buildCropBatch, createDinoState, disposeDinoState, trainStep } from '@dinofleet/dino';
import { s3ClientFromEnv } from '@dinofleet/local';
import type { ShardLease } from '@dinofleet/proto';
import { LeaseReader, PrefetchingBatchSource, S3BatchLoader } from '@dinofleet/worker';
import type { BatchSource } from '@dinofleet/worker';
import { startS3rverProcess } from '../manifest/s3rver-process.ts';
import { log, median, report } from '../lib/report.ts';

const { values } = parseArgs({
  options: {
    images: { type: 'string', default: '320' },
    steps: { type: 'string', default: '8' },
    batch: { type: 'string', default: '64' },
    threads: { type: 'string', default: String(availableParallelism()) },
    backend: { type: 'string', default: 'wasm' },
  },
});
const IMAGES = Number(values.images);
const STEPS = Number(values.steps);
const BATCH = Number(values.batch);
const THREADS = Number(values.threads);
const BUCKET = 'loader-bench';
const SPLITS = 4;
const MANIFEST_LINES = 20_000;


/** A photograph-like JPEG: smooth colour fields, a few shapes' edges, sensor-like noise. */
async function photo(index: number): Promise<Buffer> {
  const rng = new Rng(1000 + index);
  const width = 480 + rng.int(64);
  const height = 340 + rng.int(64);
  const raw = Buffer.alloc(width * height * 3);
  const f = [rng.range(0.005, 0.03), rng.range(0.005, 0.03), rng.range(0.005, 0.03)];
  const phase = [rng.range(0, 6), rng.range(0, 6), rng.range(0, 6)];
  const cx = rng.range(0, width);
  const cy = rng.range(0, height);
  const radius = rng.range(40, 160);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inside = (x - cx) ** 2 + (y - cy) ** 2 < radius ** 2 ? 60 : 0;
      for (let c = 0; c < 3; c++) {
        const base = 128 + 70 * Math.sin(x * (f[c] as number) + y * (f[(c + 1) % 3] as number) + (phase[c] as number));
        raw[(y * width + x) * 3 + c] = Math.max(0, Math.min(255, base + inside + (rng.uniform() - 0.5) * 70));
      }
    }
  }
  return sharp(raw, { raw: { width, height, channels: 3 } }).jpeg({ quality: 92 }).toBuffer();
}

async function upload(s3: S3Client): Promise<{ manifestBytes: number; jpegBytes: number }> {
  const lines: string[] = [];
  let jpegBytes = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < IMAGES) {
      const i = next++;
      const body = await photo(i);
      jpegBytes += body.byteLength;
      await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: `photos/${String(i).padStart(6, '0')}.jpg`, Body: body }));
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  // A manifest of MANIFEST_LINES lines naming the photographs in turn (a shard of a real
  // manifest holds thousands of lines, so a worker reads its manifest a block at a time,
  // not a GET per window), with a bad entry every 1000 lines as a real corpus has: a
  // missing object or a truncated JPEG.
  for (let i = 0; i < MANIFEST_LINES; i++) {
    if (i % 1000 === 500) lines.push(i % 2000 === 500 ? 'photos/missing.jpg\t0' : 'photos/truncated.jpg\t0');
    lines.push(`photos/${String(i % IMAGES).padStart(6, '0')}.jpg\t${i % 1000}`);
  }
  const truncated = (await photo(0)).subarray(0, 5000);
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'photos/truncated.jpg', Body: truncated }));
  const manifest = `${lines.join('\n')}\n`;
  await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'manifest.txt', Body: manifest }));
  return { manifestBytes: Buffer.byteLength(manifest), jpegBytes };
}

/** The worker's loader over leases that cycle through the manifest's splits epoch after epoch. */
function openLoader(s3: S3Client, s3Config: S3Config, manifestBytes: number, pool: CropPool, firstStep: number, skips: Map<string, number>): BatchSource {
  const splits = planManifestSplits({ sizeBytes: manifestBytes, splitCount: SPLITS });
  let taken = 0;
  const lease = (): ShardLease => {
    const split = splits[taken % SPLITS] as (typeof splits)[number];
    const epoch = Math.floor(taken / SPLITS);
    taken++;
    return { leaseId: `e${epoch}-s${split.index}`, epoch, shard: split.index, begin: split.start, end: split.end, cursor: split.start, cursorWithin: 0, cursorConsumed: 0 };
  };
  const reader = new LeaseReader({ s3, bucket: BUCKET, key: 'manifest.txt', shuffleWindow: 1024, firstLease: lease(), acquireLease: () => Promise.resolve(lease()) });
  const loader = new S3BatchLoader({
    reader,
    s3,
    bucket: BUCKET,
    batchSize: BATCH,
    concurrency: 16,
    channels: 3,
    crops: { config: REFERENCE_MULTI_CROP, seed: 0, firstStep, batchOffset: 0, pool, s3: s3Config },
    onSkip: (skipped) => skips.set(skipped.reason, (skips.get(skipped.reason) ?? 0) + 1),
  });
  return new PrefetchingBatchSource(loader);
}

const server = await startS3rverProcess(BUCKET);
const s3 = s3ClientFromEnv(server.env);
// The worker's setting: the pool threads GET the images with clients of their own.
const s3Config = resolveS3Config({}, { ...server.env });
let pool: CropPool | undefined;
try {
  const backend = await initComputeBackend(parseComputeBackend(values.backend));
  log(`generating ${IMAGES} JPEG photographs (~500x375) into s3rver...`);
  const { manifestBytes, jpegBytes } = await upload(s3);
  const meanKb = jpegBytes / IMAGES / 1024;
  log(`uploaded: mean ${meanKb.toFixed(0)} KiB per JPEG; loader: ${THREADS} threads, batch ${BATCH}, 2x224 + 8x96 px RGB`);
  pool = new CropPool({ threads: THREADS });
  const skips = new Map<string, number>();

  // 1. The loader alone, after one warm-up batch (thread start-up, first reads).
  const alone = openLoader(s3, s3Config, manifestBytes, pool, 0, skips);
  await alone.next();
  const aloneBatches = 3;
  const t0 = performance.now();
  for (let i = 0; i < aloneBatches; i++) await alone.next();
  const aloneSeconds = (performance.now() - t0) / 1000;
  await alone.close();
  const imagesPerSecond = (aloneBatches * BATCH) / aloneSeconds;
  log(`loader alone: ${imagesPerSecond.toFixed(1)} images/s (${(imagesPerSecond / THREADS).toFixed(1)} per thread)`);

  // 2. Under the default config's training step.
  const spec = parseJobSpec(JSON.stringify({ apiVersion: 'dinofleet/v1', kind: 'TrainingJob', metadata: { name: 'loader-bench' }, spec: { data: { manifest: `s3://${BUCKET}/manifest.txt` }, training: { steps: 1000 } } }), 'json');
  const recipe = resolveRecipe(spec);
  if (spec.spec.training.globalBatchSize !== BATCH) log(`note: the default global batch is ${spec.spec.training.globalBatchSize}, the bench uses ${BATCH}`);
  const rng = new Rng(1);
  const size = recipe.vit.imageSize;
  const own = Array.from({ length: BATCH }, () => ({
    data: Float32Array.from({ length: size * size * recipe.vit.inChannels }, () => rng.uniform()),
    height: size,
    width: size,
    channels: recipe.vit.inChannels,
  }));
  const stepBatch = buildCropBatch(own, recipe.crops, rng);
  const state = createDinoState(recipe, 0, { totalSteps: 1000 });
  const source = openLoader(s3, s3Config, manifestBytes, pool, 0, skips);
  const waits: number[] = [];
  const totals: number[] = [];
  const computes: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    const started = performance.now();
    const batch = await source.next();
    const waited = performance.now() - started;
    if (batch.crops?.batchSize !== BATCH) throw new Error(`step ${step}: the loader gave ${batch.crops?.batchSize ?? 0} images`);
    const computeStart = performance.now();
    const queued = pool.pending;
    await trainStep(state, stepBatch);
    const computed = performance.now() - computeStart;
    if (queued === 0) log(`  step ${step}: no loader job was queued when the step started (the loader waited on the main thread)`);
    waits.push(waited);
    computes.push(computed);
    totals.push(performance.now() - started);
    log(`step ${step}: waited ${waited.toFixed(0)} ms for data, step ${computed.toFixed(0)} ms`);
  }
  await source.close();
  disposeDinoState(state);
  const steady = (xs: number[]): number => xs.slice(1).reduce((a, b) => a + b, 0);
  const dataWaitFraction = steady(waits) / steady(totals);
  const underStep = ((STEPS - 1) * BATCH) / (steady(totals) / 1000);
  log(`under the step (${backend.backend}, ${recipe.name} ${recipe.vit.name}): median step ${median(computes.slice(1)).toFixed(0)} ms, data wait ${(dataWaitFraction * 100).toFixed(2)} % of the step time`);
  log(`skipped: ${JSON.stringify(Object.fromEntries(skips))}`);
  report({
    images_per_s: Number(imagesPerSecond.toFixed(1)),
    images_per_s_per_core: Number((imagesPerSecond / availableParallelism()).toFixed(1)),
    data_wait_fraction: Number(dataWaitFraction.toFixed(4)),
    met: dataWaitFraction <= 0.05,
    cores: availableParallelism(),
    threads: THREADS,
    batch: BATCH,
    crops: '2x224+8x96 rgb',
    mean_jpeg_kib: Number(meanKb.toFixed(1)),
    step_ms_median: Number(median(computes.slice(1)).toFixed(0)),
    images_per_s_under_step: Number(underStep.toFixed(1)),
    skipped: Object.fromEntries(skips),
    backend: backend.backend,
  });
} finally {
  await pool?.close();
  s3.destroy();
  await server.stop();
}
