/**
 * The `dinofleet` command line (commander). Every command is a thin layer over an exported
 * function; {@link runCli} returns the exit code instead of exiting, so tests run it
 * in-process.
 */
import { resolve as resolvePath } from 'node:path';

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { parseComputeBackend } from '@dinofleet/compute';
import type { ComputeBackend } from '@dinofleet/compute';
import { createS3Client, resolveS3Config } from '@dinofleet/data';
import { callUnary, createClient, JobServiceClient, TeacherSyncClient } from '@dinofleet/proto';
import type { JobState } from '@dinofleet/proto';

import { CliError, ExitCode, reportError } from './cli-error.ts';
import { UNARY_DEADLINE_MS } from './deadlines.ts';
import { evalKnn } from './eval-knn.ts';
import type { TeacherSource } from './eval-knn.ts';
import { readFleetFile, resolveAddress } from './fleet-file.ts';
import { uploadFashionMnist } from '@dinofleet/local';
import { runFleetUp } from './fleet-up.ts';
import { JOB_STATE_NAMES, jobStateName, parseJobState } from './job-state.ts';
import { formatJobsTable, listAllJobs } from './jobs-table.ts';
import { readJobSpecFile, submitJob, validateJobSpecText } from './submit-job.ts';
import { describeJobOutcome, exitCodeForJob, watchJob } from './watch-job.ts';

/** What the CLI reads and writes; the process's own by default. */
export interface CliIo {
  /** Results (job ids, tables, JSON lines, progress). */
  readonly stdout: NodeJS.WritableStream;
  /** Errors and notes. */
  readonly stderr: NodeJS.WritableStream;
  /** Environment (addresses, S3 settings). */
  readonly env: NodeJS.ProcessEnv;
  /** Working directory (`.dinofleet/fleet.json`, relative paths). */
  readonly cwd: string;
  /** SIGINT/SIGTERM: `up` stops the fleet, `watch` stops watching. */
  readonly signal?: AbortSignal;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be an integer >= 1');
  return n;
}

function nonNegativeInteger(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) throw new InvalidArgumentError('must be an integer >= 0');
  return n;
}

