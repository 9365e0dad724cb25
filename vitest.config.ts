import { defineConfig } from 'vitest/config';

// Two projects, run one after the other by scripts/test.sh: unit tests (each package's
// src, in parallel) and the integration tests under test/ (real processes, Redis, s3rver),
// one file at a time so a fleet of worker processes never competes with another fleet or
// with the numerical tests for this machine's two cores.
const shared = {
  // tfjs kernels on 2 cores are slow; numerical tests get room, never a retry.
  testTimeout: 120_000,
  hookTimeout: 120_000,
  pool: 'forks' as const,
};

export default defineConfig({
  test: {
    projects: [
      { test: { ...shared, name: 'unit', include: ['packages/*/src/**/*.test.ts', 'services/*/src/**/*.test.ts'] } },
      { test: { ...shared, name: 'integration', include: ['test/**/*.test.ts'], fileParallelism: false } },
    ],
  },
});
