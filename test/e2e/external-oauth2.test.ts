/**
 * `filter: external_oauth2_token` through the real CLI as a 2-worker host, against oidc-provider on 127.0.0.1:
 * RFC 7662 introspection with client_secret_basic, keystonemiddleware's external filter headers and answers
 * (401 body and `Authorization OAuth 2.0` challenge, 403 for unmappable claims), every client-sent identity
 * header stripped in every spelling (CVE-2026-22797 and OpenStack-System-Scope), the negative cache, forward-auth,
 * metrics, no token or secret in the logs at trace level; an unreachable server gives 503 + Retry-After; config
 * problems exit 2 naming the path.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EXT_FORBIDDEN_BODY, EXT_UNAUTHORIZED_BODY, EXT_UNAVAILABLE_BODY } from '../../src/http/responses.js';
import { httpsGet, opensslAvailable } from '../helpers/certificates.js';
import { type CliRun, cliBuilt, runCli, scrapeMetric, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { type OAuth2Server, SECRETS, startOAuth2Server } from '../helpers/oauth2-server.js';
import { createUpstream } from '../helpers/upstream.js';

type Seen = { headers: Record<string, string> };

const ALICE = {
  username: 'alice',
  user_domain: { id: 'default', name: 'Default' },
  project: { id: 'p-demo', name: 'demo', domain: { id: 'default', name: 'Default' } },
  roles: 'member,reader',
};

/** Every identity header a client might try to smuggle in, in the spellings WSGI servers fold together. */
const SPOOFED: Record<string, string> = {
  'X-Identity-Status': 'Confirmed',
  'X-Roles': 'admin',
  X_Roles: 'admin',
  'x-role': 'admin',
  'X-User-Id': 'root',
  x_user_id: 'root',
  'X-User-Name': 'root',
  'X-Project-Id': 'p-other',
  'X-Tenant': 'p-other',
  'X-Tenant-Id': 'p-other',
  'X-Domain-Id': 'd-other',
  'X-Is-Admin-Project': 'true',
  X_IS_ADMIN_PROJECT: 'True',
  'OpenStack-System-Scope': 'all',
  OPENSTACK_SYSTEM_SCOPE: 'all',
  'X-Service-Roles': 'service',
  'X-Service-Catalog': '[]',
};

function extYaml(introspectEndpoint: string, audience: string, upstreamUrl: string, extra = ''): string {
  return `
workers: 2
filter: external_oauth2_token
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${upstreamUrl}", response_timeout_seconds: 5, connect_timeout_seconds: 1 }
admin_listen: { host: 127.0.0.1, port: 0 }
forward_auth: { enabled: true, path: /auth }
log: { level: trace }
ext_oauth2_auth:
  introspect_endpoint: "${introspectEndpoint}"
  audience: "${audience}"
  auth_method: client_secret_basic
  client_id: proxy-client_secret_basic
  client_secret: "\${TEST_CLIENT_SECRET}"
  mapping_user_id: client_id
  mapping_user_name: username
  mapping_user_domain_id: user_domain.id
  mapping_user_domain_name: user_domain.name
  mapping_project_id: project.id
  mapping_project_name: project.name
  mapping_project_domain_id: project.domain.id
  mapping_project_domain_name: project.domain.name
  mapping_roles: roles
  mapping_system_scope: system
  http_request_timeout_seconds: 1
  http_request_max_retries: 0
${extra}`;
}
const ENV = { TEST_CLIENT_SECRET: SECRETS.basic };