function backendOption(value: string): ComputeBackend {
  try {
    return parseComputeBackend(value);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

function collectStates(value: string, previous: JobState[] = []): JobState[] {
  const states = [...previous];
  for (const part of value.split(',')) {
    const state = parseJobState(part);
    if (state === undefined) throw new InvalidArgumentError(`must be one of ${JOB_STATE_NAMES.join(', ')}`);
    states.push(state);
  }
  return states;
}

interface GlobalOptions {
  readonly coordinator?: string;
  readonly teacherSync?: string;
}

/** Builds the program; `setExit` receives each command's exit code. */
function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command('dinofleet')
    .description('Distributed DINO pretraining: run a local fleet, submit and follow jobs, evaluate teachers.')
    .option('--coordinator <host:port>', 'coordinator (JobService) address; else $DINOFLEET_COORDINATOR, else .dinofleet/fleet.json')
    .option('--teacher-sync <host:port>', 'teacher-sync address; else $DINOFLEET_TEACHER_SYNC, else .dinofleet/fleet.json')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    });

  const globals = (): GlobalOptions => program.opts<GlobalOptions>();
  const jobClient = async <T>(use: (client: JobServiceClient) => Promise<T>): Promise<T> => {
    const { address } = await resolveAddress('coordinator', { flag: globals().coordinator, env: io.env, cwd: io.cwd });
    const client = createClient(JobServiceClient, address);
    try {
      return await use(client);
    } finally {
      client.close();
    }
  };
  const follow = async (client: JobServiceClient, jobId: string): Promise<number> => {
    const job = await watchJob(client, jobId, { out: io.stdout, ...(io.signal !== undefined && { signal: io.signal }) });
    const outcome = describeJobOutcome(job);
    const code = exitCodeForJob(job);
    if (code === ExitCode.Failure) io.stderr.write(`error: ${outcome}\n`);
    else io.stdout.write(`${outcome}\n`);
    return code;
  };

  program
    .command('up')
    .description('start Redis, S3, teacher-sync, the coordinator and N workers on loopback (foreground; Ctrl-C stops them)')
    .option('--workers <n>', 'workers to start', nonNegativeInteger, 2)
    .option('--redis-url <url>', 'use this Redis instead of starting redis-server')
    .option('--s3-endpoint <url>', 'use this S3 endpoint (credentials from AWS_*) instead of starting s3rver')
    .addOption(new Option('--backend <name>', 'workers\' compute backend').choices(['wasm', 'cpu', 'tensorflow']).default('wasm'))
    .option('--log-dir <dir>', 'directory for service and worker logs', '.dinofleet/logs')
    .option('--prometheus', 'also start Prometheus scraping the fleet, with the alert rules of deploy/prometheus/rules.yaml (installs Debian\'s prometheus when root)')
    .action(async (options: { workers: number; redisUrl?: string; s3Endpoint?: string; backend: 'wasm' | 'cpu' | 'tensorflow'; logDir: string; prometheus?: boolean }) => {
      const signal = io.signal ?? new AbortController().signal;
      setExit(
        await runFleetUp({
          workers: options.workers,
          ...(options.redisUrl !== undefined && { redisUrl: options.redisUrl }),
          ...(options.s3Endpoint !== undefined && { s3Endpoint: options.s3Endpoint }),
          backend: options.backend,
          logDir: resolvePath(io.cwd, options.logDir),
          ...(options.prometheus === true && { prometheus: true }),
          cwd: io.cwd,
          env: io.env,
          out: io.stdout,
          signal,
        }),
      );
    });

  program
    .command('submit')
    .description('check a job spec locally, then submit it; prints the job id')
    .requiredOption('-f, --file <path>', 'job spec (YAML or JSON)')
    .option('--watch', 'follow the job until it ends (exit code as for watch)')
    .option('--idempotency-key <key>', 'submitting again with the same key returns the first job')
    .action(async (options: { file: string; watch?: boolean; idempotencyKey?: string }) => {
      const file = options.file;
      const specText = await readJobSpecFile(resolvePath(io.cwd, file));
      // Refuse a bad spec before resolving addresses or dialling anything.
      validateJobSpecText(specText, file);
      await jobClient(async (client) => {
        const response = await submitJob(client, {
          specText,
          file,
          ...(options.idempotencyKey !== undefined && { idempotencyKey: options.idempotencyKey }),
        });
        io.stdout.write(`${response.jobId}\n`);
        if (!response.created) io.stderr.write(`note: job ${response.jobId} existed already for this idempotency key (${jobStateName(response.state)})\n`);
        if (options.watch === true) setExit(await follow(client, response.jobId));
      });
    });

  program
    .command('watch')
    .description('follow a job until it ends: exit 0 SUCCEEDED, 1 FAILED, 3 CANCELLED')
    .argument('<job>', 'job id')
    .action(async (jobId: string) => {
      await jobClient(async (client) => setExit(await follow(client, jobId)));
    });

  program
    .command('jobs')
    .description('list jobs, newest first')
    .option('--state <state>', `only jobs in this state (${JOB_STATE_NAMES.join(', ')}); repeat or comma-separate`, collectStates)
    .action(async (options: { state?: JobState[] }) => {
      await jobClient(async (client) => {
        const jobs = await listAllJobs(client, options.state ?? []);
        io.stdout.write(`${formatJobsTable(jobs)}\n`);
      });
    });

  program
    .command('cancel')
    .description('cancel a job')
    .argument('<job>', 'job id')
    .option('--reason <text>', 'why (recorded in the job)', '')
    .action(async (jobId: string, options: { reason: string }) => {
      await jobClient(async (client) => {
        const response = await callUnary(client, 'cancelJob', { jobId, reason: options.reason }, { deadlineMs: UNARY_DEADLINE_MS });
        io.stdout.write(`job ${response.jobId}: ${jobStateName(response.state)}\n`);
      });
    });

  program
    .command('scale')
    .description('change the number of workers of a job (from the next step boundary)')
    .argument('<job>', 'job id')
    .argument('<workers>', 'desired workers', positiveInteger)
    .action(async (jobId: string, workers: number) => {
      await jobClient(async (client) => {
        const response = await callUnary(client, 'scaleJob', { jobId, workers }, { deadlineMs: UNARY_DEADLINE_MS });
        io.stdout.write(`job ${response.jobId}: ${response.workersDesired} workers desired (current generation ${response.generation}; the fleet changes when the job forms its next generation)\n`);
      });
    });

  const s3FromFleet = async (): Promise<ReturnType<typeof createS3Client>> => {
    // Explicit S3 settings win; else the fleet `up` started.
    const fleet = await readFleetFile(io.cwd).catch(() => undefined);
    const s3Env = io.env['DINOFLEET_S3_ENDPOINT'] !== undefined ? io.env : { ...fleet?.s3Env, ...io.env };
    return createS3Client(resolveS3Config({}, s3Env));
  };

  const dataCommand = program.command('data').description('put datasets into S3');
  dataCommand
    .command('upload-fmnist')
    .description('upload Fashion-MNIST as PNG objects plus a manifest (key<TAB>label lines); prints the manifest URI')
    .option('--bucket <name>', 'bucket (created if missing)', 'dinofleet-data')
    .option('--prefix <prefix>', 'key prefix', 'fashion-mnist/')
    .addOption(new Option('--split <split>', 'which split').choices(['train', 'test']).default('train'))
    .option('--images <n>', 'first N images of a class-balanced order (default: all)', positiveInteger)
    .action(async (options: { bucket: string; prefix: string; split: 'train' | 'test'; images?: number }) => {
      const s3 = await s3FromFleet();
      try {
        let shown = 0;
        const result = await uploadFashionMnist(s3, {
          bucket: options.bucket,
          prefix: options.prefix,
          split: options.split,
          ...(options.images !== undefined && { limit: options.images }),
          onProgress: (done, total) => {
            if (done === total || done - shown >= 5000) {
              shown = done;
              io.stderr.write(`uploaded ${done}/${total}\n`);
            }
          },
        });
        io.stdout.write(`${result.manifestUri}\n`);
      } finally {
        s3.destroy();
      }
    });

  const evalCommand = program.command('eval').description('evaluate a job\'s teacher');
  evalCommand
    .command('knn')
    .description('weighted k-NN top-1 accuracy of the teacher on Fashion-MNIST; prints one JSON line')
    .option('--job <id>', 'the job (its spec from GetJob, its teacher from teacher-sync)')
    .option('--spec <file>', 'take the recipe from this spec file instead of GetJob')
    .option('--checkpoint <s3-uri>', 'evaluate this checkpoint (model.safetensors or its step prefix) instead of the snapshot')
    .option('--random-init', 'evaluate the untrained teacher (the baseline)')
    .option('--step <n>', 'teacher-sync snapshot step (0 = latest)', nonNegativeInteger, 0)
    .option('--train <n>', 'memory-bank images (first N of the train split)', positiveInteger, 10_000)
    .option('--test <n>', 'test images (first N of the held-out split)', positiveInteger, 10_000)
    .option('--k <n>', 'neighbours that vote', positiveInteger, 20)
    .option('--backend <name>', 'compute backend', backendOption, 'wasm' as ComputeBackend)
    .action(
      async (options: {
        job?: string;
        spec?: string;
        checkpoint?: string;
        randomInit?: boolean;
        step: number;
        train: number;
        test: number;
        k: number;
        backend: ComputeBackend;
      }) => {
        if (options.randomInit === true && options.checkpoint !== undefined) {
          throw new CliError('--random-init and --checkpoint exclude each other', ExitCode.Usage);
        }
        const spec = options.spec !== undefined ? validateJobSpecText(await readJobSpecFile(resolvePath(io.cwd, options.spec)), options.spec) : undefined;
        const jobId = options.job ?? spec?.metadata.name;
        if (jobId === undefined) throw new CliError('eval knn needs --job <id> (or --spec <file>)', ExitCode.Usage);
        if (spec === undefined && options.job === undefined) throw new CliError('eval knn needs --job <id>', ExitCode.Usage);

        const closers: (() => void)[] = [];
        try {
          let jobs: JobServiceClient | undefined;
          if (spec === undefined) {
            const { address } = await resolveAddress('coordinator', { flag: globals().coordinator, env: io.env, cwd: io.cwd });
            jobs = createClient(JobServiceClient, address);
            const opened = jobs;
            closers.push(() => opened.close());
          }
          let teacher: TeacherSource;
          if (options.randomInit === true) {
            teacher = { kind: 'random-init' };
          } else if (options.checkpoint !== undefined) {
            const s3 = await s3FromFleet();
            closers.push(() => s3.destroy());
            teacher = { kind: 'checkpoint', s3, uri: options.checkpoint };
          } else {
            const { address } = await resolveAddress('teacherSync', { flag: globals().teacherSync, env: io.env, cwd: io.cwd });
            const client = createClient(TeacherSyncClient, address);
            closers.push(() => client.close());
            teacher = { kind: 'snapshot', client, step: options.step };
          }
          const result = await evalKnn({
            jobId,
            ...(spec !== undefined && { spec }),
            ...(jobs !== undefined && { jobs }),
            teacher,
            train: options.train,
            test: options.test,
            k: options.k,
            backend: options.backend,
          });
          io.stdout.write(`${JSON.stringify(result)}\n`);
        } finally {
          for (const close of closers) close();
        }
      },
    );

  return program;
}

