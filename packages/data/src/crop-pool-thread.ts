/**
 * One thread of a {@link CropPool}: reads an image (from S3 itself, or bytes handed over),
 * decodes it with sharp and, when asked, cuts its multi-crop views into the batch's shared
 * buffers. The crops are the ones the step loop would build itself (same code, same random
 * stream per global batch index), so cropping here changes no number. Reading here too
 * keeps loading going while the main thread runs the training step.
 */
import { parentPort } from 'node:worker_threads';
import type { S3Client } from '@aws-sdk/client-s3';
import { cropImageRng, multiCrop } from '@dinofleet/dino/augment';
import type { Image } from '@dinofleet/dino/augment';
import type { CropJobMessage, CropResultMessage, CropTarget, ObjectToFetch } from './crop-pool-protocol.ts';
import { DecodeError, decodeImage } from './image-decode.ts';
import { fetchObjects } from './image-fetcher.ts';
import { createS3Client } from './s3-config.ts';

const clients = new Map<string, S3Client>();

function clientFor(fetch: ObjectToFetch): S3Client {
  const id = JSON.stringify(fetch.s3);
  let client = clients.get(id);
  if (client === undefined) {
    client = createS3Client(fetch.s3);
    clients.set(id, client);
  }
  return client;
}

function writeCrops(image: Image, target: CropTarget): void {
  const { config, batchSize, slot } = target;
  const views = multiCrop(image, config, cropImageRng(target.batchSeed, target.globalIndex));
  const place = (crops: readonly Image[], into: Float32Array): void => {
    crops.forEach((crop, view) => into.set(crop.data, (view * batchSize + slot) * crop.data.length));
  };
  place(views.global, target.global);
  place(views.local, target.local);
}

async function run(job: CropJobMessage): Promise<{ message: CropResultMessage; transfer: ArrayBuffer[] }> {
  let bytes = job.bytes;
  const retries: string[] = [];
  if (bytes === undefined) {
    const fetch = job.fetch;
    if (fetch === undefined) return { message: { id: job.id, ok: false, code: 'internal', message: 'the job has neither bytes nor an object to fetch' }, transfer: [] };
    const [result] = await fetchObjects(clientFor(fetch), fetch.bucket, [fetch.key], {
      retries: fetch.retries,
      maxObjectBytes: fetch.maxObjectBytes,
      ...(fetch.backoff !== undefined && { backoff: fetch.backoff }),
      onRetry: (_key, attempt, detail) => retries.push(`attempt ${attempt}: ${detail}`),
    });
    if (result === undefined || 'skipped' in result) {
      const code = result?.skipped ?? 'read_error';
      return { message: { id: job.id, ok: false, code, fetchFailed: true, message: result?.detail ?? 'no result', retries }, transfer: [] };
    }
    bytes = result.bytes;
  }
  const started = performance.now();
  let image;
  try {
    image = await decodeImage(bytes, { channels: job.channels, maxPixels: job.maxPixels });
  } catch (error) {
    const code = error instanceof DecodeError ? error.code : 'internal';
    const message = error instanceof Error ? error.message : String(error);
    return { message: { id: job.id, ok: false, code, message, retries }, transfer: [] };
  }
  const decoded = performance.now();
  const base = { id: job.id, ok: true as const, width: image.width, height: image.height, decodeSeconds: (decoded - started) / 1000, bytesRead: bytes.byteLength, retries };
  if (job.target === undefined) {
    const pixels = image.data;
    return { message: { ...base, cropSeconds: 0, pixels }, transfer: [pixels.buffer as ArrayBuffer] };
  }
  writeCrops(image, job.target);
  return { message: { ...base, cropSeconds: (performance.now() - decoded) / 1000 }, transfer: [] };
}

const port = parentPort;
if (port === null) throw new Error('crop-pool-thread.ts runs inside a worker thread of a CropPool');
port.on('message', (job: CropJobMessage) => {
  run(job).then(
    ({ message, transfer }) => port.postMessage(message, transfer),
    (error: unknown) =>
      port.postMessage({ id: job.id, ok: false, code: 'internal', message: error instanceof Error ? error.stack ?? error.message : String(error) } satisfies CropResultMessage),
  );
});
