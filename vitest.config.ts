import { defineConfig } from 'vitest/config';

// Two tiers. `unit`: pure logic beside the code (`src/**/*.test.ts`), no region and no global
// setup, so it runs in seconds on a machine with nothing started (`make test-unit`). A test that
// needs a real server (etcd, NATS, Redis, a cell) does not belong in `src/`: put it in the
// package's `test/` folder. `integration`: service tests against real servers and the
// cross-service suites in test/; the global setup fails fast when the local region is not up
// (`make test` brings it up). Tests isolate themselves by key prefix, subject root or namespace.
// Run one tier with `vitest run --project unit` (or `integration`, then `integration-alone`).
// Tests that stop cell-a's kubelet: its node goes NotReady, and every pod on it unready, for a
// while. Run beside the scheduler's failover test, that took a test app from 4 ready replicas to 2
// (a CI rehearsal). They run alone, after the other integration tests.
// packages/shared/test/kube.test.ts SIGKILLs cell-b's API server: beside the others it cut a
// scheduler test's requests to cell-b (a CI rehearsal).
const CELL_DISRUPTING = [
  'test/cells/**/*.test.ts',
  'services/cni-ipam/test/cell-a.test.ts',
  'packages/shared/test/kube.test.ts',
];

export default defineConfig({
  test: {
    exclude: ['**/node_modules/**', 'test/bench/**'],
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts', 'services/*/src/**/*.test.ts'],
          testTimeout: 10_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['packages/*/test/**/*.test.ts', 'services/*/test/**/*.test.ts', 'test/**/*.test.ts'],
          exclude: [...CELL_DISRUPTING, 'test/bench/**', '**/node_modules/**'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          globalSetup: ['./test/setup/global.ts'],
        },
      },
      {
        extends: true,
        test: {
          name: 'integration-alone',
          include: CELL_DISRUPTING,
          // One file at a time, after the rest (infra/test.sh runs this project second).
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 120_000,
          globalSetup: ['./test/setup/global.ts'],
        },
      },
    ],
  },
});
