/**
 * A {@link Scaler} that runs workers as local processes (`spawnService('worker', ...)` from
 * `@dinofleet/local`), ids `local-0`, `local-1`, ...; scaling down stops the highest ids.
 */
import { join } from 'node:path';
import type { Logger } from '@dinofleet/telemetry';
import type { Scaler } from './scaler.ts';

/** The part of `@dinofleet/local`'s ServiceProcess this scaler uses. */
export interface SpawnedWorker {
  readonly pid: number;
  stop(timeoutMs?: number): Promise<unknown>;
}

/** `spawnService` of `@dinofleet/local`, as this scaler calls it. */
export type SpawnWorker = (
  service: 'worker',
  options: { args: string[]; env?: Record<string, string>; logFile?: string },
) => Promise<SpawnedWorker>;

/** Options of {@link LocalProcessScaler}. */
export interface LocalProcessScalerOptions {
  /** The coordinator's gRPC address, "host:port". */
  readonly coordinatorAddress: string;
  /** `--backend` of every worker. @default 'wasm' */
  readonly backend?: string;
  /** Directory for `<id>.log` files; none: no log file. */
  readonly logDir?: string;
  /** Extra environment of the workers. */
  readonly env?: Record<string, string>;
  /** How to start a worker. @default `spawnService` from `@dinofleet/local` */
  readonly spawn?: SpawnWorker;
  readonly logger?: Logger;
}

async function defaultSpawn(): Promise<SpawnWorker> {
  // Loaded on demand: only the local scaler needs @dinofleet/local (and its s3rver).
  const { spawnService } = await import('@dinofleet/local');
  return spawnService;
}

/** Local worker processes. */
export class LocalProcessScaler implements Scaler {
  readonly #options: LocalProcessScalerOptions;
  /** Running workers by index (`local-<index>`). */
  readonly #workers = new Map<number, SpawnedWorker>();
  #serial: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(options: LocalProcessScalerOptions) {
    this.#options = options;
  }

  /** Number of worker processes running. */
  get size(): number {
    return this.#workers.size;
  }

  scaleTo(workers: number): Promise<void> {
    const next = this.#serial.then(() => this.#scaleTo(workers));
    this.#serial = next.catch(() => undefined);
    return next;
  }

  async #scaleTo(target: number): Promise<void> {
    if (this.#closed) return;
    const missing: number[] = [];
    for (let index = 0; this.#workers.size + missing.length < target; index++) {
      if (!this.#workers.has(index)) missing.push(index);
    }
    if (missing.length > 0) {
      const spawn = this.#options.spawn ?? (await defaultSpawn());
      // Started together: each waits for its own ready file, which takes seconds.
      const results = await Promise.allSettled(missing.map((index) => this.#start(spawn, index)));
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    }
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

  async #start(spawn: SpawnWorker, index: number): Promise<void> {
    const id = `local-${index}`;
    const args = ['--coordinator', this.#options.coordinatorAddress, '--worker-id', id, '--backend', this.#options.backend ?? 'wasm'];
    const worker = await spawn('worker', {
      args,
      ...(this.#options.env !== undefined && { env: this.#options.env }),
      ...(this.#options.logDir !== undefined && { logFile: join(this.#options.logDir, `${id}.log`) }),
    });
    this.#workers.set(index, worker);
    this.#options.logger?.info('started worker process', { workerId: id, pid: worker.pid });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#serial;
    const workers = [...this.#workers.values()];
    this.#workers.clear();
    await Promise.allSettled(workers.map((w) => w.stop(10_000)));
  }
}
