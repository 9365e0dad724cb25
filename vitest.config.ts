import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['packages/*/src/**/*.test.ts', 'services/*/src/**/*.test.ts', 'test/**/*.test.ts'],
    // tfjs kernels on 2 cores are slow; numerical tests get room, never a retry.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
