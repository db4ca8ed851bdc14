import { defineConfig } from 'vitest/config';

// Suites against real services (Keystone, keystonemiddleware, Glance) started by scripts/*-local.sh.
export default defineConfig({
  test: {
    environment: 'node',
    include: ['test/conformance/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // One real Keystone is shared: files run one after another.
    fileParallelism: false,
  },
});
