/**
 * `filter: oauth2_token` through the real CLI as a 2-worker host, against the Keystone emulator: the token comes
 * from `Authorization: Bearer` only, the application sees keystonemiddleware's oauth2_token headers (no
 * X-Identity-Status), forward-auth reads the same header, and /metrics and the access log name the filter.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { UNAUTHORIZED_BODY } from '../../src/http/responses.js';
import {
  type CliRun,
  cliBuilt,
  runCli,
  scrapeMetric,
  sidecarYaml,
  startCli,
  writeConfig,
} from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const CHALLENGE = 'Keystone uri="http://keystone.example:5000"';

type Seen = { headers: Record<string, string> };

describe.skipIf(!cliBuilt())('filter: oauth2_token (real CLI, workers: 2)', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let proxy: CliRun;
  let token: string;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    const yaml = `workers: 2\nfilter: oauth2_token\n${sidecarYaml({
      keystoneUrl: keystone.url,
      upstreamUrl: upstream.url,
      responseTimeoutSeconds: 5,
      keystoneTimeoutSeconds: 1,
      rest: 'forward_auth: { enabled: true, path: /auth }\nlog: { level: info }\n',
    })}`;
    proxy = await startCli(['--config', writeConfig(yaml)], ENV);
    token = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member, roles.reader],
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await upstream?.close();
    await keystone?.close();
  });

  it('Bearer token: forwarded with the identity headers and no X-Identity-Status; spoofed headers gone', async () => {
    const res = await fetch(`${proxy.url}/v1/things`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-identity-status': 'Confirmed',
        'x-roles': 'admin',
        'openstack-system-scope': 'all',
      },
    });
    expect(res.status).toBe(200);
    const seen = (await res.json()) as Seen;
    expect(seen.headers['x-identity-status']).toBeUndefined();
    expect(seen.headers['x-roles']).toBe('member,reader');
    expect(seen.headers['x-user-id']).toBe(users.demo.id);
    expect(seen.headers['x-project-id']).toBe(projects.demo.id);
    expect(seen.headers['openstack-system-scope']).toBeUndefined();
    expect(seen.headers.authorization).toBe(`Bearer ${token}`);
  });

  it.each([
    ['X-Auth-Token', { 'x-auth-token': '' }],
    ['a lower-case bearer scheme', { authorization: 'bearer ' }],
  ])('%s is not a token here: 401 with the Keystone challenge', async (_name, shape) => {
    const headers = Object.fromEntries(Object.entries(shape).map(([k, v]) => [k, `${v}${token}`]));
    const res = await fetch(`${proxy.url}/v1/things`, { headers });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    expect(await res.text()).toBe(UNAUTHORIZED_BODY);
  });

  it('32 concurrent requests with one new Bearer token: one Keystone validation for the host', async () => {
    const fresh = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member],
    });
    const before = keystone.count('validate');
    const statuses = await Promise.all(
      Array.from({ length: 32 }, () =>
        fetch(`${proxy.url}/v1/things`, { headers: { authorization: `Bearer ${fresh}` } }).then(
          (r) => r.status,
        ),
      ),
    );
    expect(statuses).toEqual(Array(32).fill(200));
    expect(keystone.count('validate') - before).toBe(1);
  });

  it('forward-auth reads the same header', async () => {
    const url = proxy.forwardAuthUrl as string;
    const ok = await fetch(url, { headers: { authorization: `Bearer ${token}`, 'x-original-uri': '/v1/x' } });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-user-id')).toBe(users.demo.id);
    expect(ok.headers.get('x-identity-status')).toBeNull();
    const refused = await fetch(url, { headers: { 'x-auth-token': token, 'x-original-uri': '/v1/x' } });
    expect(refused.status).toBe(401);
  });

  it('/metrics and the access log name the filter', async () => {
    expect(
      await scrapeMetric(proxy.adminUrl, 'keystone_auth_proxy_auth_filter_info{filter="oauth2_token"}'),
    ).toBe(1);
    // Access lines may wait log.flush_interval_seconds to be written.
    await vi.waitFor(() => {
      const line = proxy.logs.find((entry) => entry.msg === 'request' && entry.path === '/v1/things');
      expect(line?.filter).toBe('oauth2_token');
    });
  });
});

describe.skipIf(!cliBuilt())('filter in the config file', () => {
  it('is a top-level key: inside keystone_authtoken, or an unknown filter, is exit 2 naming the path', async () => {
    const base = sidecarYaml({
      keystoneUrl: 'http://127.0.0.1:1',
      upstreamUrl: 'http://127.0.0.1:2',
      responseTimeoutSeconds: 1,
      keystoneTimeoutSeconds: 1,
      authtoken: ['filter: oauth2_token'],
    });
    const result = await runCli(['--check-config', '--config', writeConfig(`filter: oauth3\n${base}`)], ENV);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('keystone_authtoken.filter');
    expect(result.stderr).toMatch(/- filter: .*"oauth2_token"/);
  });
});
