import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import type { DecodedImage } from './fashion-mnist.ts';
import { DecodeError, decodeImage, encodePng } from './image-decode.ts';

/** A smooth RGB test pattern (JPEG-friendly): 8-bit levels / 255. */
function pattern(height: number, width: number, channels: 1 | 3): DecodedImage {
  const data = new Float32Array(height * width * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < channels; c++) {
        const level = Math.round(((x * 7 + y * 3 + c * 60) % 256) * (c === 1 ? 0.5 : 1));
        data[(y * width + x) * channels + c] = level / 255;
      }
    }
  }
  return { data, height, width, channels };
}

async function rejection(promise: Promise<unknown>): Promise<DecodeError> {
  const error: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DecodeError);
  return error as DecodeError;
}

describe('decodeImage', () => {
  it('round-trips PNG exactly, RGB and grey', async () => {
    for (const channels of [1, 3] as const) {
      const image = pattern(13, 17, channels);
      const decoded = await decodeImage(await encodePng(image), { channels });
      expect(decoded).toMatchObject({ height: 13, width: 17, channels });
      expect(Array.from(decoded.data)).toEqual(Array.from(image.data));
    }
  });

  it('decodes JPEG within compression error', async () => {
    const image = pattern(32, 24, 3);
    const raw = Buffer.from(image.data.map((v) => Math.round(v * 255)));
    const jpeg = await sharp(raw, { raw: { width: 24, height: 32, channels: 3 } }).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toBuffer();
    const decoded = await decodeImage(jpeg, { channels: 3 });
    expect(decoded).toMatchObject({ height: 32, width: 24, channels: 3 });
    let maxError = 0;
    for (let i = 0; i < image.data.length; i++) maxError = Math.max(maxError, Math.abs(decoded.data[i]! - image.data[i]!));
    expect(maxError).toBeLessThan(12 / 255);
  });

  it('converts colour to luminance for channels 1 and grey to RGB for channels 3', async () => {
    // Pure red, green, blue pixels: luminance weights of Rec. 601 (0.299, 0.587, 0.114).
    const rgb: DecodedImage = { data: new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1]), height: 1, width: 3, channels: 3 };
    const grey = await decodeImage(await encodePng(rgb), { channels: 1 });
    expect(grey).toMatchObject({ height: 1, width: 3, channels: 1 });
    // PIL: L = R·299/1000 + G·587/1000 + B·114/1000 → 76, 150, 29.
    expect(grey.data).toEqual(new Float32Array([76 / 255, 150 / 255, 29 / 255]));
    const image = pattern(4, 5, 1);
    const asRgb = await decodeImage(await encodePng(image), { channels: 3 });
    expect(asRgb.channels).toBe(3);
    for (let i = 0; i < 20; i++) {
      expect(asRgb.data[3 * i]).toBe(image.data[i]);
      expect(asRgb.data[3 * i + 2]).toBe(image.data[i]);
    }
  });

  it('drops alpha', async () => {
    const rgba: DecodedImage = { data: new Float32Array([0.2, 0.4, 0.6, 0]), height: 1, width: 1, channels: 4 };
    const decoded = await decodeImage(await encodePng(rgba), { channels: 3 });
    expect(decoded.data).toEqual(new Float32Array([51 / 255, 102 / 255, 153 / 255]));
  });

  it('rejects empty, foreign, corrupt and truncated bytes with a DecodeError code', async () => {
    expect((await rejection(decodeImage(new Uint8Array(0), { channels: 3 }))).code).toBe('empty');
    expect((await rejection(decodeImage(new TextEncoder().encode('not an image at all'), { channels: 3 }))).code).toBe('unsupported_format');
    const gif = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#808080' } }).gif().toBuffer();
    expect((await rejection(decodeImage(gif, { channels: 3 }))).code).toBe('unsupported_format');

    const png = await encodePng(pattern(40, 40, 3));
    expect((await rejection(decodeImage(png.subarray(0, png.byteLength / 2), { channels: 3 }))).code).toBe('corrupt');
    const garbled = png.slice();
    for (let i = 60; i < garbled.byteLength - 20; i += 7) garbled[i] = (garbled[i]! * 31 + 17) & 0xff;
    expect((await rejection(decodeImage(garbled, { channels: 3 }))).code).toBe('corrupt');

    const jpeg = await sharp(Buffer.alloc(64 * 64 * 3, 90), { raw: { width: 64, height: 64, channels: 3 } }).jpeg().toBuffer();
    const truncated = await rejection(decodeImage(jpeg.subarray(0, jpeg.byteLength - 40), { channels: 1 }));
    expect(truncated.code).toBe('corrupt');
    expect(truncated.message).toMatch(/jpeg/);
    expect((await rejection(decodeImage(new Uint8Array([0xff, 0xd8, 0xff, 0, 0, 0]), { channels: 3 }))).code).toBe('corrupt');
  });

  it('rejects images over the pixel limit as too_large', async () => {
    const png = await encodePng(pattern(20, 20, 1));
    expect((await rejection(decodeImage(png, { channels: 1, maxPixels: 100 }))).code).toBe('too_large');
  });
});
