/**
 * A {@link Scaler} that runs workers as local processes (`spawnService('worker', ...)` from
 * `@dinofleet/local`), ids `local-0`, `local-1`, ...; scaling down stops the highest ids,
 * `release` stops the ones named. A worker process that exits on its own is replaced by a
 * new one (`local-<next index>`) while the count it should keep is not reached, so a
 * crashed worker comes back as a joiner. Worker processes of the same coordinator address
 * left by an earlier coordinator (one that was killed) are adopted, not started twice.
 */
import { join, resolve } from 'node:path';
import type { TransportSecurity } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import type { Scaler } from './scaler.ts';

/** The part of `@dinofleet/local`'s ServiceProcess this scaler uses. */
export interface SpawnedWorker {
  readonly pid: number;
  stop(timeoutMs?: number): Promise<unknown>;
  /** Settles when the process exited (absent: never watched, never replaced). */
  readonly exited?: Promise<unknown>;
}

/** `spawnService` of `@dinofleet/local`, as this scaler calls it. */
export type SpawnWorker = (
  service: 'worker',
  options: { args: string[]; env?: Record<string, string>; logFile?: string },
) => Promise<SpawnedWorker>;

/** Finds running worker processes started for this coordinator address by an earlier coordinator. */
export type FindWorkerProcesses = (coordinatorAddress: string) => Promise<readonly { pid: number; workerId: string }[]>;

/** Options of {@link LocalProcessScaler}. */
export interface LocalProcessScalerOptions {
  /** The coordinator's gRPC address, "host:port". */
  readonly coordinatorAddress: string;
  /**
   * The coordinator's own transport security, which its workers share: `--tls-dir` with
   * the same directory (the certificate of a local fleet is valid for every member), or
   * `--insecure`.
   */
  readonly security: TransportSecurity;
  /** `--backend` of every worker. @default 'wasm' */
  readonly backend?: string;
  /** Directory for `<id>.log` files; none: no log file. */
  readonly logDir?: string;
  /** Extra environment of the workers. */
  readonly env?: Record<string, string>;
  /** How to start a worker. @default `spawnService` from `@dinofleet/local` */
  readonly spawn?: SpawnWorker;
  /**
   * How to find workers an earlier coordinator at this address left running.
   * @default `listWorkerProcesses` of `@dinofleet/local` when `spawn` is not given, else none
   */
  readonly findExisting?: FindWorkerProcesses;
  /** Wait before replacing a worker that exited on its own, ms. @default 500 */
  readonly restartDelayMs?: number;
  readonly logger?: Logger;
}

async function defaultSpawn(): Promise<SpawnWorker> {
  // Loaded on demand: only the local scaler needs @dinofleet/local (and its s3rver).
  const { spawnService } = await import('@dinofleet/local');
  return spawnService;
}

async function defaultFindExisting(coordinatorAddress: string): Promise<readonly { pid: number; workerId: string }[]> {
  const { listWorkerProcesses } = await import('@dinofleet/local');
  return listWorkerProcesses(coordinatorAddress);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A worker process this scaler did not spawn: watched by polling its pid. */
function adoptedWorker(pid: number): SpawnedWorker {
  const exited = new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (isAlive(pid)) return;
      clearInterval(timer);
      resolve();
    }, 500);
    timer.unref();
  });
  return {
    pid,
    exited,
    stop: async (timeoutMs = 10_000) => {
      if (!isAlive(pid)) return;
      process.kill(pid, 'SIGTERM');
      const killed = setTimeout(() => {
        if (isAlive(pid)) process.kill(pid, 'SIGKILL');
      }, timeoutMs);
      await exited;
      clearTimeout(killed);
    },
  };
}

/** The worker flags that give it `security`: an absolute `--tls-dir` (its cwd may differ), or `--insecure`. */
export function securityArgs(security: TransportSecurity): string[] {
  return security.kind === 'mtls' ? ['--tls-dir', resolve(security.material.dir)] : ['--insecure'];
}

/** Local worker processes. */
export class LocalProcessScaler implements Scaler {
  readonly #options: LocalProcessScalerOptions;
  /** Running workers by index (`local-<index>`). */
  readonly #workers = new Map<number, SpawnedWorker>();
  #serial: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** The count to keep (what the last scaleTo asked, less releases). */
  #target = 0;
  /** Next index for a replacement: above every index used so far. */
  #nextIndex = 0;
  #adopted = false;

  constructor(options: LocalProcessScalerOptions) {
    this.#options = options;
  }

  /** Number of worker processes running. */
  get size(): number {
    return this.#workers.size;
  }

