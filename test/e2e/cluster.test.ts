/**
 * `workers: 2`, the real CLI: one host, one identity state. The primary holds the cache, validations in flight,
 * the Keystone breaker and the revocation poller; each worker serves from its L1 or asks the primary. The Keystone
 * emulator injects the outages. Every request uses a new connection (`connection: close`), so node:cluster's
 * round robin spreads them over both workers; each case checks from the log lines that both workers served.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, scrapeMetric, sidecarYaml, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let keystone: KeystoneEmulator;
let upstream: Running;
const running: CliRun[] = [];

beforeAll(async () => {
  keystone = await startKeystoneEmulator();
  upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((proxy) => proxy.stop()));
  keystone.reset();
  await keystone.start();
});
afterAll(async () => {
  await upstream?.close();
  await keystone?.close();
});

async function cluster(authtoken: string[] = [], rest = ''): Promise<CliRun> {
  const yaml = sidecarYaml({
    keystoneUrl: keystone.url,
    upstreamUrl: upstream.url,
    responseTimeoutSeconds: 5,
    keystoneTimeoutSeconds: 1,
    // Polling off unless a case turns it on: the emulator's request counts stay those of the case.
    authtoken: authtoken.some((line) => line.startsWith('revocation_poll'))
      ? authtoken
      : ['revocation_poll_interval_seconds: 0', ...authtoken],
    rest: `workers: 2\n${rest}`,
  });
  const proxy = await startCli(['--config', writeConfig(yaml)], ENV);
  running.push(proxy);
  return proxy;
}

const newToken = (): string =>
  keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });

/** One request on a new connection: its status and the pid of the worker that logged it. */
async function call(proxy: CliRun, token: string, path = '/v1'): Promise<number> {
  const res = await fetch(`${proxy.url}${path}`, { headers: { 'x-auth-token': token, connection: 'close' } });
  await res.text();
  return res.status;
}

async function sequential(proxy: CliRun, count: number, token: () => string): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < count; i++) statuses.push(await call(proxy, token()));
  return statuses;
}

/** Worker pids that logged a request since log line `from`. */
async function servingPids(proxy: CliRun, from = 0): Promise<Set<unknown>> {
  // Access lines wait up to log.flush_interval_seconds (0.2 s) to be written.
  await sleep(450);
  return new Set(
    proxy.logs
      .slice(from)
      .filter((line) => line.msg === 'request')
      .map((line) => line.pid),
  );
}

