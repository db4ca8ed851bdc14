/**
 * `workers: 2`: two processes share the proxied port, the primary serves /metrics aggregated over them, and
 * SIGTERM drains both.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe.skipIf(!cliBuilt())('workers: 2', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let proxy: CliRun;
  let token: string;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    proxy = await startCli([
      '--config',
      writeConfig(`
workers: 2
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${upstream.url}" }
admin_listen: { host: 127.0.0.1, port: 0 }
keystone_authtoken:
  auth_url: "${keystone.url}"
  www_authenticate_uri: "http://keystone.example:5000"
  username: proxy
  password: proxy-secret
  user_domain_name: Default
  project_name: service
  project_domain_name: Default
`),
    ]);
    token = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member],
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await upstream?.close();
    await keystone?.close();
  });

  it('both workers serve the port; each validates the token once for its own cache', async () => {
    expect(proxy.logs.find((l) => l.msg === 'keystone-auth-proxy started')?.workers).toBe(2);
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      // A new connection each time, so the cluster spreads them over the workers.
      const res = await fetch(`${proxy.url}/v1`, { headers: { 'x-auth-token': token, connection: 'close' } });
      statuses.push(res.status);
      await res.text();
    }
    expect(statuses).toEqual(Array(40).fill(200));
    await new Promise((r) => setTimeout(r, 100));
    const pids = new Set(proxy.logs.filter((l) => l.msg === 'request').map((l) => l.pid));
    expect(pids.size).toBe(2);
    expect(keystone.count('validate')).toBe(2);
  });

  it('/metrics on the primary adds up the workers', async () => {
    const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
    const line = text
      .split('\n')
      .find((l) =>
        l.startsWith(
          'keystone_auth_proxy_http_requests_total{decision="confirmed",method="GET",code_class="2xx"}',
        ),
      );
    expect(Number(line?.split(' ').pop())).toBe(40);
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);
  });

  it('SIGTERM drains every worker, then the primary exits 0', async () => {
    const workerPids = [...new Set(proxy.logs.filter((l) => l.msg === 'request').map((l) => Number(l.pid)))];
    const inflight = Array.from({ length: 10 }, () =>
      fetch(`${proxy.url}/slow?ms=1000`, { headers: { 'x-auth-token': token, connection: 'close' } }).then(
        (r) => r.status,
      ),
    );
    await new Promise((r) => setTimeout(r, 300));
    const code = proxy.stop('SIGTERM');
    expect(await Promise.all(inflight)).toEqual(Array(10).fill(200));
    expect(await code).toBe(0);
    expect(workerPids.filter(alive)).toEqual([]);
  });
});
