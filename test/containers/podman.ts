/**
 * podman for the container suites: every call uses the project's scripts/containers.conf, the image is the one
 * scripts/container-local.sh builds, and a missing podman is a skip, or a failure with CONTAINERS_REQUIRED=1.
 */
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers/cli.js';

export const CONTAINERS_CONF = join(ROOT, 'scripts', 'containers.conf');
export const IMAGE = process.env.CONTAINER_IMAGE ?? 'localhost/keystone-auth-proxy:local';
/** The local base (node, npm, a node user): the pod's stand-in for Nova runs on it. */
export const BASE_IMAGE = process.env.CONTAINER_BASE_IMAGE ?? 'localhost/keystone-auth-proxy-base:local';

const env = { ...process.env, CONTAINERS_CONF };

/** Where scripts/container-local.sh `service` serves podman's Docker-compatible API. */
export const DOCKER_HOST =
  process.env.DOCKER_HOST ??
  `unix://${process.env.CONTAINER_LOCAL_DIR ?? join(ROOT, '.container-local')}/podman.sock`;

function podmanAnswers(): boolean {
  return spawnSync('podman', ['--version'], { env }).status === 0;
}

function imageExists(): boolean {
  return spawnSync('podman', ['image', 'exists', IMAGE], { env }).status === 0;
}

/**
 * Whether the suite can run. With CONTAINERS_REQUIRED=1 (CI) a missing podman or image throws instead, so the
 * suite fails rather than passing empty.
 */
export function containersAvailable(): boolean {
  const missing = !podmanAnswers() ? 'podman' : !imageExists() ? `image ${IMAGE}` : undefined;
  if (missing === undefined) return true;
  if (process.env.CONTAINERS_REQUIRED === '1') {
    throw new Error(
      `CONTAINERS_REQUIRED=1 but ${missing} is missing: run scripts/container-local.sh install, base and build`,
    );
  }
  return false;
}

export interface PodmanResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs podman to completion; never throws on a non-zero exit (the caller asserts on the code). */
export function podman(
  args: readonly string[],
  extraEnv: Record<string, string> = {},
): Promise<PodmanResult> {
  return new Promise((resolve) => {
    execFile(
      'podman',
      args,
      { env: { ...env, ...extraEnv }, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Like podman(), but a non-zero exit throws with podman's stderr. */
export async function podmanOk(
  args: readonly string[],
  extraEnv: Record<string, string> = {},
): Promise<string> {
  const result = await podman(args, extraEnv);
  if (result.code !== 0) throw new Error(`podman ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout.trim();
}

/**
 * A port free on loopback now. The containers share the host's network (netns host) and the image's HEALTHCHECK
 * needs the admin port up front, so port 0 cannot be used there.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface ConfigDir {
  /** Directory to mount at /etc/keystone-auth-proxy. */
  readonly dir: string;
  remove(): void;
}

/**
 * A config directory the container's user (uid 1000) can read. The YAML holds no secret: the service password
 * comes from the environment.
 */
export function configDir(yaml: string): ConfigDir {
  const dir = mkdtempSync(join(tmpdir(), 'kap-container-'));
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, 'config.yaml'), yaml, { mode: 0o644 });
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Polls `url` until it answers 200; resolves with the milliseconds it took. */
export async function waitFor200(url: string, timeoutMs: number): Promise<number> {
  const start = performance.now();
  let last = 'no answer';
  while (performance.now() - start < timeoutMs) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) return performance.now() - start;
      last = `status ${res.status}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms (last: ${last})`);
}

/** The YAML the container suites share: a sidecar on the given loopback ports in front of `upstreamUrl`. */
export function containerYaml(o: {
  readonly keystoneUrl: string;
  readonly upstreamUrl: string;
  readonly port: number;
  readonly adminPort: number;
  readonly workers?: number;
  readonly gracePeriodSeconds?: number;
}): string {
  return `workers: ${o.workers ?? 1}
listen: { host: 127.0.0.1, port: ${o.port} }
admin_listen: { host: 127.0.0.1, port: ${o.adminPort} }
upstream: { url: "${o.upstreamUrl}", response_timeout_seconds: 30, connect_timeout_seconds: 2 }
keystone_authtoken:
  www_authenticate_uri: "http://keystone.example:5000"
  auth_url: "${o.keystoneUrl}"
  username: proxy
  password: "\${PROXY_SERVICE_PASSWORD}"
  user_domain_name: Default
  project_name: service
  project_domain_name: Default
  service_type: echo
  http_request_timeout_seconds: 5
shutdown: { grace_period_seconds: ${o.gracePeriodSeconds ?? 20} }
`;
}
