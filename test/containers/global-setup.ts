/**
 * Builds the image from this checkout (so the suite never tests a stale one) and starts podman's Docker API
 * for testcontainers, both through scripts/container-local.sh. CONTAINER_SKIP_BUILD=1 reuses the built image.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers/cli.js';

const SCRIPT = join(ROOT, 'scripts', 'container-local.sh');

function script(command: string): boolean {
  const result = spawnSync('bash', [SCRIPT, command], { stdio: ['ignore', 'ignore', 'inherit'] });
  return result.status === 0;
}

function podmanInstalled(): boolean {
  return spawnSync('podman', ['--version']).status === 0;
}

export function setup(): void {
  if (!podmanInstalled()) return; // each suite decides: skip, or fail with CONTAINERS_REQUIRED=1
  if (process.env.CONTAINER_SKIP_BUILD !== '1' && !script('build')) {
    throw new Error(`${SCRIPT} build failed (output above)`);
  }
  if (!script('service')) throw new Error(`${SCRIPT} service failed: podman system service did not start`);
}

export function teardown(): void {
  if (podmanInstalled()) script('stop');
}
