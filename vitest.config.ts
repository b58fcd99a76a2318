import { defineConfig } from 'vitest/config';

// One run covers unit tests beside the code, service tests against real servers and the
// cross-service suites in test/. Real servers come from the local region (`make test` brings it
// up); tests isolate themselves by key prefix, subject root or namespace.
export default defineConfig({
  test: {
    include: [
      'packages/*/src/**/*.test.ts',
      'packages/*/test/**/*.test.ts',
      'services/*/src/**/*.test.ts',
      'services/*/test/**/*.test.ts',
      'test/**/*.test.ts',
    ],
    exclude: ['**/node_modules/**', 'test/bench/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
    globalSetup: ['./test/setup/global.ts'],
  },
});
