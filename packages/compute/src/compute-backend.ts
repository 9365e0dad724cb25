import * as tf from '@tensorflow/tfjs-core';

/** The compute backends a worker can run on. Model code never names one. */
export const COMPUTE_BACKENDS = ['wasm', 'cpu', 'tensorflow'] as const;
/** `wasm` (default, XNNPACK + SIMD), `cpu` (plain JS), `tensorflow` (tfjs-node-gpu, the GPU image). */
export type ComputeBackend = (typeof COMPUTE_BACKENDS)[number];

/** What {@link initComputeBackend} selected. */
export interface ComputeBackendInfo {
  /** The backend tfjs now runs on. */
  readonly backend: ComputeBackend;
  /** Threads the backend computes with (wasm in Node is single-threaded). */
  readonly threads: number;
  /** Whether wasm SIMD is in use (false for other backends). */
  readonly simd: boolean;
}

/** Thrown when the requested backend cannot be loaded; `code` is stable. */
export class ComputeBackendError extends Error {
  override readonly name = 'ComputeBackendError';
  readonly code = 'BACKEND_UNAVAILABLE';
}

/** The optional GPU package. Loaded by name at run time so nothing depends on it being installed. */
const TFJS_NODE_GPU = '@tensorflow/tfjs-node-gpu';

/**
 * Loads, registers and selects a compute backend, and waits until it is ready.
 * Idempotent: selecting the active backend again is cheap.
 */
export async function initComputeBackend(backend: ComputeBackend = 'wasm'): Promise<ComputeBackendInfo> {
  switch (backend) {
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      break;
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      break;
    case 'tensorflow':
      try {
        await import(TFJS_NODE_GPU);
      } catch (cause) {
        throw new ComputeBackendError(
          `backend 'tensorflow' needs ${TFJS_NODE_GPU}, which is not installed here; ` +
            `use the GPU container image, or choose backend 'wasm' or 'cpu'`,
          { cause },
        );
      }
      break;
  }
  if (tf.getBackend() !== backend) {
    const ok = await tf.setBackend(backend);
    if (!ok) throw new ComputeBackendError(`backend '${backend}' failed to initialise`);
  }
  await tf.ready();
  const simd = backend === 'wasm' && (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  return { backend, threads: 1, simd };
}

/** Parses a backend name from configuration, naming the allowed values on failure. */
export function parseComputeBackend(value: string): ComputeBackend {
  const found = COMPUTE_BACKENDS.find((b) => b === value);
  if (found === undefined) {
    throw new ComputeBackendError(`unknown compute backend '${value}'; allowed: ${COMPUTE_BACKENDS.join(', ')}`);
  }
  return found;
}
