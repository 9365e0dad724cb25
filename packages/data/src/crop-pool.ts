/**
 * A pool of worker threads that decode images and cut their multi-crop views, so the data
 * loader's CPU work runs beside the training step instead of on its thread. Crops are
 * written into a crop-major batch over SharedArrayBuffers ({@link allocateCropBatch}), so
 * a batch is never copied between threads.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { CropBatch, MultiCropConfig } from '@dinofleet/dino';
import type { DecodedImage } from './fashion-mnist.ts';
import type { CropJobMessage, CropResultMessage, CropTarget, ObjectToFetch } from './crop-pool-protocol.ts';
import type { FetchSkipReason } from './image-fetcher.ts';
import { DEFAULT_MAX_DECODE_PIXELS, DecodeError, DecodeErrorCode } from './image-decode.ts';

/** Options of {@link CropPool}. */
export interface CropPoolOptions {
  /** Threads, 1–256. @default the machine's available parallelism */
  readonly threads?: number;
  /** Jobs handed to one thread at once (some wait on S3 or decode in libvips while one crops), 1–64. @default 4 */
  readonly jobsPerThread?: number;
  /** Largest accepted width × height, pixels. @default 50,000,000 */
  readonly maxPixels?: number;
}

/** What one decode-and-crop job took. */
export interface CropJobResult {
  readonly width: number;
  readonly height: number;
  /** Seconds spent decoding, in the thread. */
  readonly decodeSeconds: number;
  /** Seconds spent cropping, in the thread. */
  readonly cropSeconds: number;
  /** Encoded bytes read. */
  readonly bytesRead: number;
  /** Why each retried GET failed (the thread read the object itself). */
  readonly retries: readonly string[];
}

/** The object a job was to read could not be read: missing, too large, or failing after retries. */
export class ObjectReadError extends Error {
  override readonly name = 'ObjectReadError';
  /** Why: `missing`, `decode_error` (larger than allowed), `read_error` (retries used up). */
  readonly code: FetchSkipReason;
  /** Why each retried GET failed. */
  readonly retries: readonly string[];

  constructor(code: FetchSkipReason, message: string, retries: readonly string[]) {
    super(message);
    this.code = code;
    this.retries = retries;
  }
}

/** Where a job's encoded image comes from. */
export type ImageSource = { readonly bytes: Uint8Array } | { readonly fetch: ObjectToFetch };

/** Thrown when the pool is closed while jobs wait, or a thread dies under a job. */
export class CropPoolError extends Error {
  override readonly name = 'CropPoolError';
  /** Stable code. */
  readonly code = 'crop_pool_failed';
}

interface PendingJob {
  readonly message: CropJobMessage;
  readonly resolve: (result: CropResultMessage & { ok: true }) => void;
  readonly reject: (error: Error) => void;
}

interface PoolThread {
  worker: Worker;
  readonly inFlight: Map<number, PendingJob>;
}

const THREAD_BOOT_URL = new URL('./crop-pool-boot.mjs', import.meta.url);
const THREAD_URL = new URL('./crop-pool-thread.ts', import.meta.url);

/**
 * A fixed set of threads; jobs queue in order and each thread takes up to
 * `jobsPerThread` at once. A thread that dies fails its jobs and is replaced.
 */
export class CropPool {
  readonly threads: number;
  readonly #jobsPerThread: number;
  readonly #maxPixels: number;
  readonly #pool: PoolThread[] = [];
  readonly #queue: PendingJob[] = [];
  #nextId = 1;
  #closed = false;

  constructor(options: CropPoolOptions = {}) {
    const threads = options.threads ?? availableParallelism();
    const jobsPerThread = options.jobsPerThread ?? 4;
    if (!Number.isInteger(threads) || threads < 1 || threads > 256) throw new RangeError(`threads must be an integer in [1, 256], got ${threads}`);
    if (!Number.isInteger(jobsPerThread) || jobsPerThread < 1 || jobsPerThread > 64) {
      throw new RangeError(`jobsPerThread must be an integer in [1, 64], got ${jobsPerThread}`);
    }
    this.threads = threads;
    this.#jobsPerThread = jobsPerThread;
    this.#maxPixels = options.maxPixels ?? DEFAULT_MAX_DECODE_PIXELS;
    for (let i = 0; i < threads; i++) this.#pool.push(this.#spawn());
  }

