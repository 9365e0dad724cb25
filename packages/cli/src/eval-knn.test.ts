import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { PutObjectCommand } from '@aws-sdk/client-s3';
import { parseJobSpec, resolveRecipe } from '@dinofleet/config';
import { encodeSafetensors } from '@dinofleet/data';
import type { NamedTensor } from '@dinofleet/data';
import { createDinoState, disposeDinoState } from '@dinofleet/dino';
import { s3ClientFromEnv, startS3 } from '@dinofleet/local';
import {
  createClient,
  GrpcServer,
  NotFoundError,
  serverCredentials,
  serverStreamHandler,
  TeacherSyncClient,
  TeacherSyncService,
  unaryHandler,
  UnimplementedError,
} from '@dinofleet/proto';
import type { GetTeacherSnapshotRequest, GetTeacherSnapshotResponse, TeacherSyncServer, TransportSecurity } from '@dinofleet/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { evalKnn } from './eval-knn.ts';
import { runCli } from './program.ts';
import { CapturedOutput, tempDir, VALID_SPEC } from './testing/capture.ts';
import { fakeJob, JobState, startFakeJobService } from './testing/fake-job-service.ts';
import { createFleetSecurity } from './testing/fleet-security.ts';
import type { FleetSecurityFixture } from './testing/fleet-security.ts';

let fleet: FleetSecurityFixture;
beforeAll(async () => {
  fleet = await createFleetSecurity();
});
afterAll(async () => {
  await fleet[Symbol.asyncDispose]();
});

const SPEC = parseJobSpec(VALID_SPEC); // seed 7
const OTHER_SEED_SPEC = parseJobSpec(VALID_SPEC.replace('seed: 7', 'seed: 8'));
// Every call names the backend, so any test runs alone (e.g. with -t).
const COUNTS = { train: 120, test: 40, backend: 'wasm' } as const;

/** The random-init teacher of `seed` as safetensors tensors, names prefixed with `prefix`. */
function teacherTensors(seed: number, prefix = ''): Record<string, NamedTensor> {
  const state = createDinoState(resolveRecipe(SPEC), seed, { totalSteps: 1 });
  try {
    return Object.fromEntries(
      Object.entries(state.teacher).map(([name, variable]) => [`${prefix}${name}`, { shape: variable.shape, data: variable.dataSync() as Float32Array }]),
    );
  } finally {
    disposeDinoState(state);
  }
}

/**
 * A TeacherSync serving `bytes` as job `jobId`'s snapshot at `step` (with `sha256`, by
 * default the right one); with `security`, for fleet members only as the real one.
 */
async function startFakeTeacherSync(
  jobId: string,
  step: number,
  bytes: Uint8Array,
  sha256?: Buffer,
  security?: TransportSecurity,
): Promise<{ address: string } & AsyncDisposable> {
  const unimplemented = unaryHandler<unknown, never>(() => Promise.reject(new UnimplementedError('not scripted')));
  const implementation: TeacherSyncServer = {
    pushTeacherSums: unimplemented,
    getCenter: unimplemented,
    attestTeacher: unimplemented,
    watchCenters: serverStreamHandler<unknown, never>(() => {
      throw new UnimplementedError('not scripted');
    }),
    getTeacherSnapshot: serverStreamHandler(async function* (request: GetTeacherSnapshotRequest): AsyncGenerator<GetTeacherSnapshotResponse> {
      await Promise.resolve();
      if (request.jobId !== jobId) throw new NotFoundError(`no teacher snapshot for job ${request.jobId}`);
      const digest = sha256 ?? createHash('sha256').update(bytes).digest();
      yield {
        part: {
          $case: 'header',
          header: { jobId, generation: 1, step, sizeBytes: bytes.length, sha256: digest, format: 'safetensors', storeUri: '', verified: true },
        },
      };
      const chunkBytes = 256 * 1024;
      for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
        yield { part: { $case: 'chunk', chunk: { offset, data: Buffer.from(bytes.subarray(offset, offset + chunkBytes)) } } };
      }
    }),
    putTeacherSnapshot: (_call, callback) => callback(new UnimplementedError('not scripted') as never, null),
  };
  const server = new GrpcServer(security !== undefined ? { credentials: serverCredentials(security, { clientCertificate: 'require' }) } : {});
  server.addService(TeacherSyncService, implementation);
  const { address } = await server.start();
  return { address, [Symbol.asyncDispose]: () => server.close(100) };
}