  /** Ids of the running worker processes. */
  get workerIds(): string[] {
    return [...this.#workers.keys()].sort((a, b) => a - b).map((i) => `local-${i}`);
  }

  scaleTo(workers: number): Promise<void> {
    return this.#enqueue(() => this.#scaleTo(workers));
  }

  release(workerIds: readonly string[]): Promise<void> {
    return this.#enqueue(async () => {
      const stopping: Promise<unknown>[] = [];
      for (const id of workerIds) {
        const match = /^local-(\d+)$/.exec(id);
        const index = match === null ? undefined : Number(match[1]);
        const worker = index === undefined ? undefined : this.#workers.get(index);
        if (index === undefined || worker === undefined) continue;
        this.#workers.delete(index);
        this.#target = Math.max(0, this.#target - 1);
        this.#options.logger?.info('stopping released worker process', { workerId: id, pid: worker.pid });
        stopping.push(worker.stop(10_000));
      }
      await Promise.allSettled(stopping);
    });
  }

  #enqueue(run: () => Promise<void>): Promise<void> {
    const next = this.#serial.then(run);
    this.#serial = next.catch(() => undefined);
    return next;
  }

  async #adoptExisting(): Promise<void> {
    if (this.#adopted) return;
    this.#adopted = true;
    const find = this.#options.findExisting ?? (this.#options.spawn === undefined ? defaultFindExisting : undefined);
    if (find === undefined) return;
    let found: readonly { pid: number; workerId: string }[] = [];
    try {
      found = await find(this.#options.coordinatorAddress);
    } catch (err) {
      this.#options.logger?.warn('looking for worker processes of an earlier coordinator failed', { err });
    }
    for (const { pid, workerId } of found) {
      const match = /^local-(\d+)$/.exec(workerId);
      if (match === null || pid === process.pid) continue;
      const index = Number(match[1]);
      if (this.#workers.has(index)) continue;
      this.#track(index, adoptedWorker(pid));
      this.#options.logger?.info('adopted worker process of an earlier coordinator', { workerId, pid });
    }
  }

  async #scaleTo(target: number): Promise<void> {
    if (this.#closed) return;
    await this.#adoptExisting();
    this.#target = target;
    const missing: number[] = [];
    for (let index = 0; this.#workers.size + missing.length < target; index++) {
      if (!this.#workers.has(index)) missing.push(index);
    }
    await this.#startAll(missing);
    const surplus = [...this.#workers.keys()].sort((a, b) => b - a).slice(0, Math.max(0, this.#workers.size - target));
    await Promise.allSettled(
      surplus.map((index) => {
        const worker = this.#workers.get(index);
        this.#workers.delete(index);
        this.#options.logger?.info('stopping worker process', { workerId: `local-${index}`, pid: worker?.pid });
        return worker === undefined ? Promise.resolve() : worker.stop(10_000);
      }),
    );
  }

  async #startAll(indices: readonly number[]): Promise<void> {
    if (indices.length === 0) return;
    const spawn = this.#options.spawn ?? (await defaultSpawn());
    // Started together: each waits for its own ready file, which takes seconds.
    const results = await Promise.allSettled(indices.map((index) => this.#start(spawn, index)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }

  async #start(spawn: SpawnWorker, index: number): Promise<void> {
    const id = `local-${index}`;
    const args = [
      '--coordinator', this.#options.coordinatorAddress,
      '--worker-id', id,
      '--backend', this.#options.backend ?? 'wasm',
      ...securityArgs(this.#options.security),
    ];
    this.#nextIndex = Math.max(this.#nextIndex, index + 1);
    const worker = await spawn('worker', {
      args,
      ...(this.#options.env !== undefined && { env: this.#options.env }),
      ...(this.#options.logDir !== undefined && { logFile: join(this.#options.logDir, `${id}.log`) }),
    });
    this.#track(index, worker);
    this.#options.logger?.info('started worker process', { workerId: id, pid: worker.pid });
  }

  #track(index: number, worker: SpawnedWorker): void {
    this.#nextIndex = Math.max(this.#nextIndex, index + 1);
    this.#workers.set(index, worker);
    void worker.exited?.then(() => this.#onExit(index, worker));
  }

  /** A worker process ended: replaced when we did not stop it and the count is short. */
  #onExit(index: number, worker: SpawnedWorker): void {
    if (this.#workers.get(index) !== worker) return; // stopped by us
    this.#workers.delete(index);
    if (this.#closed) return;
    this.#options.logger?.warn('worker process exited on its own', { workerId: `local-${index}`, pid: worker.pid });
    const replace = (): Promise<void> =>
      this.#enqueue(async () => {
        if (this.#closed || this.#workers.size >= this.#target) return;
        await this.#startAll([this.#nextIndex]);
      });
    setTimeout(() => {
      replace().catch((err: unknown) => this.#options.logger?.error('replacing a worker process failed', { err }));
    }, this.#options.restartDelayMs ?? 500).unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#serial;
    const workers = [...this.#workers.values()];
    this.#workers.clear();
    await Promise.allSettled(workers.map((w) => w.stop(10_000)));
  }
}
