import '@tensorflow/tfjs';
import * as tf from '@tensorflow/tfjs-core';

/**
 * Test-only: selects a tfjs backend for a test file (`beforeAll(() => useTestBackend())`).
 * The cpu backend is the default for numerical tests (plain float32 JS loops, no SIMD
 * reassociation); pass 'wasm' to test what the workers run.
 */
export async function useTestBackend(backend: 'cpu' | 'wasm' = 'cpu'): Promise<void> {
  if (backend === 'cpu') await import('@tensorflow/tfjs-backend-cpu');
  else await import('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend(backend);
  await tf.ready();
}
