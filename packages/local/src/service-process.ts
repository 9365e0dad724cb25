/**
 * Running one dinofleet service (`services/<name>/src/main.ts`) as a child process and
 * waiting for its ready file (docs/cluster.md, "Processes").
 */
import { spawn } from 'node:child_process';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';

import type { ServiceReadyFile } from '@dinofleet/proto';

import { reapOnExit } from './child-reaper.ts';
import { DEFAULT_LOG_TAIL_BYTES, LogTail } from './log-tail.ts';
import { findRepoRoot, tsxLoaderUrl } from './repo-root.ts';

/** The processes of a fleet. */
export type ServiceName = 'coordinator' | 'worker' | 'teacher-sync';

/** Options of {@link spawnService}. */
export interface SpawnServiceOptions {
  /** Flags after `--ready-file <path>`. @default none */
  readonly args?: readonly string[];
  /** Environment variables, merged over `process.env`. @default none */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * File that stdout and stderr are appended to (created with its directory). @default
   * none: the output is not shown, its last 64 KiB are kept in memory for errors
   */
  readonly logFile?: string;
  /** Time the service has to write its ready file, ms. @default 90000 */
  readonly readyTimeoutMs?: number;
  /**
   * Script to run instead of `services/<name>/src/main.ts` (run with tsx the same way);
   * for tests. @default the service's main.ts
   */
  readonly entry?: string;
  /** Working directory of the child. @default `process.cwd()` */
  readonly cwd?: string;
}

/** How a process ended: exit code, or the signal that killed it. */
export interface ServiceExit {
  /** Exit code, `null` when killed by a signal. */
  readonly code: number | null;
  /** Signal that ended it, `null` when it exited. */
  readonly signal: NodeJS.Signals | null;
}

/** A service process that wrote its ready file. */
export interface ServiceProcess {
  /** Which service. */
  readonly name: ServiceName;
  /** OS process id. */
  readonly pid: number;
  /** `host:port` of its gRPC server, from the ready file. */
  readonly grpcAddress: string;
  /** `host:port` of its metrics server, from the ready file. */
  readonly metricsAddress: string;
  /** Settles when the process has exited. */
  readonly exited: Promise<ServiceExit>;
  /** SIGTERM, then SIGKILL after `timeoutMs` (default 15000); resolves once it exited. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
  /** Sends a signal (default SIGKILL) without waiting. */
  kill(signal?: NodeJS.Signals): void;
  /** The last 64 KiB of its output (from the log file when there is one). */
  logTail(): string;
  /** Same as `stop()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** A service exited or timed out before it was ready. */
export class ServiceStartError extends Error {
  override readonly name = 'ServiceStartError';
  /** Stable code. */
  readonly code = 'service_start_failed';
  /** How it exited, when it did. */
  readonly exit: ServiceExit | undefined;
  /** The end of its output. */
  readonly logTail: string;

