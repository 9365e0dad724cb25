/**
 * A throw-away `redis-server` on loopback, for `dinofleet up` and integration tests.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

import { reapOnExit } from './child-reaper.ts';
import { findFreePort } from './free-port.ts';
import { LogTail } from './log-tail.ts';

/** A running Redis on `127.0.0.1`. */
export interface RedisServer {
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** The TCP port it listens on. */
  readonly port: number;
  /** OS process id of `redis-server`. */
  readonly pid: number;
  /** Its data directory. */
  readonly dir: string;
  /** Stops the server and removes its temporary directory; idempotent. */
  stop(): Promise<void>;
  /**
   * Kills the server with `signal` (default SIGKILL) and waits for it to exit, keeping its
   * data directory (start another on the same `port` and `dir` to restart it).
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Same as {@link RedisServer.stop}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@link startRedis}. */
export interface RedisServerOptions {
  /** Data directory (kept on stop). @default a fresh temporary directory, removed on stop */
  readonly dir?: string;
  /** Run with `--appendonly yes`, so a restart on the same `dir` keeps the data. @default false */
  readonly appendOnly?: boolean;
  /** Port to listen on. @default a free port (retried on a conflict) */
  readonly port?: number;
  /** Remove `dir` on stop even though it was given (a restart's second server owns it). @default false */
  readonly removeDirOnStop?: boolean;
}

/** Thrown when `redis-server` is not installed. */
export class RedisNotInstalledError extends Error {
  override readonly name = 'RedisNotInstalledError';
  /** Stable code. */
  readonly code = 'redis_not_installed';
}

/** How long Redis may take to answer PING after start, ms. */
const READY_TIMEOUT_MS = 15_000;
/** How long stop() waits after SHUTDOWN / SIGTERM before SIGKILL, ms. */
const STOP_GRACE_MS = 5_000;
/** Attempts at a random free port before giving up. */
const PORT_ATTEMPTS = 5;

/**
 * Path of `redis-server`: `$DINOFLEET_REDIS_SERVER`, then `systemPath`, then each PATH
 * entry. Throws {@link RedisNotInstalledError} saying what to install.
 */
export function findRedisServer(env: NodeJS.ProcessEnv = process.env, systemPath = '/usr/bin/redis-server'): string {
  const candidates = [
    env['DINOFLEET_REDIS_SERVER'],
    systemPath,
    ...(env['PATH'] ?? '').split(delimiter).filter((dir) => dir !== '').map((dir) => join(dir, 'redis-server')),
  ];
  for (const candidate of candidates) {
    if (candidate === undefined || candidate === '') continue;
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not this one
    }
  }
  throw new RedisNotInstalledError(
    'redis-server is not installed (looked at /usr/bin/redis-server and PATH): install it ' +
      '(`apt-get install redis-server`, `brew install redis`), or pass --redis-url to use a running Redis',
  );
}

/** Sends PING over a raw connection; true on `+PONG`. */
export function pingRedis(port: number, host = '127.0.0.1', timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let answer = '';
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'));
    });
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
  });
}

/**
 * The `process_id` the Redis on `port` reports (`INFO server`), or undefined when none
 * answers. Readiness checks compare it with the child's pid: a PING alone would be
 * answered by another Redis that already holds the port.
 */
export function redisProcessId(port: number, host = '127.0.0.1', timeoutMs = 1_000): Promise<number | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let answer = '';
    const done = (pid: number | undefined): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(pid);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    socket.once('connect', () => socket.write('INFO server\r\n'));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
      const match = /process_id:(\d+)/.exec(answer);
      if (match !== null) done(Number(match[1]));
      else if (answer.startsWith('-')) done(undefined);
    });
    socket.once('error', () => done(undefined));
    socket.once('close', () => done(undefined));
  });
}

/** Sends one inline command without waiting for an answer; resolves when sent or failed. */
function sendCommand(port: number, command: string): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => socket.destroy(), 1_000);
    const finish = (): void => {
      clearTimeout(timer);
      resolve();
    };
    socket.once('connect', () => socket.end(`${command}\r\n`));
    socket.once('error', finish);
    socket.once('close', finish);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface Started {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
}

/**
 * Starts `redis-server` on 127.0.0.1 (`--save ''`, append-only per option, data in a
 * temporary directory) and resolves once it answers (and reports its own pid). Rejects with
 * {@link RedisNotInstalledError} when the binary is missing, or with the server's output
 * when it exits or does not answer in 15 s.
 */
export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  const binary = findRedisServer();
  const ownDir = options.dir === undefined || options.removeDirOnStop === true;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'dinofleet-redis-')));
  let started: Started | undefined;
  let port = 0;
  let lastError: unknown;
  try {
    for (let attempt = 1; attempt <= (options.port === undefined ? PORT_ATTEMPTS : 1) && started === undefined; attempt++) {
      port = options.port ?? (await findFreePort());
      try {
        started = await launch(binary, dir, port, options.appendOnly ?? false);
      } catch (error) {
        lastError = error;
        // Another process took the port between the probe and the bind: try another one.
        if (!(error instanceof Error && /address already in use/i.test(error.message))) throw error;
      }
    }
    if (started === undefined) throw lastError;
  } catch (error) {
    if (ownDir) await rm(dir, { recursive: true, force: true });
    throw error;
  }

  const { child, exited } = started;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        await sendCommand(port, 'SHUTDOWN NOSAVE');
        if (!(await Promise.race([exited.then(() => true), sleep(STOP_GRACE_MS / 2).then(() => false)]))) {
          child.kill('SIGTERM');
          if (!(await Promise.race([exited.then(() => true), sleep(STOP_GRACE_MS).then(() => false)]))) {
            child.kill('SIGKILL');
            await exited;
          }
        }
      }
      if (ownDir) await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    })();
    return stopping;
  };
  return { url: `redis://127.0.0.1:${port}`, port, pid: child.pid ?? 0, dir, stop, kill, [Symbol.asyncDispose]: stop };
}

async function launch(binary: string, dir: string, port: number, appendOnly: boolean): Promise<Started> {
  const args = [
    '--bind', '127.0.0.1',
    '--port', String(port),
    '--save', '',
    '--appendonly', appendOnly ? 'yes' : 'no',
    // Every write on disk before Redis answers: a commit acknowledged to the workers must
    // survive even a SIGKILL of Redis (the exactly-once data cursor depends on it).
    '--appendfsync', 'always',
    '--dir', dir,
    '--daemonize', 'no',
    '--logfile', '',
  ];
  // Own process group, like the services: Ctrl-C reaches the command that started it, which stops it last.
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  reapOnExit(child);
  const tail = new LogTail(16 * 1024);
  child.stdout?.on('data', (chunk: Buffer) => tail.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => tail.push(chunk));
  let exitedEarly = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exitedEarly = true;
      resolve();
    });
    child.once('error', (error) => {
      tail.push(`${error.message}\n`);
      exitedEarly = true;
      resolve();
    });
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!exitedEarly) {
    if (child.pid !== undefined && (await redisProcessId(port)) === child.pid) return { child, exited };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`redis-server on port ${port} did not answer within ${READY_TIMEOUT_MS} ms:\n${tail.text()}`);
    }
    await sleep(50);
  }
  // Give the pipes a moment to deliver the last lines (the reason it exited).
  await sleep(50);
  throw new Error(`redis-server exited before it answered (code ${String(child.exitCode)}):\n${tail.text()}`);
}
