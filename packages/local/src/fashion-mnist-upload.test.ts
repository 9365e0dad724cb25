import { GetObjectCommand } from '@aws-sdk/client-s3';
import { decodeImage, fashionMnistImage, loadFashionMnist } from '@dinofleet/data';
import { describe, expect, it } from 'vitest';

import { uploadFashionMnist } from './fashion-mnist-upload.ts';
import { s3ClientFromEnv, startS3 } from './s3-server.ts';

describe('uploadFashionMnist', () => {
  it('writes PNGs that decode to the original pixels and a manifest that names them', async () => {
    await using s3 = await startS3();
    const client = s3ClientFromEnv(s3.env());
    try {
      const progress: number[] = [];
      const uploaded = await uploadFashionMnist(client, {
        bucket: 'datasets', // created by the upload
        split: 'test',
        limit: 50,
        concurrency: 8,
        onProgress: (done, total) => {
          expect(total).toBe(50);
          progress.push(done);
        },
      });
      expect(uploaded.count).toBe(50);
      expect(uploaded.manifestUri).toBe('s3://datasets/fashion-mnist/test/manifest.txt');
      expect(progress).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));

      const manifest = await client.send(new GetObjectCommand({ Bucket: 'datasets', Key: 'fashion-mnist/test/manifest.txt' }));
      const text = (await manifest.Body?.transformToString()) ?? '';
      const lines = text.split('\n');
      expect(lines.pop()).toBe('');
      expect(lines).toHaveLength(50);

      const { test } = await loadFashionMnist();
      const labelCounts = new Map<string, number>();
      for (const [index, line] of lines.entries()) {
        const [key, label] = line.split('\t');
        expect(label).toBe(String(test.labels[index]));
        expect(key).toBe(`fashion-mnist/test/${label}/${index}.png`);
        expect(key).toBe(uploaded.keys[index]);
        labelCounts.set(label!, (labelCounts.get(label!) ?? 0) + 1);

        const object = await client.send(new GetObjectCommand({ Bucket: 'datasets', Key: key }));
        expect(object.ContentType).toBe('image/png');
        const bytes = await object.Body!.transformToByteArray();
        const decoded = await decodeImage(bytes, { channels: 1 });
        const original = fashionMnistImage(test, index);
        expect([decoded.height, decoded.width, decoded.channels]).toEqual([28, 28, 1]);
        expect(decoded.data).toEqual(original.data);
      }
      // The first 50 of the class-interleaved order: 5 of each class.
      expect([...labelCounts.values()]).toEqual(Array.from({ length: 10 }, () => 5));
    } finally {
      client.destroy();
    }
  });

  it('uses the prefix given and writes an empty manifest for limit 0', async () => {
    await using s3 = await startS3({ buckets: ['bbb'] });
    const client = s3ClientFromEnv(s3.env());
    try {
      const uploaded = await uploadFashionMnist(client, { bucket: 'bbb', prefix: 'x/', split: 'train', limit: 0 });
      expect(uploaded).toEqual({ manifestUri: 's3://bbb/x/train/manifest.txt', count: 0, keys: [] });
      const manifest = await client.send(new GetObjectCommand({ Bucket: 'bbb', Key: 'x/train/manifest.txt' }));
      expect(await manifest.Body?.transformToString()).toBe('');
    } finally {
      client.destroy();
    }
  });
});