describe('evalKnn', () => {
  it('evaluates the snapshot teacher-sync serves: the same number as that teacher evaluated directly', async () => {
    // The job was submitted with seed 7; the snapshot holds seed 8's initial teacher, so
    // the result must be seed 8's random-init accuracy, not seed 7's.
    await using teacherSync = await startFakeTeacherSync('job-a', 40, encodeSafetensors(teacherTensors(8)));
    const client = createClient(TeacherSyncClient, teacherSync.address);
    try {
      const fromSnapshot = await evalKnn({ jobId: 'job-a', spec: SPEC, teacher: { kind: 'snapshot', client }, ...COUNTS });
      const expected = await evalKnn({ jobId: 'job-a', spec: OTHER_SEED_SPEC, teacher: { kind: 'random-init' }, ...COUNTS });
      const ownSeed = await evalKnn({ jobId: 'job-a', spec: SPEC, teacher: { kind: 'random-init' }, ...COUNTS });
      expect(fromSnapshot).toEqual({ job: 'job-a', knn_top1: expected.knn_top1, train: 120, test: 40, step: 40, verified: true });
      expect(ownSeed.step).toBe(0);
      expect(ownSeed.knn_top1).not.toBe(expected.knn_top1);
      // 40 test images: accuracy is a multiple of 1/40, and far above chance (0.1) even untrained.
      expect(Number.isInteger(fromSnapshot.knn_top1 * 40)).toBe(true);
      expect(fromSnapshot.knn_top1).toBeGreaterThan(0.3);
    } finally {
      client.close();
    }
  });

  it('prints one JSON line from `dinofleet eval knn`, with the spec read by GetJob (read token) and the snapshot over mutual TLS', async () => {
    await using teacherSync = await startFakeTeacherSync('job-b', 12, encodeSafetensors(teacherTensors(7)), undefined, fleet.security);
    await using jobs = await startFakeJobService(
      { jobs: { 'job-b': fakeJob({ jobId: 'job-b', state: JobState.JOB_STATE_RUNNING, spec: VALID_SPEC }) } },
      { security: fleet.security, tokens: fleet.entries },
    );
    await using dir = await tempDir();
    const stdout = new CapturedOutput();
    const stderr = new CapturedOutput();
    const env = {
      DINOFLEET_COORDINATOR: jobs.address,
      DINOFLEET_TEACHER_SYNC: teacherSync.address,
      DINOFLEET_TLS_DIR: fleet.tlsDir,
      DINOFLEET_TOKEN_FILE: fleet.tokenFiles.read,
    };
    const code = await runCli(['eval', 'knn', '--job', 'job-b', '--train', '120', '--test', '40'], { stdout, stderr, env, cwd: dir.path });
    expect(stderr.text).toBe('');
    expect(code).toBe(0);
    const baseline = await evalKnn({ jobId: 'job-b', spec: SPEC, teacher: { kind: 'random-init' }, ...COUNTS });
    expect(stdout.text).toBe(`${JSON.stringify({ job: 'job-b', knn_top1: baseline.knn_top1, train: 120, test: 40, step: 12, verified: true })}\n`);
    expect(jobs.callers).toEqual([{ name: 't-read', scope: 'read' }]);

    // --random-init with --spec needs neither server.
    const randomOut = new CapturedOutput();
    await writeFile(join(dir.path, 'job.yaml'), VALID_SPEC);
    const randomCode = await runCli(['eval', 'knn', '--spec', 'job.yaml', '--random-init', '--train', '120', '--test', '40'], {
      stdout: randomOut,
      stderr,
      env: {},
      cwd: dir.path,
    });
    expect(randomCode).toBe(0);
    expect(JSON.parse(randomOut.text)).toEqual({ job: 'fmnist-test', knn_top1: baseline.knn_top1, train: 120, test: 40, step: 0 });
  });

  it('refuses a snapshot whose SHA-256 does not match its header (DATA_LOSS, exit 1)', async () => {
    await using teacherSync = await startFakeTeacherSync('job-c', 5, encodeSafetensors(teacherTensors(7)), Buffer.alloc(32, 0xab));
    await using dir = await tempDir();
    await writeFile(join(dir.path, 'job.yaml'), VALID_SPEC);
    const stdout = new CapturedOutput();
    const stderr = new CapturedOutput();
    const argv = ['eval', 'knn', '--job', 'job-c', '--spec', 'job.yaml', '--teacher-sync', teacherSync.address, '--insecure'];
    const code = await runCli(argv, { stdout, stderr, env: {}, cwd: dir.path });
    expect(code).toBe(1);
    expect(stderr.text).toMatch(/^error: DATA_LOSS: teacher snapshot SHA-256 [0-9a-f]{64} does not match its header's (ab){32}\n$/);
  });

  it('needs a fleet certificate for the snapshot, and says so when the TLS directory holds only ca.crt', async () => {
    await using teacherSync = await startFakeTeacherSync('job-f', 5, encodeSafetensors(teacherTensors(7)), undefined, fleet.security);
    await using dir = await tempDir();
    await writeFile(join(dir.path, 'job.yaml'), VALID_SPEC);
    const stdout = new CapturedOutput();
    const stderr = new CapturedOutput();
    const argv = ['eval', 'knn', '--job', 'job-f', '--spec', 'job.yaml', '--teacher-sync', teacherSync.address, '--tls-dir', fleet.caOnlyDir];
    const code = await runCli(argv, { stdout, stderr, env: {}, cwd: dir.path });
    expect(code).toBe(2);
    expect(stderr.text).toBe(
      `error: eval knn (without --checkpoint or --random-init) talks to teacher-sync, which serves fleet members only: it needs a TLS directory with tls.crt and tls.key of the fleet CA besides ca.crt, but --tls-dir ${fleet.caOnlyDir} holds only ca.crt. ` +
        'Pass --tls-dir DIR with all three (the .dinofleet/tls of `dinofleet up` has them)\n',
    );
    // A certificate of another CA: teacher-sync's own refusal, explained.
    const rogue = new CapturedOutput();
    const rogueCode = await runCli([...argv.slice(0, -1), fleet.rogueDir], { stdout, stderr: rogue, env: {}, cwd: dir.path });
    expect(rogueCode).toBe(1);
    expect(rogue.text).toMatch(new RegExp(`^error: could not connect securely to ${teacherSync.address.replace(/[.[\]]/g, '\\$&')}: its certificate was not issued by the CA in .*rogue/ca\\.crt`));
    expect(stdout.text).toBe('');
  });

  it('says which parameters a snapshot lacks or has in the wrong shape', async () => {
    const tensors = teacherTensors(7);
    delete tensors['backbone.cls_token'];
    tensors['backbone.pos_embed'] = { shape: [1, 2], data: new Float32Array(2) };
    await using teacherSync = await startFakeTeacherSync('job-d', 5, encodeSafetensors(tensors));
    const client = createClient(TeacherSyncClient, teacherSync.address);
    try {
      const error = await evalKnn({ jobId: 'job-d', spec: SPEC, teacher: { kind: 'snapshot', client }, ...COUNTS }).catch((e: unknown) => e);
      expect((error as Error).message).toMatch(/teacher snapshot of job-d at step 5 does not fit the job's recipe: .*backbone\.cls_token is missing/);
      expect((error as Error).message).toMatch(/backbone\.pos_embed has shape \[1, 2\], the recipe's is \[/);
    } finally {
      client.close();
    }
  });

  it('reads the teacher/ tensors of a checkpoint in S3', async () => {
    await using s3 = await startS3({ buckets: ['ckpt'] });
    const client = s3ClientFromEnv(s3.env());
    try {
      const model = encodeSafetensors({ ...teacherTensors(8, 'teacher/'), ...teacherTensors(7, 'student/') }, { step: '30' });
      const key = 'runs/job-e/step-00000030/model.safetensors';
      await client.send(new PutObjectCommand({ Bucket: 'ckpt', Key: key, Body: model }));
      const result = await evalKnn({ jobId: 'job-e', spec: SPEC, teacher: { kind: 'checkpoint', s3: client, uri: 's3://ckpt/runs/job-e/step-00000030/' }, ...COUNTS });
      const expected = await evalKnn({ jobId: 'job-e', spec: OTHER_SEED_SPEC, teacher: { kind: 'random-init' }, ...COUNTS });
      expect(result).toEqual({ job: 'job-e', knn_top1: expected.knn_top1, train: 120, test: 40, step: 30 });
    } finally {
      client.destroy();
    }
  });
});