describe.skipIf(!cliBuilt())('workers: 2, one host state', () => {
  it('N concurrent requests on N connections with one unseen token: one Keystone validation for the host', async () => {
    const proxy = await cluster();
    expect(proxy.logs.find((l) => l.msg === 'keystone-auth-proxy started')?.workers).toBe(2);
    const token = newToken();
    const before = keystone.count('validate');
    // Keystone answers slowly, so every request arrives while the first validation is still out.
    keystone.setFault('validate', { kind: 'delay', ms: 300 });
    const statuses = await Promise.all(Array.from({ length: 32 }, () => call(proxy, token)));
    expect(statuses).toEqual(Array(32).fill(200));
    expect((await servingPids(proxy)).size).toBe(2);
    expect(keystone.count('validate') - before).toBe(1);
  });

  it('Keystone down: an identity one worker validated is served by every worker', async () => {
    const proxy = await cluster();
    const token = newToken();
    expect(await call(proxy, token)).toBe(200);
    const validations = keystone.count('validate');
    const from = proxy.logs.length;
    await keystone.stop();
    expect(await sequential(proxy, 20, () => token)).toEqual(Array(20).fill(200));
    expect((await servingPids(proxy, from)).size).toBe(2);
    expect(keystone.count('validate')).toBe(validations);
    // A token nobody validated before the outage cannot be: 503, on whichever worker.
    expect(await call(proxy, newToken())).toBe(503);
  });

  it('one breaker per host: once a probe succeeds, no worker answers 503; /metrics shows one state', async () => {
    const proxy = await cluster(['circuit_breaker_failure_threshold: 2', 'circuit_breaker_open_seconds: 1']);
    const state = (name: string) =>
      scrapeMetric(proxy.adminUrl, `keystone_auth_proxy_keystone_circuit_state{state="${name}"}`);
    await keystone.stop();
    expect(await sequential(proxy, 6, newToken)).toEqual(Array(6).fill(503));
    expect([await state('open'), await state('closed'), await state('half_open')]).toEqual([1, 0, 0]);
    await keystone.start();
    // Fresh tokens on new connections until the first 200 (the probe went through).
    const deadline = Date.now() + 5_000;
    while ((await call(proxy, newToken())) !== 200) {
      expect(Date.now()).toBeLessThan(deadline);
      await sleep(50);
    }
    const from = proxy.logs.length;
    expect(await sequential(proxy, 20, newToken)).toEqual(Array(20).fill(200));
    expect((await servingPids(proxy, from)).size).toBe(2);
    expect([await state('open'), await state('closed'), await state('half_open')]).toEqual([0, 1, 0]);
  });

  it('one revocation poller per host; a revocation reaches both workers within the poll interval + 1 s', async () => {
    const proxy = await cluster(['revocation_poll_interval_seconds: 1']);
    const token = newToken();
    // Both workers hold the identity in their L1.
    const from = proxy.logs.length;
    expect(await sequential(proxy, 6, () => token)).toEqual(Array(6).fill(200));
    expect((await servingPids(proxy, from)).size).toBe(2);
    const polls = keystone.count('revoke_events');
    await sleep(3_000);
    // One poller at 1 s for 3 s: 3 polls, give or take one (three pollers would make about 9).
    expect(keystone.count('revoke_events') - polls).toBeLessThanOrEqual(4);
    expect(keystone.count('revoke_events') - polls).toBeGreaterThanOrEqual(2);
    keystone.revoke(token);
    const revokedAt = Date.now();
    let lastAccepted = revokedAt;
    const seenAfter = proxy.logs.length;
    // Ask on new connections until 2 s past the bound; the last 200 must come before the bound.
    while (Date.now() - revokedAt < 3_000) {
      if ((await call(proxy, token)) === 200) lastAccepted = Date.now();
      await sleep(20);
    }
    expect(lastAccepted - revokedAt).toBeLessThan(2_000);
    expect((await servingPids(proxy, seenAfter)).size).toBe(2);
    console.log(`revocation reached both workers after at most ${lastAccepted - revokedAt} ms (poll 1 s)`);
  });

  it('a worker that crashes is replaced; the host state survives it (served with Keystone down)', async () => {
    const proxy = await cluster();
    const token = newToken();
    const from = proxy.logs.length;
    expect(await sequential(proxy, 4, () => token)).toEqual(Array(4).fill(200));
    const [victim] = [...(await servingPids(proxy, from))].map(Number);
    await keystone.stop();
    process.kill(victim as number, 'SIGKILL');
    const deadline = Date.now() + 10_000;
    while (!proxy.logs.some((l) => l.msg === 'worker exited: starting another')) {
      expect(Date.now()).toBeLessThan(deadline);
      await sleep(50);
    }
    // Until the replacement listens (about a second on a quiet machine) the other worker takes every
    // connection; every answer meanwhile must be 200 too, served from the host state with Keystone down.
    const pids = new Set<number>();
    const until = Date.now() + 30_000;
    while (pids.size < 2) {
      expect(Date.now(), `serving pids so far: ${[...pids].join(', ')}`).toBeLessThan(until);
      const after = proxy.logs.length;
      expect(await sequential(proxy, 10, () => token)).toEqual(Array(10).fill(200));
      for (const pid of await servingPids(proxy, after)) pids.add(Number(pid));
      if (pids.size < 2) await sleep(200);
    }
    expect(pids.has(victim as number)).toBe(false);
  });

  it('the host cache is bounded by token_cache_max_entries, each L1 by worker_cache_max_entries', async () => {
    const proxy = await cluster(['token_cache_max_entries: 5'], 'worker_cache_max_entries: 3\n');
    expect(await sequential(proxy, 12, newToken)).toEqual(Array(12).fill(200));
    expect(await scrapeMetric(proxy.adminUrl, 'keystone_auth_proxy_token_cache_entries')).toBe(5);
    const l1 = await scrapeMetric(proxy.adminUrl, 'keystone_auth_proxy_worker_cache_entries');
    expect(l1).toBeGreaterThan(0);
    expect(l1).toBeLessThanOrEqual(6);
  });

  it('/metrics counts Keystone validations, cache entries and breaker state once for the host', async () => {
    const proxy = await cluster();
    const before = keystone.count('validate');
    const tokens = [newToken(), newToken(), newToken()];
    for (const token of tokens) expect(await sequential(proxy, 4, () => token)).toEqual(Array(4).fill(200));
    const metric = (series: string) => scrapeMetric(proxy.adminUrl, `keystone_auth_proxy_${series}`);
    expect(keystone.count('validate') - before).toBe(3);
    expect(await metric('keystone_requests_total{operation="validate",outcome="ok"}')).toBe(3);
    expect(await metric('token_cache_entries')).toBe(3);
    expect(await metric('http_requests_total{decision="confirmed",method="GET",code_class="2xx"}')).toBe(12);
    // Each worker asked the primary once per token it had not served yet: at most one question per token each.
    const asked = await metric('host_lookup_duration_seconds_count{outcome="valid"}');
    expect(asked).toBeGreaterThanOrEqual(3);
    expect(asked).toBeLessThanOrEqual(6);
    expect(await metric('keystone_circuit_state{state="closed"}')).toBe(1);
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);
  });

  it('SIGTERM during an outage drains every worker: no accepted request lost, exit 0', async () => {
    const proxy = await cluster();
    const token = newToken();
    // Validated through one worker only, then Keystone goes: both workers must still serve it while draining.
    expect(await call(proxy, token)).toBe(200);
    await keystone.stop();
    const from = proxy.logs.length;
    const inflight = Array.from({ length: 10 }, () => call(proxy, token, '/slow?ms=1000'));
    await sleep(300);
    const code = proxy.stop('SIGTERM');
    expect(await Promise.all(inflight)).toEqual(Array(10).fill(200));
    expect(await code).toBe(0);
    const workerPids = [...(await servingPids(proxy, from))].map(Number);
    expect(workerPids).toHaveLength(2);
    expect(workerPids.filter(alive)).toEqual([]);
  });
});
