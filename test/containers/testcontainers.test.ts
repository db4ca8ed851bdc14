/**
 * The image through testcontainers, as a project embedding the proxy would test with it: podman's Docker API
 * (scripts/container-local.sh service), no Ryuk, the host's network, readiness by /readyz.
 */
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  BoundPorts,
  GenericContainer,
  type StartedTestContainer,
  Wait,
  type WaitStrategy,
} from 'testcontainers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';
import {
  type ConfigDir,
  configDir,
  containersAvailable,
  containerYaml,
  DOCKER_HOST,
  freePort,
  IMAGE,
} from './podman.js';

// testcontainers reads these when it first connects. Ryuk (its reaper container) cannot be pulled here; every
// container below is stopped and removed by the test itself.
process.env.DOCKER_HOST = DOCKER_HOST;
process.env.TESTCONTAINERS_RYUK_DISABLED = 'true';
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= '127.0.0.1';

const available = containersAvailable();

/** The proxy as a Kubernetes pod runs it: read-only root, uid 1000, no capabilities. */
class ProxyContainer extends GenericContainer {
  withReadOnlyRootFilesystem(): this {
    this.hostConfig.ReadonlyRootfs = true;
    return this;
  }
}

/**
 * With the host's network a container publishes no ports, so testcontainers' own strategies find no binding:
 * each port is bound to itself.
 */
class HostNetworkWait implements WaitStrategy {
  constructor(
    private readonly inner: WaitStrategy,
    private readonly ports: readonly number[],
  ) {}
  waitUntilReady(...[container, , startTime]: Parameters<WaitStrategy['waitUntilReady']>): Promise<void> {
    const bound = new BoundPorts();
    for (const port of this.ports) bound.setBinding(port, port);
    return this.inner.waitUntilReady(container, bound, startTime);
  }
  withStartupTimeout(ms: number): this {
    this.inner.withStartupTimeout(ms);
    return this;
  }
  isStartupTimeoutSet(): boolean {
    return this.inner.isStartupTimeoutSet();
  }
  getStartupTimeout(): number {
    return this.inner.getStartupTimeout();
  }
}

describe.skipIf(!available)('the image under testcontainers (podman system service)', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  const dirs: ConfigDir[] = [];

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
  });

  afterAll(async () => {
    for (const dir of dirs) dir.remove();
    await upstream?.close();
    await keystone?.close();
  });

  async function proxyContainer(password: string, startupMs: number) {
    const [port, adminPort] = [await freePort(), await freePort()];
    const config = configDir(
      containerYaml({ keystoneUrl: keystone.url, upstreamUrl: upstream.url, port, adminPort }),
    );
    dirs.push(config);
    const logs: string[] = [];
    const container = new ProxyContainer(IMAGE)
      .withName(`kap-tc-${randomUUID().slice(0, 8)}`)
      .withNetworkMode('host')
      .withUser('1000:1000')
      .withReadOnlyRootFilesystem()
      .withDroppedCapabilities('ALL')
      .withBindMounts([{ source: config.dir, target: '/etc/keystone-auth-proxy', mode: 'ro' }])
      .withEnvironment({
        PROXY_SERVICE_PASSWORD: password,
        HEALTHCHECK_URL: `http://127.0.0.1:${adminPort}/healthz`,
      })
      .withLogConsumer((stream: Readable) => {
        stream.on('data', (chunk: Buffer) => logs.push(chunk.toString()));
      })
      .withWaitStrategy(
        new HostNetworkWait(Wait.forHttp('/readyz', adminPort).forStatusCode(200), [adminPort]),
      )
      .withStartupTimeout(startupMs);
    return { container, logs, url: `http://127.0.0.1:${port}` };
  }

  it('starts once /readyz answers 200, then authenticates through the container', async () => {
    const { container, logs, url } = await proxyContainer(fixtures.users.proxy.password as string, 60_000);
    const started = performance.now();
    let running: StartedTestContainer | undefined;
    try {
      running = await container.start();
      console.info(
        `[measure] testcontainers start() -> /readyz 200: ${Math.round(performance.now() - started)} ms`,
      );
      expect((await fetch(`${url}/servers`)).status).toBe(401);
      const token = keystone.issueToken({ user: fixtures.users.demo });
      const ok = await fetch(`${url}/servers`, { headers: { 'x-auth-token': token } });
      expect(ok.status).toBe(200);
      const { exitCode, output } = await running.exec(['id', '-u']);
      expect([exitCode, output.trim()]).toEqual([0, '1000']);
    } catch (error) {
      console.error(`[container logs]\n${logs.join('')}`);
      throw error;
    } finally {
      await running?.stop({ timeout: 30_000 });
    }
  });

  it('a container that never gets ready fails start() and its logs say why', async () => {
    const { container, logs } = await proxyContainer('not-the-password', 8_000);
    await expect(container.start()).rejects.toThrow();
    // The service user cannot authenticate: the proxy says so, without the password it tried.
    const text = logs.join('');
    expect(text).toMatch(/401|nauthori[sz]ed|authenticat/i);
    expect(text).not.toContain('not-the-password');
  });
});
