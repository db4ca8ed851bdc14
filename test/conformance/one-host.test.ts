/**
 * One host, one identity state, against the real Keystone: the CLI with `workers: 2`. N concurrent requests on N
 * connections with one new token cost one validation for the host, and a revocation reaches both workers within
 * the poll interval plus a second. Every request uses a new connection, so node:cluster spreads them over both
 * workers; the log lines say which worker served each. Measured figures are printed (`one host …`).
 *
 * Run: npm run build && eval "$(bash scripts/keystone-local.sh env)" && npm run test:conformance
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, startCli, writeConfig } from '../helpers/cli.js';
import { echo } from '../helpers/echo-app.js';
import { listen, type Running } from '../helpers/http.js';
import {
  adminCall,
  type Fixtures,
  fixtures,
  keystoneAvailable,
  keystoneUrl,
  passwordToken,
  revokeToken,
  throwawayUser,
} from './real-keystone.js';

const required = process.env.CONFORMANCE_REQUIRED === '1';
if (required && (!keystoneAvailable() || !cliBuilt())) {
  throw new Error('CONFORMANCE_REQUIRED=1 but Keystone or dist/cli.js is missing');
}

const POLL_SECONDS = 2;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function status(url: string, token: string): Promise<number> {
  const res = await fetch(`${url}/v1/things`, { headers: { 'x-auth-token': token, connection: 'close' } });
  await res.arrayBuffer();
  return res.status;
}

/** keystone_requests_total{operation="validate"} of the host, all outcomes (the primary counts them once). */
async function validations(proxy: CliRun): Promise<number> {
  const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
  let total = 0;
  for (const match of text.matchAll(
    /^keystone_auth_proxy_keystone_requests_total\{operation="validate",outcome="[a-z_]+"\} (\d+)$/gm,
  )) {
    total += Number(match[1]);
  }
  return total;
}

async function pidsSince(proxy: CliRun, from: number): Promise<Set<unknown>> {
  // Access lines wait up to log.flush_interval_seconds (0.2 s) to be written.
  await sleep(450);
  return new Set(
    proxy.logs
      .slice(from)
      .filter((l) => l.msg === 'request')
      .map((l) => l.pid),
  );
}

/** Ms from now until every worker refuses `token`: two 401s in a row on new connections (one per worker). */
async function msUntilRefusedEverywhere(proxy: CliRun, token: string, limitMs: number): Promise<number> {
  const started = Date.now();
  let refusedInARow = 0;
  while (Date.now() - started < limitMs) {
    refusedInARow = (await status(proxy.url, token)) === 401 ? refusedInARow + 1 : 0;
    if (refusedInARow >= 4) return Date.now() - started;
    await sleep(25);
  }
  return Number.POSITIVE_INFINITY;
}

describe.skipIf(!keystoneAvailable() || !cliBuilt())(
  'one host, one state (workers: 2), real Keystone',
  () => {
    let f: Fixtures;
    let upstream: Running;
    let proxy: CliRun;

    beforeAll(async () => {
      f = fixtures();
      upstream = await listen(echo);
      proxy = await startCli([
        '--config',
        writeConfig(
          JSON.stringify({
            workers: 2,
            listen: { host: '127.0.0.1', port: 0 },
            upstream: { url: upstream.url },
            admin_listen: { host: '127.0.0.1', port: 0 },
            keystone_authtoken: {
              www_authenticate_uri: keystoneUrl(),
              auth_url: keystoneUrl(),
              username: f.service.user,
              password: f.service.password,
              user_domain_name: 'Default',
              project_name: f.service.project,
              project_domain_name: 'Default',
              service_type: f.serviceType,
              revocation_poll_interval_seconds: POLL_SECONDS,
            },
          }),
        ),
      ]);
    });
    afterAll(async () => {
      await proxy?.stop();
      await upstream?.close();
    });

    const demoToken = async () =>
      (await passwordToken(f.demo.user, f.demo.password, { project: { id: f.demo.projectId } })).token;

    it('32 concurrent requests on 32 connections, one new token: one Keystone validation for the host', async () => {
      for (let round = 0; round < 3; round++) {
        const token = await demoToken();
        const before = await validations(proxy);
        const from = proxy.logs.length;
        const statuses = await Promise.all(Array.from({ length: 32 }, () => status(proxy.url, token)));
        expect(statuses).toEqual(Array(32).fill(200));
        expect((await pidsSince(proxy, from)).size).toBe(2);
        const calls = (await validations(proxy)) - before;
        console.log(
          `one host: 32 concurrent requests, 2 workers, one new token → ${calls} Keystone validation(s)`,
        );
        expect(calls).toBe(1);
      }
    });

    it(`a revoked token is refused by both workers within the poll interval (${POLL_SECONDS} s) + 1 s`, async () => {
      const token = await demoToken();
      const from = proxy.logs.length;
      for (let i = 0; i < 6; i++) expect(await status(proxy.url, token)).toBe(200);
      expect((await pidsSince(proxy, from)).size).toBe(2);
      await revokeToken(token);
      const ms = await msUntilRefusedEverywhere(proxy, token, (POLL_SECONDS + 3) * 1000);
      console.log(
        `one host: revocation delay, token revoked, both workers: ${ms} ms (poll ${POLL_SECONDS} s)`,
      );
      expect(ms).toBeLessThanOrEqual((POLL_SECONDS + 1) * 1000);
    });

    it('a disabled user is refused by both workers within the poll interval + 1 s', async () => {
      const user = await throwawayUser('one-host');
      const token = (await passwordToken(user.name, user.password, { project: { id: f.demo.projectId } }))
        .token;
      const from = proxy.logs.length;
      for (let i = 0; i < 6; i++) expect(await status(proxy.url, token)).toBe(200);
      expect((await pidsSince(proxy, from)).size).toBe(2);
      await adminCall('PATCH', `/users/${user.id}`, { user: { enabled: false } });
      const ms = await msUntilRefusedEverywhere(proxy, token, (POLL_SECONDS + 3) * 1000);
      console.log(
        `one host: revocation delay, user disabled, both workers: ${ms} ms (poll ${POLL_SECONDS} s)`,
      );
      expect(ms).toBeLessThanOrEqual((POLL_SECONDS + 1) * 1000);
    });
  },
);
