import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { GetObjectCommand } from '@aws-sdk/client-s3';
import { s3ClientFromEnv, startS3 } from '@dinofleet/local';
import { describe, expect, it } from 'vitest';

import { runCli } from './program.ts';
import { BAD_SPEC, CapturedOutput, tempDir } from './testing/capture.ts';

async function run(argv: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new CapturedOutput();
  const stderr = new CapturedOutput();
  const code = await runCli(argv, { stdout, stderr, env, cwd });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

describe('dinofleet argument errors', () => {
  it.each([
    [['submit'], /required option '-f, --file <path>' not specified/],
    [['watch'], /missing required argument 'job'/],
    [['scale', 'job-1', 'many'], /'many' is invalid for argument 'workers'\. must be an integer >= 1/],
    [['scale', 'job-1', '0'], /must be an integer >= 1/],
    [['jobs', '--state', 'sleeping'], /must be one of queued, starting, running, succeeded, failed, cancelled/],
    [['up', '--workers', '-1'], /must be an integer >= 0/],
    [['up', '--backend', 'gpu'], /Allowed choices are wasm, cpu, tensorflow/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['watch', 'job-1', '--bogus'], /unknown option '--bogus'/],
  ])('%j exits 2 with a message', async (argv, message) => {
    await using dir = await tempDir();
    const result = await run(argv, dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('exits 2 with usage when no command is given, 0 for --help', async () => {
    await using dir = await tempDir();
    expect((await run([], dir.path)).code).toBe(2);
    const help = await run(['--help'], dir.path);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: dinofleet/);
  });

  it('says how to find the coordinator when no address is known', async () => {
    await using dir = await tempDir();
    const result = await run(['jobs'], dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(
      'error: no coordinator address: run `dinofleet up` in this directory, pass --coordinator host:port, or set DINOFLEET_COORDINATOR\n',
    );
  });

  it('refuses eval knn with both --random-init and --checkpoint', async () => {
    await using dir = await tempDir();
    const result = await run(['eval', 'knn', '--job', 'j', '--random-init', '--checkpoint', 's3://b/k/'], dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--random-init and --checkpoint exclude each other/);
  });
});

describe('dinofleet submit', () => {
  it('refuses a bad spec locally, naming every field with line:col, before needing a server', async () => {
    await using dir = await tempDir();
    await writeFile(join(dir.path, 'job.yaml'), BAD_SPEC);
    // No address anywhere and a coordinator that does not exist: only local validation can answer.
    const result = await run(['submit', '-f', 'job.yaml', '--coordinator', '127.0.0.1:1'], dir.path);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      [
        'error: job.yaml: invalid job spec (5 problems), nothing was submitted:',
        '  job.yaml:4:3: metadata.name: must be a DNS-1123 label: 1-63 lowercase letters, digits or \'-\', starting and ending with a letter or digit, got "Bad_Name"',
        '  job.yaml:7:5: spec.data.manifest: must be an s3:// object URI such as s3://bucket/path/manifest.txt; it must start with s3://, got "http://nope"',
        '  job.yaml:11:5: spec.training.globalBatchSize: must be an integer in [1, 1048576], got 0',
        '  job.yaml:8:3: spec.training: must set exactly one of steps or epochs, got both (steps 10, epochs 3)',
        '  job.yaml:14:5: spec.fleet.colour: unknown field; allowed: workers, minWorkers, maxWorkers',
        '',
      ].join('\n'),
    );
  });

  it('reports a missing file as a usage error', async () => {
    await using dir = await tempDir();
    const result = await run(['submit', '-f', 'nope.yaml'], dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^error: cannot read .*nope\.yaml: no such file\n$/);
  });

  it('reports a YAML syntax error with its position', async () => {
    await using dir = await tempDir();
    await writeFile(join(dir.path, 'broken.yaml'), 'apiVersion: dinofleet/v1\nkind: [unclosed\n');
    const result = await run(['submit', '-f', 'broken.yaml'], dir.path);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/broken\.yaml:\d+:\d+: /);
  });
});

describe('dinofleet data upload-fmnist', () => {
  it('uploads PNGs and a manifest to the S3 named by the environment and prints the manifest URI', async () => {
    await using dir = await tempDir();
    await using s3 = await startS3();
    const result = await run(['data', 'upload-fmnist', '--bucket', 'cli-data', '--images', '12'], dir.path, s3.env());
    expect(result.stderr).toContain('uploaded 12/12');
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('s3://cli-data/fashion-mnist/train/manifest.txt\n');
    const client = s3ClientFromEnv(s3.env());
    try {
      const manifest = await client.send(new GetObjectCommand({ Bucket: 'cli-data', Key: 'fashion-mnist/train/manifest.txt' }));
      const lines = (await manifest.Body?.transformToString())?.trim().split('\n') ?? [];
      expect(lines).toHaveLength(12);
      expect(lines.every((line) => /^fashion-mnist\/train\/\d\/\d+\.png\t\d$/.test(line))).toBe(true);
    } finally {
      client.destroy();
    }
  });
});
