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
import { API_SCOPES, callUnary, hashApiToken, createClient, ErrorCode, fromServiceError, isDinofleetError, isServiceError, JobServiceClient, TeacherSyncClient } from '@dinofleet/proto';
import type { ApiScope, JobState, TransportSecurity } from '@dinofleet/proto';

import { createApiToken, readApiToken, tokensFileLine } from './api-token-commands.ts';
import { certificatesNote, writeDevCertificates } from './certs-command.ts';
import { CliError, ExitCode, reportError } from './cli-error.ts';
import { explainConnectionError } from './connection-errors.ts';
import { resolveFleetMemberConnection, resolveJobApiConnection } from './connection-settings.ts';
import type { ConnectionFlags, ResolvedToken } from './connection-settings.ts';
import { UNARY_DEADLINE_MS } from './deadlines.ts';
import { evalKnn, fetchJobSpec } from './eval-knn.ts';
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
  /** Environment (addresses, TLS directory, token, S3 settings). */
  readonly env: NodeJS.ProcessEnv;
  /** Input (`token hash` reads the token here). @default process.stdin */
  readonly stdin?: NodeJS.ReadableStream;
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

function collectStrings(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

interface GlobalOptions extends ConnectionFlags {
  readonly coordinator?: string;
  readonly teacherSync?: string;
}

/** Runs `use`, turning a connection failure into a message that says what to fix. */
async function explained<T>(address: string, security: TransportSecurity, token: ResolvedToken | undefined, use: () => Promise<T>): Promise<T> {
  try {
    return await use();
  } catch (error) {
    if (token !== undefined && (isDinofleetError(error) || isServiceError(error)) && fromServiceError(error).code === ErrorCode.Unauthenticated) {
      // The server's message stays; where the token came from is what the user can check.
      throw new CliError(`${ErrorCode.Unauthenticated}: ${fromServiceError(error).message} (the token came from ${token.origin})`, ExitCode.Failure, { cause: error });
    }
    throw await explainConnectionError(error, address, security);
  }
}

const CONNECTION_HELP = `
Connecting to a fleet:
  address   --coordinator / --teacher-sync, else $DINOFLEET_COORDINATOR / $DINOFLEET_TEACHER_SYNC,
            else .dinofleet/fleet.json (written by \`dinofleet up\` in this directory)
  TLS       --tls-dir DIR (ca.crt; tls.crt and tls.key too for eval knn's teacher snapshot)
            or --insecure, else $DINOFLEET_TLS_DIR, else .dinofleet/fleet.json
  token     $DINOFLEET_TOKEN (the token itself), else --token-file FILE, else $DINOFLEET_TOKEN_FILE,
            else .dinofleet/fleet.json (the admin token of \`dinofleet up\`, .dinofleet/token);
            never sent in plaintext. Scopes: read (jobs, watch, eval) < submit < admin (scale, cancel).
`;

/** Builds the program; `setExit` receives each command's exit code. */
function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command('dinofleet')
    .description('Distributed DINO pretraining: run a local fleet, submit and follow jobs, evaluate teachers, make certificates and API tokens.')
    .option('--coordinator <host:port>', 'coordinator (JobService) address; else $DINOFLEET_COORDINATOR, else .dinofleet/fleet.json')
    .option('--teacher-sync <host:port>', 'teacher-sync address; else $DINOFLEET_TEACHER_SYNC, else .dinofleet/fleet.json')
    .option('--tls-dir <dir>', "TLS directory with the fleet's ca.crt (and tls.crt/tls.key); else $DINOFLEET_TLS_DIR, else .dinofleet/fleet.json")
    .option('--insecure', 'plaintext without a token, for a fleet started with --insecure (with `up`: start one)')
    .option('--token-file <file>', 'file holding the API token (unless $DINOFLEET_TOKEN holds one); else $DINOFLEET_TOKEN_FILE, else .dinofleet/fleet.json')
    .addHelpText('after', CONNECTION_HELP)
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    });

  const globals = (): GlobalOptions => program.opts<GlobalOptions>();
  const jobApi = async (): Promise<{ client: JobServiceClient; run: <T>(use: () => Promise<T>) => Promise<T> }> => {
    const { address } = await resolveAddress('coordinator', { flag: globals().coordinator, env: io.env, cwd: io.cwd });
    const connection = await resolveJobApiConnection(globals(), io);
    if (connection.token?.warning !== undefined) io.stderr.write(`warning: ${connection.token.warning}\n`);
    const client = createClient(JobServiceClient, address, connection.clientOptions);
    return { client, run: (use) => explained(address, connection.transport.security, connection.token, use) };
  };
  const jobClient = async <T>(use: (client: JobServiceClient) => Promise<T>): Promise<T> => {
    const { client, run } = await jobApi();
    try {
      return await run(() => use(client));
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
    .addHelpText(
      'after',
      `
Security: the fleet uses mutual TLS with its own development CA in .dinofleet/tls (created once,
then reused) and API tokens: .dinofleet/api-tokens is the coordinator's tokens file, .dinofleet/token
holds the admin token (token.submit and token.read the others), all mode 0600. .dinofleet/fleet.json
names them, so later commands in this directory need no flags. Global --insecure starts the fleet in
plaintext without tokens instead (every service logs a warning).`,
    )
    .action(async (options: { workers: number; redisUrl?: string; s3Endpoint?: string; backend: 'wasm' | 'cpu' | 'tensorflow'; logDir: string; prometheus?: boolean }) => {
      if (globals().tlsDir !== undefined || globals().tokenFile !== undefined) {
        throw new CliError('up makes (and reuses) its own certificates and tokens in .dinofleet; --tls-dir and --token-file are for the commands that connect to a fleet', ExitCode.Usage);
      }
      const signal = io.signal ?? new AbortController().signal;
      setExit(
        await runFleetUp({
          workers: options.workers,
          ...(options.redisUrl !== undefined && { redisUrl: options.redisUrl }),
          ...(options.s3Endpoint !== undefined && { s3Endpoint: options.s3Endpoint }),
          backend: options.backend,
          logDir: resolvePath(io.cwd, options.logDir),
          ...(options.prometheus === true && { prometheus: true }),
          ...(globals().insecure === true && { insecure: true }),
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
          let teacher: TeacherSource;
          // Wraps the call that reads the teacher (teacher-sync's errors explained for its address).
          let teacherCall: <T>(use: () => Promise<T>) => Promise<T> = (use) => use();
          if (options.randomInit === true) {
            teacher = { kind: 'random-init' };
          } else if (options.checkpoint !== undefined) {
            const s3 = await s3FromFleet();
            closers.push(() => s3.destroy());
            teacher = { kind: 'checkpoint', s3, uri: options.checkpoint };
          } else {
            const { address } = await resolveAddress('teacherSync', { flag: globals().teacherSync, env: io.env, cwd: io.cwd });
            const connection = await resolveFleetMemberConnection(globals(), io, 'eval knn (without --checkpoint or --random-init)');
            const client = createClient(TeacherSyncClient, address, connection.clientOptions);
            closers.push(() => client.close());
            teacher = { kind: 'snapshot', client, step: options.step };
            teacherCall = (use) => explained(address, connection.transport.security, undefined, use);
          }
          let jobSpec = spec;
          if (jobSpec === undefined) {
            const { client, run } = await jobApi();
            closers.push(() => client.close());
            jobSpec = await run(() => fetchJobSpec(client, jobId));
          }
          const evalSpec = jobSpec;
          const result = await teacherCall(() =>
            evalKnn({
              jobId,
              spec: evalSpec,
              teacher,
              train: options.train,
              test: options.test,
              k: options.k,
              backend: options.backend,
            }),
          );
          io.stdout.write(`${JSON.stringify(result)}\n`);
        } finally {
          for (const close of closers) close();
        }
      },
    );

  program
    .command('certs')
    .description('write development certificates for --tls-dir: a new CA (ca.crt, ca.key) and one fleet certificate (tls.crt, tls.key)')
    .requiredOption('--out <dir>', 'directory to write (created if missing)')
    .option('--host <name>', 'DNS name or IP address the fleet certificate is also for, besides localhost, 127.0.0.1 and ::1 (repeatable)', collectStrings)
    .option('--days <n>', 'days the certificates are valid (1-3650)', positiveInteger, 365)
    .option('--force', 'replace certificates that exist in the directory')
    .addHelpText(
      'after',
      `
Prints the paths written on stdout and a note on stderr. ca.key signs new fleet members: keep it off
the fleet's machines. These certificates are for development; in production use cert-manager or your
own PKI, with the same file names.`,
    )
    .action(async (options: { out: string; host?: string[]; days: number; force?: boolean }) => {
      const paths = await writeDevCertificates({
        out: resolvePath(io.cwd, options.out),
        ...(options.host !== undefined && { hosts: options.host }),
        days: options.days,
        ...(options.force === true && { force: true }),
      });
      io.stdout.write(paths.map((path) => `${path}\n`).join(''));
      io.stderr.write(certificatesNote(paths, options.days));
    });

  const tokenCommand = program.command('token').description('job API tokens: create one, or hash one made elsewhere');
  const scopeOption = (): Option => new Option('--scope <scope>', 'what the token may do: read (get, list, watch) < submit < admin (scale, cancel)').choices([...API_SCOPES]);
  tokenCommand
    .command('create')
    .description('generate a token: the token alone on stdout (shown once), its tokens-file line on stderr')
    .requiredOption('--name <name>', 'who holds it (1-64 of A-Z a-z 0-9 . _ @ -): named in the coordinator\'s logs and per-caller limits')
    .addOption(scopeOption().makeOptionMandatory())
    .option('--tokens-file <file>', 'also append the line to this tokens file (the coordinator\'s --api-tokens; created mode 0600)')
    .addHelpText(
      'after',
      `
Output: stdout is the token and a newline, nothing else, so TOKEN=$(dinofleet token create ...)
captures it; everything else goes to stderr. The coordinator stores only the line
"name scope sha256:<hex>" (in its --api-tokens file); dinofleet keeps no copy of the token.`,
    )
    .action(async (options: { name: string; scope: ApiScope; tokensFile?: string }) => {
      const tokensFile = options.tokensFile !== undefined ? resolvePath(io.cwd, options.tokensFile) : undefined;
      const created = await createApiToken({ name: options.name, scope: options.scope, ...(tokensFile !== undefined && { tokensFile }) });
      io.stdout.write(`${created.token}\n`);
      io.stderr.write(
        tokensFile !== undefined
          ? `appended to ${options.tokensFile ?? tokensFile}:\n${created.line}\nthe coordinator reads its tokens file at start: restart it to accept this token.\n`
          : `add this line to the coordinator's tokens file (--api-tokens):\n${created.line}\n`,
      );
      io.stderr.write('the token is shown only this once: keep it secret, e.g. in a file of mode 0600 for --token-file.\n');
    });
  tokenCommand
    .command('hash')
    .description('read a token on stdin and print its hash (sha256:<hex>), or its tokens-file line with --name and --scope')
    .option('--name <name>', 'print the whole tokens-file line for this name (needs --scope)')
    .addOption(scopeOption())
    .action(async (options: { name?: string; scope?: ApiScope }) => {
      if ((options.name === undefined) !== (options.scope === undefined)) throw new CliError('--name and --scope go together', ExitCode.Usage);
      const stdin = io.stdin ?? process.stdin;
      if ((stdin as { isTTY?: boolean }).isTTY === true) io.stderr.write('paste the token, then press Enter and Ctrl-D\n');
      const token = await readApiToken(stdin);
      const hash = hashApiToken(token);
      io.stdout.write(`${options.name !== undefined && options.scope !== undefined ? tokensFileLine({ name: options.name, scope: options.scope, hash }) : hash}\n`);
    });

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
    ...(io.stdin !== undefined && { stdin: io.stdin }),
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
