/**
 * An ImageNet-like manifest (`train/n01440764/n01440764_10026.JPEG\tn01440764`, some
 * `val/ILSVRC2012_val_00012345.JPEG\tn01440764`), generated part by part and uploaded
 * with a multipart upload, so neither the whole text nor the whole object is ever held.
 * Alongside it come the figures a reader's result is checked against.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { CompletedPart, S3Client } from '@aws-sdk/client-s3';

/** What was uploaded, and the sums a reader of every record must reproduce. */
export interface GeneratedManifest {
  readonly key: string;
  /** Lines (= records = entries). */
  readonly entries: number;
  readonly sizeBytes: number;
  /** Sum of every line's start offset (each record's id). */
  readonly offsetSum: number;
  /** Sum over lines of key length + label length (characters; the text is ASCII). */
  readonly charSum: number;
}

/** Bytes per uploaded part (S3 wants at least 5 MiB for all but the last). */
const PART_BYTES = 32 * 1024 * 1024;
const CLASSES = 1000;
const IMAGES_PER_CLASS = 50_000;
const VAL_FRACTION = 0.04;
const LINES_PER_WRITE = 1000;
/** Longest generated line with its `\n` (46 + 1 bytes), rounded up. */
const MAX_LINE_BYTES = 64;

// 1000 distinct synset-like ids, `n` + 8 digits.
const SYNSETS = Array.from({ length: CLASSES }, (_, c) => `n${String(1_440_764 + c * 15_013).padStart(8, '0')}`);

/** Line `i`'s text generator: xorshift32, so a run is reproducible from its seed. */
function lineSource(seed: number): () => string {
  let state = seed >>> 0 || 1;
  const next = (): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return state >>> 0;
  };
  return () => {
    const r = next();
    const synset = SYNSETS[r % CLASSES] as string;
    const image = 1 + (next() % IMAGES_PER_CLASS);
    if (r / 2 ** 32 < VAL_FRACTION) return `val/ILSVRC2012_val_${String(image).padStart(8, '0')}.JPEG\t${synset}`;
    return `train/${synset}/${synset}_${image}.JPEG\t${synset}`;
  };
}

/** Generates `entries` lines (each `\n`-terminated) and uploads them as `s3://bucket/key`. */
export async function uploadImagenetManifest(
  s3: S3Client,
  bucket: string,
  key: string,
  entries: number,
  seed: number,
): Promise<GeneratedManifest> {
  const nextLine = lineSource(seed);
  let offset = 0;
  let offsetSum = 0;
  let charSum = 0;
  let written = 0;
  // A part is filled with strings of LINES_PER_WRITE lines: one string per line in a big
  // array, or one part-sized string, costs far more in GC than the bytes themselves.
  const nextPart = (): Buffer | undefined => {
    if (written === entries) return undefined;
    const part = Buffer.allocUnsafe(PART_BYTES + LINES_PER_WRITE * MAX_LINE_BYTES);
    let partBytes = 0;
    while (written < entries && partBytes < PART_BYTES) {
      let text = '';
      for (const stop = Math.min(entries, written + LINES_PER_WRITE); written < stop; written++) {
        const line = nextLine();
        text += `${line}\n`;
        offsetSum += offset;
        charSum += line.length - 1; // the TAB is neither key nor label
        offset += line.length + 1;
      }
      partBytes += part.write(text, partBytes, 'latin1');
    }
    return part.subarray(0, partBytes);
  };

  const { UploadId: uploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: 'text/plain' }));
  if (uploadId === undefined) throw new Error(`CreateMultipartUpload for s3://${bucket}/${key} returned no UploadId`);
  try {
    const parts: CompletedPart[] = [];
    let part = nextPart();
    while (part !== undefined) {
      const partNumber = parts.length + 1;
      const upload = s3.send(
        new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: part, ContentLength: part.byteLength }),
      );
      // The next part is built while this one is on the wire.
      const following = nextPart();
      const { ETag } = await upload;
      parts.push({ PartNumber: partNumber, ...(ETag !== undefined && { ETag }) });
      part = following;
    }
    await s3.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
  } catch (error) {
    await s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
    throw error;
  }
  return { key, entries, sizeBytes: offset, offsetSum, charSum };
}
