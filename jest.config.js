/** @type {import('jest').Config} */
module.exports = {
  rootDir: '.',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.spec.ts'],
  transform: {
    // tsconfig sets isolatedModules, so ts-jest only transpiles (fast); `npm run typecheck` checks types.
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }],
  },
  moduleFileExtensions: ['ts', 'js', 'json'],
  // Probes the real brokers once; suites skip (or, with REQUIRE_BROKERS=1, fail) when theirs is down.
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  // Stops the Kafka broker globalSetup started (the mock cluster, or a real node under DUCTAPE_TEST_KAFKA=real) and the SQS emulator.
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
  testTimeout: 20000,
  // Suites that talk to real brokers share servers: run files on both cores, but bounded.
  maxWorkers: 2,
};
