/**
 * The real CLI with a real memcached as its shared tier, under load from concurrent clients, while memcached
 * is stopped and started again: no request fails or waits past one memcached deadline, the server is skipped
 * while down, and the tier is used again once it is back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CliRun,
  cliBuilt,
  scrapeMetric,
  sidecarYaml,
  singleProcess,
  startCli,
  writeConfig,
} from '../helpers/cli.js';
import { echo } from '../helpers/echo-app.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { type Memcached, skipWithoutMemcached, startMemcached } from '../helpers/memcached.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const SOCKET_TIMEOUT_SECONDS = 0.3;

const metric = (proxy: CliRun, series: string): Promise<number> => scrapeMetric(proxy.adminUrl, series);

describe.skipIf(skipWithoutMemcached || !cliBuilt())('memcached outage under load', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let memcached: Memcached;
  let proxy: CliRun;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    // Keystone is slower than memcached, as in a real cloud: a validation costs 20 ms.
    keystone.setFault('validate', { kind: 'delay', ms: 20 });
    upstream = await listen(echo);
    memcached = await startMemcached();
    const yaml = sidecarYaml({
      keystoneUrl: keystone.url,
      upstreamUrl: upstream.url,
      responseTimeoutSeconds: 2,
      keystoneTimeoutSeconds: 2,
      authtoken: [
        `memcached_servers: "127.0.0.1:${memcached.port}"`,
        'memcache_security_strategy: ENCRYPT',
        'memcache_secret_key: outage-test',
        `memcache_pool_socket_timeout: ${SOCKET_TIMEOUT_SECONDS}`,
        'memcache_pool_dead_retry: 1',
      ],
      rest: 'log: { level: info }\n',
    });
    proxy = await startCli(['--config', writeConfig(singleProcess(yaml))], ENV);
  });
  afterAll(async () => {
    await proxy?.stop();
    await memcached?.stop();
    await upstream?.close();
    await keystone?.close();
  });

  it('no request fails or hangs while memcached stops and comes back', async () => {
    const token = () =>
      keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });
    const statuses = new Map<number, number>();
    let slowest = 0;
    let stop = false;
    // 16 clients, each a fresh token per request: every request misses the LRU and goes through memcached.
    const client = async () => {
      while (!stop) {
        const started = performance.now();
        const res = await fetch(`${proxy.url}/v1/x`, { headers: { 'x-auth-token': token() } });
        await res.arrayBuffer();
        slowest = Math.max(slowest, performance.now() - started);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      }
    };
    const clients = Array.from({ length: 16 }, client);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const setsBefore = await metric(
      proxy,
      'keystone_auth_proxy_memcached_operations_total{operation="set",outcome="ok"}',
    );
    expect(setsBefore).toBeGreaterThan(0);
    await memcached.stop();
    await new Promise((resolve) => setTimeout(resolve, 700));
    const skipped = await metric(
      proxy,
      'keystone_auth_proxy_memcached_operations_total{operation="get",outcome="skipped_down"}',
    );
    await memcached.restart();
    // dead_retry is 1 s: the next operation after it probes the server, which is back.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    stop = true;
    await Promise.all(clients);
    const setsAfter = await metric(
      proxy,
      'keystone_auth_proxy_memcached_operations_total{operation="set",outcome="ok"}',
    );
    const requests = [...statuses.values()].reduce((a, b) => a + b, 0);
    console.info(
      `memcached outage under load: ${requests} requests, statuses ${JSON.stringify(Object.fromEntries(statuses))}, slowest ${Math.round(slowest)} ms, ${skipped} lookups skipped while down`,
    );
    expect([...statuses.keys()]).toEqual([200]);
    expect(skipped).toBeGreaterThan(0);
    expect(setsAfter).toBeGreaterThan(setsBefore);
    // Not a speed target: proof that nothing waited for a dead memcached longer than its deadline.
    expect(slowest).toBeLessThan(SOCKET_TIMEOUT_SECONDS * 1000 + 1_500);
  });
});
