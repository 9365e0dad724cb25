import { describe, expect, it } from 'vitest';
import { normalizeS3Prefix, parseS3Uri, s3UriProblem } from './s3-uri.ts';

describe('s3UriProblem', () => {
  it('accepts object and prefix URIs', () => {
    expect(s3UriProblem('s3://bucket/path/manifest.txt', 'object')).toBeUndefined();
    expect(s3UriProblem('s3://my.bucket-1/a', 'object')).toBeUndefined();
    expect(s3UriProblem('s3://bucket/checkpoints/', 'prefix')).toBeUndefined();
    expect(s3UriProblem('s3://bucket', 'prefix')).toBeUndefined();
  });

  it.each([
    ['https://bucket/key', 'it must start with s3://'],
    ['S3://bucket/key', 'it must start with s3://'],
    ['s3:///key', 'the bucket name is missing'],
    ['s3://ab/key', 'the bucket name must be 3-63 characters, not 2'],
    [`s3://${'a'.repeat(64)}/key`, 'the bucket name must be 3-63 characters, not 64'],
    ['s3://My_Bucket/key', "the bucket name may hold only lowercase letters, digits, '.' and '-'"],
    ['s3://-bucket/key', 'the bucket name must start and end with a lowercase letter or digit'],
    ['s3://a..b/key', "the bucket name must not contain '..'"],
    ['s3://192.168.1.1/key', 'the bucket name must not look like an IP address'],
    ['s3://bucket', 'it names a bucket, not an object (s3://bucket/path/to/object)'],
    ['s3://bucket/', 'it names a bucket, not an object (s3://bucket/path/to/object)'],
    ['s3://bucket/dir/', "it names a prefix (ends in '/'), not an object"],
    ['s3://bucket//key', "the key must not start with '/' (s3://bucket//key)"],
    ['s3://bucket/a\nb', 'the key must not contain control characters'],
    [`s3://bucket/${'é'.repeat(513)}`, 'the key must be at most 1024 bytes'],
  ])('refuses %j as an object: %s', (uri, problem) => {
    expect(s3UriProblem(uri, 'object')).toBe(problem);
  });

  it('counts the key limit in UTF-8 bytes', () => {
    expect(s3UriProblem(`s3://bucket/${'é'.repeat(512)}`, 'object')).toBeUndefined();
  });
});

describe('parseS3Uri', () => {
  it('splits bucket and key', () => {
    expect(parseS3Uri('s3://bucket/path/manifest.txt')).toEqual({ bucket: 'bucket', key: 'path/manifest.txt' });
    expect(parseS3Uri('s3://bucket', 'prefix')).toEqual({ bucket: 'bucket', key: '' });
  });

  it('throws a TypeError naming the problem', () => {
    expect(() => parseS3Uri('s3://bucket/dir/')).toThrow(/invalid S3 URI "s3:\/\/bucket\/dir\/": it names a prefix/);
  });
});

describe('normalizeS3Prefix', () => {
  it('ends a prefix with exactly one slash', () => {
    expect(normalizeS3Prefix('s3://bucket/ckpt')).toBe('s3://bucket/ckpt/');
    expect(normalizeS3Prefix('s3://bucket/ckpt/')).toBe('s3://bucket/ckpt/');
    expect(normalizeS3Prefix('s3://bucket')).toBe('s3://bucket/');
  });
});
