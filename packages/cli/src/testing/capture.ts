/** Test helpers: a writable stream that keeps what is written, and a temp directory. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';

/** A stream that collects everything written to it as text. */
export class CapturedOutput extends Writable {
  text = '';
  /** Set to pretend to be a terminal. */
  isTTY: boolean;
  columns = 200;

  constructor(isTTY = false) {
    super();
    this.isTTY = isTTY;
  }

  override _write(chunk: Buffer | string, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.text += chunk.toString();
    callback();
  }
}

/** A temporary directory removed on dispose. */
export async function tempDir(): Promise<{ readonly path: string } & AsyncDisposable> {
  const path = await mkdtemp(join(tmpdir(), 'dinofleet-cli-test-'));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true }) };
}

/** A spec that passes the schema. */
export const VALID_SPEC = `apiVersion: dinofleet/v1
kind: TrainingJob
metadata:
  name: fmnist-test
spec:
  data:
    manifest: s3://data/fashion-mnist/train/manifest.txt
  training:
    steps: 10
    globalBatchSize: 16
    seed: 7
`;

/** A spec with five problems on known lines. */
export const BAD_SPEC = `apiVersion: dinofleet/v1
kind: TrainingJob
metadata:
  name: Bad_Name
spec:
  data:
    manifest: http://nope
  training:
    steps: 10
    epochs: 3
    globalBatchSize: 0
  fleet:
    workers: 3
    colour: blue
`;
