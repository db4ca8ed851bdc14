import { defineConfig } from 'vitest/config';

// The image and the pod under podman (scripts/container-local.sh): the global setup builds the image from this
// checkout and starts podman's Docker-compatible API for testcontainers.
export default defineConfig({
  test: {
    environment: 'node',
    include: ['test/containers/**/*.test.ts'],
    globalSetup: ['test/containers/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // One podman engine on a small machine: files run one after another.
    fileParallelism: false,
  },
});
