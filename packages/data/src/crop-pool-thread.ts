/**
 * One thread of a {@link CropPool}: decodes an image with sharp and, when asked, cuts its
 * multi-crop views into the batch's shared buffers. The crops are the ones the step loop
 * would build itself (same code, same random stream per global batch index), so cropping
 * here changes no number.
 */
import { parentPort } from 'node:worker_threads';
import { cropImageRng, multiCrop } from '@dinofleet/dino/augment';
import type { Image } from '@dinofleet/dino/augment';
import type { CropJobMessage, CropResultMessage, CropTarget } from './crop-pool-protocol.ts';
import { DecodeError, decodeImage } from './image-decode.ts';

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
  const started = performance.now();
  let image;
  try {
    image = await decodeImage(job.bytes, { channels: job.channels, maxPixels: job.maxPixels });
  } catch (error) {
    const code = error instanceof DecodeError ? error.code : 'internal';
    const message = error instanceof Error ? error.message : String(error);
    return { message: { id: job.id, ok: false, code, message }, transfer: [] };
  }
  const decoded = performance.now();
  const base = { id: job.id, ok: true as const, width: image.width, height: image.height, decodeSeconds: (decoded - started) / 1000 };
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
