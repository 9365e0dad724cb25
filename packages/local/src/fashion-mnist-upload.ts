/**
 * Fashion-MNIST into S3 as PNG objects plus a `key<TAB>label` manifest, the layout a job's
 * `spec.data.manifest` points at (docs/cluster.md, "S3 layout").
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { encodePng, fashionMnistImage, loadFashionMnist } from '@dinofleet/data';
import type { FashionMnistOptions } from '@dinofleet/data';

import { ensureBucket } from './s3-server.ts';

/** Options of {@link uploadFashionMnist}. */
export interface UploadFashionMnistOptions {
  /** Bucket to write to; created when missing. */
  readonly bucket: string;
  /** Key prefix of everything written. @default 'fashion-mnist/' */
  readonly prefix?: string;
  /** Which split. */
  readonly split: 'train' | 'test';
  /**
   * Upload only the first N images of the split; the split is class-interleaved, so any
   * prefix of 10·m images holds m of each class. @default the whole split
   */
  readonly limit?: number;
  /** PUTs in flight at once, ≥ 1. @default 32 */
  readonly concurrency?: number;
  /** Called after each image with (uploaded, total). */
  readonly onProgress?: (done: number, total: number) => void;
  /** Where the dataset cache lives (see `loadFashionMnist`). @default its default */
  readonly dataset?: FashionMnistOptions;
}

/** What {@link uploadFashionMnist} wrote. */
export interface UploadedFashionMnist {
  /** `s3://<bucket>/<prefix><split>/manifest.txt`. */
  readonly manifestUri: string;
  /** Images uploaded. */
  readonly count: number;
  /** Image keys, in manifest order (index order of the split). */
  readonly keys: readonly string[];
}

/** Default {@link UploadFashionMnistOptions.concurrency}. */
export const DEFAULT_UPLOAD_CONCURRENCY = 32;

/**
 * Uploads images `0..limit` of a Fashion-MNIST split as `<prefix><split>/<label>/<index>.png`
 * (8-bit grey PNG, 28 × 28), then the manifest `<prefix><split>/manifest.txt` with one
 * `key<TAB>label` line per image. The manifest goes last, so a manifest that exists names
 * only objects that exist.
 */
export async function uploadFashionMnist(s3: S3Client, options: UploadFashionMnistOptions): Promise<UploadedFashionMnist> {
  const prefix = options.prefix ?? 'fashion-mnist/';
  const concurrency = options.concurrency ?? DEFAULT_UPLOAD_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be an integer ≥ 1, got ${concurrency}`);
  const dataset = await loadFashionMnist(options.dataset ?? {});
  const set = options.split === 'train' ? dataset.train : dataset.test;
  const limit = options.limit ?? set.count;
  if (!Number.isInteger(limit) || limit < 0) throw new RangeError(`limit must be an integer ≥ 0, got ${limit}`);
  const total = Math.min(limit, set.count);

  await ensureBucket(s3, options.bucket);
  const keys: string[] = [];
  const lines: string[] = [];
  for (let index = 0; index < total; index++) {
    const label = set.labels[index]!;
    const key = `${prefix}${options.split}/${label}/${index}.png`;
    keys.push(key);
    lines.push(`${key}\t${label}\n`);
  }

  let next = 0;
  let done = 0;
  const uploadOne = async (index: number): Promise<void> => {
    const body = await encodePng(fashionMnistImage(set, index));
    await s3.send(new PutObjectCommand({ Bucket: options.bucket, Key: keys[index]!, Body: body, ContentType: 'image/png' }));
    done++;
    options.onProgress?.(done, total);
  };
  const lane = async (): Promise<void> => {
    while (next < total) await uploadOne(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(total, 1)) }, lane));

  const manifestKey = `${prefix}${options.split}/manifest.txt`;
  await s3.send(
    new PutObjectCommand({ Bucket: options.bucket, Key: manifestKey, Body: lines.join(''), ContentType: 'text/plain; charset=utf-8' }),
  );
  return { manifestUri: `s3://${options.bucket}/${manifestKey}`, count: total, keys };
}