  #spawn(): PoolThread {
    const thread: PoolThread = { worker: new Worker(THREAD_BOOT_URL, { workerData: THREAD_URL.href }), inFlight: new Map() };
    thread.worker.unref();
    thread.worker.on('message', (result: CropResultMessage) => {
      const job = thread.inFlight.get(result.id);
      if (job === undefined) return;
      thread.inFlight.delete(result.id);
      if (result.ok) {
        job.resolve(result);
      } else if (result.code === 'internal') {
        job.reject(new CropPoolError(`crop thread failed: ${result.message}`));
      } else if (result.fetchFailed === true) {
        job.reject(new ObjectReadError(result.code as FetchSkipReason, result.message, result.retries ?? []));
      } else {
        job.reject(new DecodeError(result.code as DecodeErrorCode, result.message));
      }
      this.#dispatch();
    });
    const fail = (error: Error): void => {
      for (const job of thread.inFlight.values()) job.reject(new CropPoolError(`crop thread died: ${error.message}`, { cause: error }));
      thread.inFlight.clear();
      if (this.#closed) return;
      const index = this.#pool.indexOf(thread);
      if (index !== -1) this.#pool[index] = this.#spawn();
      this.#dispatch();
    };
    thread.worker.on('error', fail);
    thread.worker.on('exit', (code) => {
      if (!this.#closed) fail(new Error(`exited with code ${code}`));
    });
    return thread;
  }

  #dispatch(): void {
    while (this.#queue.length > 0) {
      let best: PoolThread | undefined;
      for (const thread of this.#pool) {
        if (thread.inFlight.size < this.#jobsPerThread && (best === undefined || thread.inFlight.size < best.inFlight.size)) best = thread;
      }
      if (best === undefined) return;
      const job = this.#queue.shift() as PendingJob;
      best.inFlight.set(job.message.id, job);
      // Keep the thread alive only while it has work: an idle pool must not hold the process open.
      best.worker.ref();
      const bytes = job.message.bytes;
      best.worker.postMessage(job.message, bytes === undefined ? [] : [bytes.buffer as ArrayBuffer]);
    }
    for (const thread of this.#pool) if (thread.inFlight.size === 0) thread.worker.unref();
  }

  #submit(source: ImageSource, channels: 1 | 3, target?: CropTarget): Promise<CropResultMessage & { ok: true }> {
    if (this.#closed) return Promise.reject(new CropPoolError('the crop pool is closed'));
    let input: Pick<CropJobMessage, 'bytes' | 'fetch'>;
    if ('bytes' in source) {
      // The thread gets its own copy (transferred, not cloned again): the caller keeps its
      // bytes, e.g. to crop the image again into another slot.
      const owned = source.bytes.slice();
      if (owned.byteLength === 0) return Promise.reject(new DecodeError(DecodeErrorCode.Empty, 'the image has 0 bytes'));
      input = { bytes: owned };
    } else {
      input = { fetch: source.fetch };
    }
    return new Promise((resolve, reject) => {
      const message: CropJobMessage = { id: this.#nextId++, ...input, channels, maxPixels: this.#maxPixels, ...(target !== undefined && { target }) };
      this.#queue.push({ message, resolve, reject });
      this.#dispatch();
    });
  }

  /**
   * Reads the image (the bytes given, or the object, which the thread GETs itself with
   * retries), decodes it and writes its crops into `target`. Rejects with an
   * {@link ObjectReadError} when the object cannot be read, a {@link DecodeError} for a bad
   * image, a {@link CropPoolError} if the pool fails. Bytes given stay the caller's.
   */
  async loadAndCrop(source: ImageSource, channels: 1 | 3, target: CropTarget): Promise<CropJobResult> {
    const { width, height, decodeSeconds, cropSeconds, bytesRead, retries } = await this.#submit(source, channels, target);
    return { width, height, decodeSeconds, cropSeconds, bytesRead, retries };
  }

  /** Decodes `bytes` and writes the image's crops into `target` ({@link loadAndCrop} of bytes). */
  decodeAndCrop(bytes: Uint8Array, channels: 1 | 3, target: CropTarget): Promise<CropJobResult> {
    return this.loadAndCrop({ bytes }, channels, target);
  }

  /** Decodes `bytes` in a thread (no crops). Same errors as {@link decodeAndCrop}. */
  async decode(bytes: Uint8Array, channels: 1 | 3): Promise<DecodedImage & { readonly decodeSeconds: number }> {
    const result = await this.#submit({ bytes }, channels);
    if (result.pixels === undefined) throw new CropPoolError('the crop thread sent no pixels');
    return { data: result.pixels, width: result.width, height: result.height, channels, decodeSeconds: result.decodeSeconds };
  }

  /** Jobs queued or running. */
  get pending(): number {
    return this.#queue.length + this.#pool.reduce((sum, thread) => sum + thread.inFlight.size, 0);
  }

  /** Fails queued and running jobs and stops the threads. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new CropPoolError('the crop pool is closed');
    for (const job of this.#queue.splice(0)) job.reject(closed);
    for (const thread of this.#pool) {
      for (const job of thread.inFlight.values()) job.reject(closed);
      thread.inFlight.clear();
    }
    await Promise.allSettled(this.#pool.map((thread) => thread.worker.terminate()));
  }

  /** `await using pool = new CropPool()` closes it. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * An empty crop-major batch of `batchSize` images for `config` over SharedArrayBuffers,
 * for {@link CropPool.decodeAndCrop} to fill.
 */
export function allocateCropBatch(config: MultiCropConfig, batchSize: number, channels: number): CropBatch {
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  const shared = (values: number): Float32Array => new Float32Array(new SharedArrayBuffer(values * Float32Array.BYTES_PER_ELEMENT));
  return {
    batchSize,
    nGlobal: 2,
    nLocal: config.nLocal,
    globalSize: config.globalSize,
    localSize: config.localSize,
    channels,
    global: shared(2 * batchSize * config.globalSize ** 2 * channels),
    local: config.nLocal > 0 ? shared(config.nLocal * batchSize * config.localSize ** 2 * channels) : new Float32Array(0),
  };
}

/** Bytes a crop batch holds. */
export function cropBatchBytes(batch: CropBatch): number {
  return batch.global.byteLength + batch.local.byteLength;
}
