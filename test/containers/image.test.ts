/**
 * The built image run as a user runs it: `podman run` as the image's non-root user, root filesystem read-only,
 * the config mounted read-only, the password from the environment. Its HEALTHCHECK passes, and `podman stop`
 * lets an in-flight request finish before the process exits 0.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';
import {
  type ConfigDir,
  configDir,
  containersAvailable,
  containerYaml,
  freePort,
  IMAGE,
  podman,
  podmanOk,
  waitFor200,
} from './podman.js';

const available = containersAvailable();
const PASSWORD_ENV = { PROXY_SERVICE_PASSWORD: fixtures.users.proxy.password as string };

describe.skipIf(!available)('the image under podman', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  const slowArrived: Array<() => void> = [];
  const containers: string[] = [];
  const dirs: ConfigDir[] = [];

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    const server = createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined });
    server.prependListener('request', (req: IncomingMessage) => {
      if (req.url?.startsWith('/slow')) slowArrived.shift()?.();
    });
    upstream = await listen(server);
  });

  afterAll(async () => {
    for (const name of containers) await podman(['rm', '-f', '-t', '0', name]);
    for (const dir of dirs) dir.remove();
    await upstream?.close();
    await keystone?.close();
  });

  /** Starts the image detached; the password reaches it by name (-e NAME), never on the command line. */
  async function run(yaml: string, adminPort: number, extra: string[] = []): Promise<string> {
    const config = configDir(yaml);
    dirs.push(config);
    const name = `kap-test-${randomUUID().slice(0, 8)}`;
    containers.push(name);
    await podmanOk(
      [
        'run',
        '-d',
        '--name',
        name,
        '--read-only',
        '-v',
        `${config.dir}:/etc/keystone-auth-proxy:ro`,
        '-e',
        'PROXY_SERVICE_PASSWORD',
        '-e',
        `HEALTHCHECK_URL=http://127.0.0.1:${adminPort}/healthz`,
        '--stop-timeout',
        '30',
        ...extra,
        IMAGE,
      ],
      PASSWORD_ENV,
    );
    return name;
  }

  async function logsOf(name: string): Promise<string> {
    const { stdout, stderr } = await podman(['logs', name]);
    return `${stdout}${stderr}`;
  }

  it('serves as uid 1000 on a read-only root, passes its HEALTHCHECK and drains on podman stop', async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    const yaml = containerYaml({
      keystoneUrl: keystone.url,
      upstreamUrl: upstream.url,
      port,
      adminPort,
      workers: 2,
    });
    const started = performance.now();
    const name = await run(yaml, adminPort);
    try {
      await waitFor200(`http://127.0.0.1:${adminPort}/readyz`, 30_000);
      console.info(`[measure] podman run -> /readyz 200: ${Math.round(performance.now() - started)} ms`);

      expect(await podmanOk(['exec', name, 'id', '-u'])).toBe('1000');
      const write = await podman(['exec', name, 'touch', '/app/dist/written']);
      expect(write.code).not.toBe(0);
      expect(write.stderr).toMatch(/Read-only file system/);

      const health = await podman(['healthcheck', 'run', name]);
      expect(health.code, health.stderr).toBe(0);
      expect(await podmanOk(['inspect', '--format', '{{.State.Health.Status}}', name])).toBe('healthy');

      const proxy = `http://127.0.0.1:${port}`;
      expect((await fetch(`${proxy}/servers`)).status).toBe(401);
      const token = keystone.issueToken({ user: fixtures.users.demo });
      const ok = await fetch(`${proxy}/servers`, { headers: { 'x-auth-token': token } });
      expect(ok.status).toBe(200);
      expect(((await ok.json()) as { headers: Record<string, string> }).headers['x-user-id']).toBe(
        fixtures.users.demo.id,
      );

      // An in-flight request when `podman stop` sends SIGTERM: it completes, then the process exits 0.
      const arrived = new Promise<void>((resolve) => slowArrived.push(resolve));
      const inFlight = fetch(`${proxy}/slow?ms=1500`, { headers: { 'x-auth-token': token } });
      await arrived;
      const stop = await podman(['stop', '-t', '30', name]);
      expect(stop.code, stop.stderr).toBe(0);
      const slow = await inFlight;
      expect(slow.status).toBe(200);
      await slow.arrayBuffer();
      expect(await podmanOk(['inspect', '--format', '{{.State.ExitCode}}', name])).toBe('0');
      const logs = await logsOf(name);
      expect(logs).toContain('"msg":"draining"');
      expect(logs).not.toContain(token);
      expect(logs).not.toContain(PASSWORD_ENV.PROXY_SERVICE_PASSWORD);
    } catch (error) {
      console.error(`[container ${name} logs]\n${await logsOf(name)}`);
      throw error;
    }
  });

  it('without a mounted config exits 2 and names the file it looked for', async () => {
    const result = await podman(['run', '--rm', '--read-only', IMAGE]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('/etc/keystone-auth-proxy/config.yaml');
  });

  it('keeps its HEALTHCHECK, user and stop signal in the image config (docker format)', async () => {
    const inspect = JSON.parse(await podmanOk(['image', 'inspect', IMAGE])) as Array<{
      Size: number;
      Config: { User: string; StopSignal: string };
      Healthcheck?: { Test: string[] };
    }>;
    const [image] = inspect;
    console.info(`[measure] image ${IMAGE}: ${((image?.Size ?? 0) / 1e6).toFixed(0)} MB`);
    expect(image?.Config.User).toBe('node');
    expect(image?.Config.StopSignal).toBe('SIGTERM');
    expect(image?.Healthcheck?.Test.join(' ')).toContain('process.env.HEALTHCHECK_URL');
  });
});