describe.skipIf(!cliBuilt() || !opensslAvailable())(
  'filter: external_oauth2_token (real CLI, workers: 2)',
  () => {
    let as: OAuth2Server;
    let upstream: Running;
    let proxy: CliRun;
    let challenge: string;
    const tokens: string[] = [];
    const issue = async (claims: Record<string, unknown>): Promise<string> => {
      as.claims.set('app', claims);
      const token = await as.token();
      tokens.push(token);
      return token;
    };

    beforeAll(async () => {
      as = await startOAuth2Server();
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      proxy = await startCli(
        ['--config', writeConfig(extYaml(as.introspectionEndpoint, as.tokenEndpoint, upstream.url))],
        ENV,
      );
      challenge = `Authorization OAuth 2.0 uri="${as.tokenEndpoint}"`;
    });
    afterAll(async () => {
      await proxy?.stop();
      await upstream?.close();
      await as?.close();
    });

    it('a project-scoped token: forwarded with the external filter headers; every spoofed header gone', async () => {
      const token = await issue(ALICE);
      const res = await fetch(`${proxy.url}/v1/things`, {
        headers: { ...SPOOFED, authorization: `Bearer ${token}` },
      });
      expect(res.status).toBe(200);
      const { headers } = (await res.json()) as Seen;
      expect(headers).toMatchObject({
        'x-identity-status': 'Confirmed',
        'x-user-id': 'app',
        'x-user-name': 'alice',
        'x-user': 'alice',
        'x-user-domain-id': 'default',
        'x-user-domain-name': 'Default',
        'x-project-id': 'p-demo',
        'x-project-name': 'demo',
        'x-project-domain-id': 'default',
        'x-project-domain-name': 'Default',
        'x-tenant-id': 'p-demo',
        'x-tenant-name': 'demo',
        // keystonemiddleware's external filter: the project id (auth_token: the name).
        'x-tenant': 'p-demo',
        'x-roles': 'member,reader',
        'x-role': 'member,reader',
        authorization: `Bearer ${token}`,
      });
      for (const name of [
        'x-is-admin-project',
        'openstack-system-scope',
        'x-domain-id',
        'x-service-roles',
        'x-service-catalog',
        'x_roles',
        'x_user_id',
        'x_is_admin_project',
        'openstack_system_scope',
      ]) {
        expect(headers[name], name).toBeUndefined();
      }
    });

    it('a token with the admin role: X-Is-Admin-Project: true', async () => {
      const token = await issue({ ...ALICE, roles: 'admin,member' });
      const res = await fetch(`${proxy.url}/v1/things`, { headers: { authorization: `Bearer ${token}` } });
      const { headers } = (await res.json()) as Seen;
      expect(headers['x-is-admin-project']).toBe('true');
    });

    it('a system-scoped token: OpenStack-System-Scope: all and no project; spoofed project headers gone', async () => {
      const token = await issue({ ...ALICE, system: true });
      const res = await fetch(`${proxy.url}/v1/things`, {
        headers: { authorization: `Bearer ${token}`, 'X-Project-Id': 'p-other', 'X-Tenant': 'p-other' },
      });
      const { headers } = (await res.json()) as Seen;
      expect(headers['openstack-system-scope']).toBe('all');
      expect(headers['x-project-id']).toBeUndefined();
      expect(headers['x-tenant']).toBeUndefined();
    });

    it.each([
      ['no token', {}],
      ['X-Auth-Token instead of Bearer', { 'x-auth-token': 'abc' }],
      ['a lower-case bearer scheme', { authorization: 'bearer abc' }],
      ['an unknown token', { authorization: 'Bearer abc' }],
    ])('%s: 401 with the body and challenge of keystonemiddleware', async (_n, h) => {
      const res = await fetch(`${proxy.url}/v1/things`, { headers: { ...SPOOFED, ...h } });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe(challenge);
      expect(res.headers.get('content-type')).toBe('application/json; charset=UTF-8');
      expect(await res.text()).toBe(EXT_UNAUTHORIZED_BODY);
    });

    it('an inactive token: 401, and answered from the negative cache the second time', async () => {
      const token = await issue(ALICE);
      await as.revoke(token);
      const first = await fetch(`${proxy.url}/v1/x`, { headers: { authorization: `Bearer ${token}` } });
      expect(first.status).toBe(401);
      const asked = as.introspections();
      const second = await fetch(`${proxy.url}/v1/x`, { headers: { authorization: `Bearer ${token}` } });
      expect(second.status).toBe(401);
      expect(as.introspections()).toBe(asked);
    });

    it('an active token is introspected once, then served from the host cache by both workers', async () => {
      const token = await issue(ALICE);
      const before = as.introspections();
      const answers = await Promise.all(
        Array.from({ length: 16 }, () =>
          fetch(`${proxy.url}/v1/x`, { headers: { authorization: `Bearer ${token}` } }).then((r) => r.status),
        ),
      );
      expect(answers.every((status) => status === 200)).toBe(true);
      expect(as.introspections() - before).toBe(1);
    });

    it('claims without the identity: 403, keystonemiddleware body, no challenge', async () => {
      const { username: _drop, ...noName } = ALICE;
      const token = await issue(noName);
      const res = await fetch(`${proxy.url}/v1/x`, { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(403);
      expect(res.headers.get('www-authenticate')).toBeNull();
      expect(await res.text()).toBe(EXT_FORBIDDEN_BODY);
    });

    it('forward-auth reads the Bearer token and answers the identity headers', async () => {
      const token = await issue(ALICE);
      const url = proxy.forwardAuthUrl as string;
      const ok = await fetch(url, {
        headers: { authorization: `Bearer ${token}`, 'x-original-uri': '/v1/x' },
      });
      expect(ok.status).toBe(200);
      expect(ok.headers.get('x-user-id')).toBe('app');
      expect(ok.headers.get('x-tenant')).toBe('p-demo');
      const refused = await fetch(url, { headers: { 'x-original-uri': '/v1/x', 'X-Roles': 'admin' } });
      expect(refused.status).toBe(401);
      expect(refused.headers.get('www-authenticate')).toBe(challenge);
    });

    it('/readyz: ready while the authorization server answers introspection', async () => {
      const res = await fetch(`${proxy.adminUrl}/readyz`);
      expect(res.status).toBe(200);
    });

    it('/metrics names the filter and counts introspections; the access log names the filter', async () => {
      expect(
        await scrapeMetric(
          proxy.adminUrl,
          'keystone_auth_proxy_auth_filter_info{filter="external_oauth2_token"}',
        ),
      ).toBe(1);
      expect(
        await scrapeMetric(
          proxy.adminUrl,
          'keystone_auth_proxy_keystone_requests_total{operation="introspect",outcome="ok"}',
        ),
      ).toBeGreaterThan(0);
      // Access lines may wait log.flush_interval_seconds to be written.
      await vi.waitFor(() => {
        const line = proxy.logs.find((entry) => entry.msg === 'request' && entry.path === '/v1/things');
        expect(line?.filter).toBe('external_oauth2_token');
      });
    });

    it('no token and no client secret in the logs (trace level, both workers and the primary)', () => {
      const text = `${JSON.stringify(proxy.logs)}\n${proxy.stderr()}`;
      expect(tokens.length).toBeGreaterThan(4);
      for (const token of tokens) expect(text).not.toContain(token);
      expect(text).not.toContain(SECRETS.basic);
      expect(text).not.toContain(
        Buffer.from(`proxy-client_secret_basic:${SECRETS.basic}`).toString('base64'),
      );
    });
  },
);

describe.skipIf(!cliBuilt())('external_oauth2_token: authorization server unreachable', () => {
  let upstream: Running;
  let proxy: CliRun;
  beforeAll(async () => {
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    // Port 9 (discard) on loopback: nothing listens, connections are refused.
    const yaml = extYaml('http://127.0.0.1:9/introspect', 'http://127.0.0.1:9/token', upstream.url).replace(
      'workers: 2',
      'workers: 1',
    );
    proxy = await startCli(['--config', writeConfig(yaml)], ENV);
  });
  afterAll(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('503 with Retry-After and a JSON body (keystonemiddleware: 500); the upstream is not reached', async () => {
    const res = await fetch(`${proxy.url}/v1/x`, { headers: { authorization: 'Bearer some-token' } });
    expect(res.status).toBe(503);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await res.text()).toBe(EXT_UNAVAILABLE_BODY);
  });

  it('/readyz: 503', async () => {
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(503);
  });

  it('without a token it is still 401: nothing to ask the server', async () => {
    const res = await fetch(`${proxy.url}/v1/x`);
    expect(res.status).toBe(401);
  });
});

describe.skipIf(!cliBuilt())('ext_oauth2_auth in the config file', () => {
  const base = extYaml('http://127.0.0.1:9/i', 'http://127.0.0.1:9/t', 'http://127.0.0.1:2');
  it.each([
    [
      'the section missing',
      'filter: external_oauth2_token\nlisten: { host: 127.0.0.1, port: 0 }\nupstream: { url: "http://127.0.0.1:2" }\n',
      'ext_oauth2_auth: is required when filter is external_oauth2_token',
    ],
    [
      'client_secret missing for client_secret_basic',
      base.replace(/ {2}client_secret: .*\n/, ''),
      'ext_oauth2_auth.client_secret: is required with auth_method client_secret_basic',
    ],
    [
      'an unreadable jwt_key_file',
      base.replace(
        'auth_method: client_secret_basic',
        'auth_method: private_key_jwt\n  jwt_key_file: /nonexistent/key.pem',
      ),
      'ext_oauth2_auth.jwt_key_file: cannot read /nonexistent/key.pem',
    ],
    ['an unknown option', `${base}  mapping_tenant: x\n`, 'ext_oauth2_auth.mapping_tenant: unknown option'],
    ['mapping_roles missing', base.replace(/ {2}mapping_roles: .*\n/, ''), 'ext_oauth2_auth.mapping_roles'],
  ])('%s: exit 2 naming the path', async (_name, yaml, expected) => {
    const result = await runCli(['--check-config', '--config', writeConfig(yaml)], ENV);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(expected);
    expect(result.stderr).not.toContain(SECRETS.basic);
  });

  it('a valid section passes --check-config without keystone_authtoken', async () => {
    const result = await runCli(['--check-config', '--config', writeConfig(base)], ENV);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });
});

describe.skipIf(!cliBuilt() || !opensslAvailable())(
  'external_oauth2_token thumbprint_verify on the sidecar',
  () => {
    let as: OAuth2Server;
    let upstream: Running;
    let tlsProxy: CliRun;
    let ingressProxy: CliRun;
    let bound: string;
    const INGRESS_HEADER = 'ssl-client-cert';

    beforeAll(async () => {
      as = await startOAuth2Server();
      as.claims.set('app-mtls', ALICE);
      as.claims.set('app', ALICE);
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      bound = await as.boundToken(as.certs.alice);
      const base = extYaml(
        as.introspectionEndpoint,
        as.tokenEndpoint,
        upstream.url,
        '  thumbprint_verify: true\n',
      )
        .replace('workers: 2', 'workers: 1')
        .replace('log: { level: trace }', 'log: { level: info }');
      const server = as.serverCert;
      const tls = base.replace(
        'listen: { host: 127.0.0.1, port: 0 }',
        `listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${server.certFile}, keyfile: ${server.keyFile}, client_cafile: ${as.ca.certFile}, client_auth: optional } }`,
      );
      tlsProxy = await startCli(['--config', writeConfig(tls)], ENV);
      ingressProxy = await startCli(
        ['--config', writeConfig(`${base}  client_certificate_header: ${INGRESS_HEADER}\n`)],
        ENV,
      );
    });
    afterAll(async () => {
      await tlsProxy?.stop();
      await ingressProxy?.stop();
      await upstream?.close();
      await as?.close();
    });

    it("the proxy's own mutual-TLS listener: the bound certificate 200; another, none, or an unbound token 401", async () => {
      const get = (token: string, who: 'alice' | 'mallory' | undefined) =>
        httpsGet(`${tlsProxy.url}/v1/x`, {
          ca: as.ca.certFile,
          client:
            who === undefined
              ? undefined
              : { cert: as.certs[who].certFile, key: as.certs[who].keyFile, serial: '' },
          headers: { authorization: `Bearer ${token}`, 'X-Is-Admin-Project': 'true' },
        });
      const ok = await get(bound, 'alice');
      expect(ok.status).toBe(200);
      const seen = JSON.parse(ok.text) as Seen;
      expect(seen.headers['x-user-id']).toBe('app-mtls');
      expect(seen.headers['x-is-admin-project']).toBeUndefined();
      expect((await get(bound, 'mallory')).status).toBe(401);
      expect((await get(bound, undefined)).status).toBe(401);
      expect((await get(await as.token(), 'alice')).status).toBe(401);
      const metric = (result: string) =>
        scrapeMetric(tlsProxy.adminUrl, `keystone_auth_proxy_auth_decisions_total{result="${result}"}`);
      expect(await metric('certificate_mismatch')).toBe(2);
      expect(await metric('certificate_missing')).toBe(1);
    });

    it('behind a TLS-terminating ingress: client_certificate_header with the escaped PEM', async () => {
      const status = async (headers: Record<string, string>) =>
        (
          await fetch(`${ingressProxy.url}/v1/x`, {
            headers: { authorization: `Bearer ${bound}`, ...headers },
          })
        ).status;
      expect(await status({ [INGRESS_HEADER]: encodeURIComponent(as.certs.alice.cert) })).toBe(200);
      expect(await status({ [INGRESS_HEADER]: encodeURIComponent(as.certs.mallory.cert) })).toBe(401);
      expect(await status({})).toBe(401);
    });
  },
);