  constructor(message: string, exit: ServiceExit | undefined, logTail: string) {
    super(logTail.trim() === '' ? message : `${message}; last output:\n${logTail.trimEnd()}`);
    this.exit = exit;
    this.logTail = logTail;
  }
}

/** Default {@link SpawnServiceOptions.readyTimeoutMs}. */
export const DEFAULT_READY_TIMEOUT_MS = 90_000;
/** Default timeout of {@link ServiceProcess.stop} before SIGKILL, ms. */
export const DEFAULT_STOP_TIMEOUT_MS = 15_000;
const READY_POLL_MS = 50;

/** Path of a service's entry point in the repository. */
export function serviceEntry(name: ServiceName): string {
  return join(findRepoRoot(), 'services', name, 'src', 'main.ts');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last `bytes` of a file, '' when it cannot be read. */
function readFileTail(path: string, bytes: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    const length = Math.min(size, bytes);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, size - length);
    return buffer.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

async function readReadyFile(path: string): Promise<ServiceReadyFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  // The service renames a complete file into place, but tolerate a writer that does not.
  try {
    const parsed = JSON.parse(text) as Partial<ServiceReadyFile>;
    if (typeof parsed.grpcAddress !== 'string' || typeof parsed.metricsAddress !== 'string') return undefined;
    return parsed as ServiceReadyFile;
  } catch {
    return undefined;
  }
}

/**
 * Runs `node --import tsx <entry> --ready-file <tmp>/ready.json ...args` and resolves once
 * the ready file is there. Rejects with {@link ServiceStartError} (exit code and log tail)
 * when the process exits first or `readyTimeoutMs` passes (the process is killed then).
 */
export async function spawnService(name: ServiceName, options: SpawnServiceOptions = {}): Promise<ServiceProcess> {
  const entry = options.entry !== undefined ? resolvePath(options.entry) : serviceEntry(name);
  const readyTimeoutMs = options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const stateDir = await mkdtemp(join(tmpdir(), `dinofleet-${name}-`));
  const readyFile = join(stateDir, 'ready.json');

  const logFile = options.logFile !== undefined ? resolvePath(options.logFile) : undefined;
  let logHandle: FileHandle | undefined;
  if (logFile !== undefined) {
    await mkdir(dirname(logFile), { recursive: true });
    // The child gets the descriptor itself, so its output does not depend on this process.
    logHandle = await open(logFile, 'a');
  }
  const logFd = logHandle?.fd;
  const memoryTail = new LogTail(DEFAULT_LOG_TAIL_BYTES);
  const child = spawn(
    process.execPath,
    ['--import', tsxLoaderUrl(), entry, '--ready-file', readyFile, ...(options.args ?? [])],
    {
      cwd: options.cwd ?? process.cwd(),
      env: { ...process.env, ...options.env },
      stdio: logFd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', logFd, logFd],
      // Its own process group: a Ctrl-C in the terminal reaches only the command that
      // started it, which stops it in order (coordinator before its workers' peers,
      // servers last) instead of every process getting SIGINT at once.
      detached: true,
    },
  );
  reapOnExit(child);
  // spawn has duplicated the descriptor into the child; ours is no longer needed.
  await logHandle?.close();
  child.stdout?.on('data', (chunk: Buffer) => memoryTail.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => memoryTail.push(chunk));
  const logTail = (): string => (logFile !== undefined ? readFileTail(logFile, DEFAULT_LOG_TAIL_BYTES) : memoryTail.text());

  const exited = new Promise<ServiceExit>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (error) => {
      memoryTail.push(`${error.message}\n`);
      resolve({ code: null, signal: null });
    });
  });
  // Output piped to us arrives after 'exit' at times; 'close' means all of it was read.
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let exitInfo: ServiceExit | undefined;
  void exited.then((info) => {
    exitInfo = info;
  });
  const cleanup = (): Promise<void> => rm(stateDir, { recursive: true, force: true });

  let stopping: Promise<void> | undefined;
  const stop = (timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> => {
    stopping ??= (async () => {
      if (exitInfo === undefined) {
        child.kill('SIGTERM');
        const done = await Promise.race([exited.then(() => true), sleep(timeoutMs).then(() => false)]);
        if (!done) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      await cleanup();
    })();
    return stopping;
  };
  const kill = (signal: NodeJS.Signals = 'SIGKILL'): void => {
    if (exitInfo === undefined) child.kill(signal);
  };

  const deadline = Date.now() + readyTimeoutMs;
  let ready: ServiceReadyFile | undefined;
  for (;;) {
    ready = await readReadyFile(readyFile);
    if (ready !== undefined) break;
    if (exitInfo !== undefined) {
      await Promise.race([closed, sleep(1_000)]);
      await cleanup();
      const how = exitInfo.signal !== null ? `signal ${exitInfo.signal}` : `code ${String(exitInfo.code)}`;
      throw new ServiceStartError(`${name} (${entry}) exited with ${how} before it was ready`, exitInfo, logTail());
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      await Promise.race([closed, sleep(1_000)]);
      await cleanup();
      throw new ServiceStartError(`${name} (${entry}) did not write its ready file within ${readyTimeoutMs} ms; killed it`, undefined, logTail());
    }
    await sleep(READY_POLL_MS);
  }

  return {
    name,
    pid: child.pid ?? ready.pid,
    grpcAddress: ready.grpcAddress,
    metricsAddress: ready.metricsAddress,
    exited,
    stop,
    kill,
    logTail,
    [Symbol.asyncDispose]: () => stop(),
  };
}