/** Commander errors that are not failures. */
const OK_COMMANDER_CODES = new Set(['commander.helpDisplayed', 'commander.version', 'commander.help']);

/**
 * Runs `dinofleet <argv>` (without the node and script arguments) and resolves with the
 * exit code: 0 ok, 1 failure, 2 bad usage or a refused spec, 3 watched job cancelled,
 * 130 interrupted. Errors are printed to `io.stderr` as `error: …`, never as a stack.
 */
export async function runCli(argv: readonly string[], io: Partial<CliIo> = {}): Promise<number> {
  const fullIo: CliIo = {
    stdout: io.stdout ?? process.stdout,
    stderr: io.stderr ?? process.stderr,
    env: io.env ?? process.env,
    cwd: io.cwd ?? process.cwd(),
    ...(io.signal !== undefined && { signal: io.signal }),
  };
  let exitCode: number = ExitCode.Ok;
  const program = buildProgram(fullIo, (code) => {
    exitCode = code;
  });
  if (argv.length === 0) {
    program.outputHelp({ error: true });
    return ExitCode.Usage;
  }
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander printed its message already.
      return OK_COMMANDER_CODES.has(error.code) ? ExitCode.Ok : ExitCode.Usage;
    }
    const report = reportError(error);
    fullIo.stderr.write(`${report.message}\n`);
    return report.exitCode;
  }
}
