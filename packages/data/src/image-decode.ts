import sharp from 'sharp';

import type { DecodedImage } from './fashion-mnist.ts';

/**
 * Image decoding for the data path: PNG or JPEG bytes from S3 to an HWC float32 image in
 * [0, 1] with libvips (via sharp). A bad image is an expected event at billions of images,
 * so every failure becomes a {@link DecodeError} the caller can count and skip.
 */

/** Why an image could not be decoded. */
export const DecodeErrorCode = {
  /** Zero bytes. */
  Empty: 'empty',
  /** Not a PNG or JPEG (another format, or not an image at all). */
  UnsupportedFormat: 'unsupported_format',
  /** A PNG/JPEG header, but the data is corrupt or truncated. */
  Corrupt: 'corrupt',
  /** More pixels than `maxPixels`. */
  TooLarge: 'too_large',
} as const;
/** Why an image could not be decoded. */
export type DecodeErrorCode = (typeof DecodeErrorCode)[keyof typeof DecodeErrorCode];

/** A decode failure with a stable {@link DecodeErrorCode}; `cause` holds libvips' error. */
export class DecodeError extends Error {
  override readonly name = 'DecodeError';
  /** Stable reason code. */
  readonly code: DecodeErrorCode;

  constructor(code: DecodeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Options of {@link decodeImage}. */
export interface DecodeImageOptions {
  /** Output channels: 1 = luma (ITU-R 601-2 weights, as PIL's `convert('L')`), 3 = sRGB. */
  readonly channels: 1 | 3;
  /** Largest accepted width × height, pixels. @default 50,000,000 */
  readonly maxPixels?: number;
}

/** Default largest accepted width × height. */
export const DEFAULT_MAX_DECODE_PIXELS = 50_000_000;

const SUPPORTED_FORMATS = new Set(['png', 'jpeg']);

function sniffFormat(bytes: Uint8Array): 'png' | 'jpeg' | undefined {
  if (bytes.byteLength >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return 'png';
  if (bytes.byteLength >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  return undefined;
}

/**
 * Decodes PNG or JPEG bytes to an HWC float32 image in [0, 1] (8-bit: v / 255; 16-bit PNGs
 * are reduced to 8 bits first). Alpha is dropped, not composited, as PIL's `convert('RGB')`
 * does; EXIF orientation is ignored, as PIL's `Image.open` does, so pixels match the
 * reference DINO pipelines. Rejects with {@link DecodeError}, never throws synchronously.
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeImageOptions): Promise<DecodedImage> {
  const { channels } = options;
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_DECODE_PIXELS;
  if (channels !== 1 && channels !== 3) throw new RangeError(`channels must be 1 or 3, got ${String(channels)}`);
  if (bytes.byteLength === 0) throw new DecodeError(DecodeErrorCode.Empty, 'the image has 0 bytes');
  // Sniff the magic bytes first: libvips would also open GIF, TIFF, SVG, … which the
  // manifest format does not promise and which have their own attack surface.
  const format = sniffFormat(bytes);
  if (format === undefined || !SUPPORTED_FORMATS.has(format)) {
    throw new DecodeError(DecodeErrorCode.UnsupportedFormat, 'not a PNG or JPEG (unknown magic bytes)');
  }
  const pipeline = sharp(bytes, {
    // 'error' also rejects truncated JPEGs, which libvips would otherwise grey-fill.
    failOn: 'error',
    limitInputPixels: maxPixels,
    autoOrient: false,
  })
    .removeAlpha()
    .toColourspace('srgb');
  let decoded;
  try {
    decoded = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const code = /pixel limit/i.test(message) ? DecodeErrorCode.TooLarge : DecodeErrorCode.Corrupt;
    throw new DecodeError(code, `cannot decode ${format}: ${message.split('\n')[0] ?? message}`, { cause: error });
  }
  const { data, info } = decoded;
  const count = info.width * info.height;
  if (info.channels !== 3 || data.byteLength !== count * 3) {
    throw new DecodeError(DecodeErrorCode.Corrupt, `decoded ${info.width}×${info.height}×${info.channels} (${data.byteLength} bytes), expected 3 channels`);
  }
  const pixels = new Float32Array(count * channels);
  if (channels === 3) {
    for (let i = 0; i < pixels.length; i++) pixels[i] = data[i]! / 255;
  } else {
    // PIL's convert('L') (ITU-R 601-2 luma on the gamma-encoded values, in 16-bit fixed
    // point with rounding), which torchvision's Grayscale also follows; libvips' `b-w`
    // weights linear light instead and would give other pixels than the reference
    // pipelines. A grey source stays exact: 19595 + 38470 + 7471 = 65536.
    for (let i = 0; i < count; i++) {
      const luma = (data[3 * i]! * 19595 + data[3 * i + 1]! * 38470 + data[3 * i + 2]! * 7471 + 0x8000) >> 16;
      pixels[i] = luma / 255;
    }
  }
  return { data: pixels, height: info.height, width: info.width, channels };
}

/**
 * Encodes an HWC image with values in [0, 1] (clamped, rounded to 8 bits) as PNG; 1, 3 or
 * 4 channels. Used to upload datasets such as Fashion-MNIST to S3 and in tests.
 */
export async function encodePng(image: DecodedImage): Promise<Uint8Array> {
  const { width, height, channels, data } = image;
  if (channels !== 1 && channels !== 3 && channels !== 4) throw new RangeError(`channels must be 1, 3 or 4, got ${channels}`);
  if (data.length !== width * height * channels) {
    throw new RangeError(`data has ${data.length} values, expected ${height}×${width}×${channels}`);
  }
  const raw = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) raw[i] = Math.round(Math.min(1, Math.max(0, data[i]!)) * 255);
  const png = await sharp(raw, { raw: { width, height, channels } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}
