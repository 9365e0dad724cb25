/**
 * Messages between a {@link CropPool} and its threads (crop-pool-thread.ts). Only plain
 * data crosses: encoded bytes are transferred, crops are written straight into the
 * batch's shared buffers, so no image is copied through the message channel.
 */
import type { MultiCropConfig } from '@dinofleet/dino';
import type { BackoffOptions } from './retry-backoff.ts';
import type { S3Config } from './s3-config.ts';

/** An object for the thread to GET itself (so loading goes on while the main thread is busy). */
export interface ObjectToFetch {
  /** Settings of the thread's S3 client (one per distinct config per thread). */
  readonly s3: S3Config;
  readonly bucket: string;
  readonly key: string;
  /** Retries after a retryable failure. */
  readonly retries: number;
  readonly backoff?: BackoffOptions;
  /** Largest object accepted, bytes. */
  readonly maxObjectBytes: number;
}

/** Where the crops of one image go: a crop-major batch in shared memory. */
export interface CropTarget {
  /** The multi-crop recipe. */
  readonly config: MultiCropConfig;
  /** The step's batch seed (`stepCropSeed(seed, step)`). */
  readonly batchSeed: number;
  /** Position of the image in the global batch: picks its random stream. */
  readonly globalIndex: number;
  /** Position of the image in this rank's batch: picks its slots. */
  readonly slot: number;
  /** Images in this rank's batch. */
  readonly batchSize: number;
  /** `[2·batchSize, globalSize, globalSize, channels]` over a SharedArrayBuffer. */
  readonly global: Float32Array;
  /** `[nLocal·batchSize, localSize, localSize, channels]` over a SharedArrayBuffer. */
  readonly local: Float32Array;
}

/** Main thread → pool thread. */
export interface CropJobMessage {
  readonly id: number;
  /** The encoded image (transferred), or the object to read it from. */
  readonly bytes?: Uint8Array;
  readonly fetch?: ObjectToFetch;
  readonly channels: 1 | 3;
  readonly maxPixels: number;
  /** Crops to write; absent: send the decoded pixels back instead. */
  readonly target?: CropTarget;
}

/** Pool thread → main thread. */
export type CropResultMessage =
  | {
      readonly id: number;
      readonly ok: true;
      readonly width: number;
      readonly height: number;
      /** Seconds spent decoding. */
      readonly decodeSeconds: number;
      /** Seconds spent cropping (0 without a target). */
      readonly cropSeconds: number;
      /** Encoded bytes read (fetched, or handed over). */
      readonly bytesRead: number;
      /** Why each retried GET failed, for logs. */
      readonly retries: readonly string[];
      /** The decoded pixels, HWC in [0, 1], when the job had no target (transferred). */
      readonly pixels?: Float32Array;
    }
  | {
      readonly id: number;
      readonly ok: false;
      /** A DecodeError's code, a FetchSkipReason ('missing', 'decode_error' for an oversized object, 'read_error'), or 'internal'. */
      readonly code: string;
      /** Whether `code` is a FetchSkipReason (the GET failed) rather than a decode failure. */
      readonly fetchFailed?: boolean;
      readonly message: string;
      /** Why each retried GET failed, for logs. */
      readonly retries?: readonly string[];
    };
