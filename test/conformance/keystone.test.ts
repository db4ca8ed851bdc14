/**
 * Our proxy (the real CLI) against a real Keystone 22 (scripts/keystone-local.sh): every token kind, every way a
 * token stops being valid, access rules, service tokens, allow_expired, catalog, delay_auth_decision, and the
 * proxy's own credentials lacking the right to validate.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNAUTHORIZED_BODY } from '../../src/http/responses.js';
import { type CliRun, cliBuilt, startCli, writeConfig } from '../helpers/cli.js';
import { echo } from '../helpers/echo-app.js';
import { listen, type Running } from '../helpers/http.js';
import {
  adminCall,
  appCredToken,
  type Fixtures,
  fixtures,
  keystoneAvailable,
  keystoneUrl,
  passwordToken,
  revokeToken,
  shortLifetimeSeconds,
  shortLivedUrl,
  throwawayUser,
  tokenFromToken,
} from './real-keystone.js';

const required = process.env.CONFORMANCE_REQUIRED === '1';
if (required && (!keystoneAvailable() || !cliBuilt())) {
  throw new Error('CONFORMANCE_REQUIRED=1 but KEYSTONE_URL/KEYSTONE_FIXTURES or dist/cli.js is missing');
}

type Seen = { headers: Record<string, string> };

function config(upstream: string, extra: Record<string, unknown> = {}, f = fixtures()): string {
  const section = {
    www_authenticate_uri: keystoneUrl(),
    auth_url: keystoneUrl(),
    auth_type: 'password',
    username: f.service.user,
    password: f.service.password,
    user_domain_id: 'default',
    project_name: f.service.project,
    project_domain_id: 'default',
    service_type: f.serviceType,
    ...extra,
  };
  return JSON.stringify({
    // One process: the cache tests assume every request meets the same cache.
    workers: 1,
    listen: { host: '127.0.0.1', port: 0 },
    upstream: { url: upstream },
    admin_listen: { host: '127.0.0.1', port: 0 },
    keystone_authtoken: section,
    log: { level: 'info' },
  });
}

async function get(proxy: CliRun, headers: Record<string, string>, path = '/v1/things', method = 'GET') {
  const res = await fetch(`${proxy.url}${path}`, { method, headers });
  const text = await res.text();
  return {
    status: res.status,
    text,
    headers: res.headers,
    seen: res.status === 200 && text ? ((JSON.parse(text) as Seen).headers ?? {}) : {},
  };
}

describe.skipIf(!keystoneAvailable() || !cliBuilt())('our proxy against a real Keystone', () => {
  let f: Fixtures;
  let upstream: Running;
  const proxies: CliRun[] = [];
  let standard: CliRun;
  let uncached: CliRun;
  let delayed: CliRun;
  let noCatalog: CliRun;

  const start = async (extra: Record<string, unknown> = {}): Promise<CliRun> => {
    const run = await startCli(['--config', writeConfig(config(upstream.url, extra, f))]);
    proxies.push(run);
    return run;
  };

  beforeAll(async () => {
    f = fixtures();
    upstream = await listen(echo);
    [standard, uncached, delayed, noCatalog] = await Promise.all([
      start(),
      start({ token_cache_time: 0 }),
      start({ delay_auth_decision: true }),
      start({ include_service_catalog: false }),
    ]);
  });
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await upstream?.close();
  });

  const demoToken = async () =>
    (await passwordToken(f.demo.user, f.demo.password, { project: { id: f.demo.projectId } })).token;
  const serviceToken = async () =>
    (await passwordToken(f.service.user, f.service.password, { project: { id: f.service.projectId } })).token;

  describe('token kinds', () => {
    it('project-scoped: confirmed with the project, user, roles and catalog', async () => {
      const r = await get(standard, { 'x-auth-token': await demoToken() });
      expect(r.status).toBe(200);
      expect(r.seen).toMatchObject({
        'x-identity-status': 'Confirmed',
        'x-user-id': f.demo.userId,
        'x-user-name': 'demo',
        'x-user-domain-id': 'default',
        'x-project-id': f.demo.projectId,
        'x-project-name': 'demo',
        'x-tenant-id': f.demo.projectId,
        'x-is-admin-project': 'True',
      });
      expect(r.seen['x-roles']?.split(',').sort()).toEqual(['member', 'reader']);
      const catalog = JSON.parse(r.seen['x-service-catalog'] as string) as { type: string }[];
      expect(catalog.map((s) => s.type).sort()).toEqual(['echo', 'identity']);
    });

    it('domain-scoped: X-Domain-*, no project headers', async () => {
      const { token } = await passwordToken(
        f.d2.user,
        f.d2.password,
        { domain: { id: f.d2.domainId } },
        {
          userDomainId: f.d2.domainId,
        },
      );
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['x-domain-id']).toBe(f.d2.domainId);
      expect(r.seen['x-domain-name']).toBe('d2');
      expect(r.seen['x-user-domain-id']).toBe(f.d2.domainId);
      expect(r.seen['x-project-id']).toBeUndefined();
    });

    it('system-scoped: OpenStack-System-Scope: all', async () => {
      const { token } = await passwordToken(f.sysReader.user, f.sysReader.password, {
        system: { all: true },
      });
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['openstack-system-scope']).toBe('all');
      expect(r.seen['x-roles']).toBe('reader');
      expect(r.seen['x-project-id']).toBeUndefined();
    });

    it('unscoped: confirmed with empty X-Roles and no catalog', async () => {
      const { token } = await passwordToken(f.demo.user, f.demo.password, 'unscoped');
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['x-roles']).toBe('');
      expect(r.seen['x-service-catalog']).toBeUndefined();
    });

    it('application credential: a project token of its owner', async () => {
      const { token } = await appCredToken(f.appCred.id, f.appCred.secret);
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['x-user-id']).toBe(f.demo.userId);
      expect(r.seen['x-project-id']).toBe(f.demo.projectId);
    });

    it('trust-scoped: the trustee acting in the trustor project with the delegated role', async () => {
      const { token } = await passwordToken(f.trust.trustee.user, f.trust.trustee.password, {
        'OS-TRUST:trust': { id: f.trust.id },
      });
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['x-user-id']).toBe(f.trust.trustee.userId);
      expect(r.seen['x-project-id']).toBe(f.demo.projectId);
      // Keystone adds the roles the delegated one implies (member implies reader in its default rules).
      expect(r.seen['x-roles']?.split(',').sort()).toEqual(['member', 'reader']);
    });

    it('token from token: rescoped, confirmed', async () => {
      const { token: unscoped } = await passwordToken(f.demo.user, f.demo.password, 'unscoped');
      const { token } = await tokenFromToken(unscoped, { project: { id: f.demo.projectId } });
      const r = await get(standard, { 'x-auth-token': token });
      expect(r.status).toBe(200);
      expect(r.seen['x-project-id']).toBe(f.demo.projectId);
    });
  });

  describe('tokens that are no longer valid', () => {
    it('garbage and empty tokens: keystonemiddleware 401', async () => {
      for (const token of ['gAAAAABnot-a-real-token', '']) {
        const r = await get(standard, token ? { 'x-auth-token': token } : {});
        expect(r.status).toBe(401);
        expect(r.text).toBe(UNAUTHORIZED_BODY);
        expect(r.headers.get('www-authenticate')).toBe(`Keystone uri="${keystoneUrl()}"`);
      }
    });

    it('revoked before first use: 401', async () => {
      const token = await demoToken();
      await revokeToken(token);
      expect((await get(standard, { 'x-auth-token': token })).status).toBe(401);
    });

    it('revoked after being cached, revocation polling off: accepted until the cache entry ends (as keystonemiddleware); token_cache_time 0 sees it at once', async () => {
      const noPolling = await start({ revocation_poll_interval_seconds: 0 });
      const token = await demoToken();
      expect((await get(noPolling, { 'x-auth-token': token })).status).toBe(200);
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(200);
      await revokeToken(token);
      expect((await get(noPolling, { 'x-auth-token': token })).status).toBe(200);
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(401);
    });

    it('expired: 401; with a service token holding the service role, accepted (allow_expired)', async () => {
      const { token, body } = await passwordToken(
        f.demo.user,
        f.demo.password,
        { project: { id: f.demo.projectId } },
        { base: shortLivedUrl() },
      );
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(200);
      const expiresAt = Date.parse(String(body.token.expires_at));
      await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now()) + 1_200));
      expect(shortLifetimeSeconds()).toBeLessThan(30);
      expect((await get(standard, { 'x-auth-token': token })).status).toBe(401);
      const withService = await get(standard, {
        'x-auth-token': token,
        'x-service-token': await serviceToken(),
      });
      expect(withService.status).toBe(200);
      expect(withService.seen['x-service-identity-status']).toBe('Confirmed');
      expect(withService.seen['x-user-id']).toBe(f.demo.userId);
      // The allow_expired result is never served to a request without the service token.
      expect((await get(standard, { 'x-auth-token': token })).status).toBe(401);
    });

    it('user disabled: 401', async () => {
      const user = await throwawayUser('disable');
      const { token } = await passwordToken(user.name, user.password, { project: { id: f.demo.projectId } });
      await adminCall('PATCH', `/users/${user.id}`, { user: { enabled: false } });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(401);
      await adminCall('DELETE', `/users/${user.id}`);
    });

    it('password changed: 401 for tokens issued before', async () => {
      const user = await throwawayUser('repass');
      const { token } = await passwordToken(user.name, user.password, { project: { id: f.demo.projectId } });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(200);
      await adminCall('PATCH', `/users/${user.id}`, { user: { password: `${user.password}-new` } });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(401);
      await adminCall('DELETE', `/users/${user.id}`);
    });

    it('role unassigned: 401 on the next validation (no revocation event; only re-validation sees it)', async () => {
      const user = await throwawayUser('unassign');
      const { token } = await passwordToken(user.name, user.password, { project: { id: f.demo.projectId } });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(200);
      await adminCall('DELETE', `/projects/${f.demo.projectId}/users/${user.id}/roles/${f.roles.member}`);
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(401);
      await adminCall('DELETE', `/users/${user.id}`);
    });

    it('project disabled: 401', async () => {
      const project = (await adminCall('POST', '/projects', {
        project: { name: `tmp-${Date.now().toString(36)}`, domain_id: 'default' },
      })) as { project: { id: string } };
      const user = await throwawayUser('projdis');
      await adminCall('PUT', `/projects/${project.project.id}/users/${user.id}/roles/${f.roles.member}`);
      const { token } = await passwordToken(user.name, user.password, {
        project: { id: project.project.id },
      });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(200);
      await adminCall('PATCH', `/projects/${project.project.id}`, { project: { enabled: false } });
      expect((await get(uncached, { 'x-auth-token': token })).status).toBe(401);
      await adminCall('DELETE', `/projects/${project.project.id}`);
      await adminCall('DELETE', `/users/${user.id}`);
    });
  });

  describe('access rules (application credential restricted to GET /allowed/** on echo)', () => {
    it('allowed method and path: 200; other path or method: 401', async () => {
      const { token } = await appCredToken(f.appCredRules.id, f.appCredRules.secret);
      expect((await get(standard, { 'x-auth-token': token }, '/allowed/x/y')).status).toBe(200);
      expect((await get(standard, { 'x-auth-token': token }, '/denied')).status).toBe(401);
      expect((await get(standard, { 'x-auth-token': token }, '/allowed/x', 'DELETE')).status).toBe(401);
      expect((await get(standard, { 'x-auth-token': token }, '/allowed/../secret')).status).toBe(401);
    });

    it('works with include_service_catalog=false (keystonemiddleware raised KeyError here)', async () => {
      const { token } = await appCredToken(f.appCredRules.id, f.appCredRules.secret);
      const allowed = await get(noCatalog, { 'x-auth-token': token }, '/allowed/1');
      expect(allowed.status).toBe(200);
      expect(allowed.seen['x-service-catalog']).toBeUndefined();
      expect((await get(noCatalog, { 'x-auth-token': token }, '/denied')).status).toBe(401);
    });

    it('a service token skips the rules', async () => {
      const { token } = await appCredToken(f.appCredRules.id, f.appCredRules.secret);
      const r = await get(
        standard,
        { 'x-auth-token': token, 'x-service-token': await serviceToken() },
        '/denied',
      );
      expect(r.status).toBe(200);
    });
  });

  describe('service tokens', () => {
    it('valid user + service token with the service role: both confirmed, service headers set', async () => {
      const r = await get(standard, {
        'x-auth-token': await demoToken(),
        'x-service-token': await serviceToken(),
      });
      expect(r.status).toBe(200);
      expect(r.seen).toMatchObject({
        'x-identity-status': 'Confirmed',
        'x-service-identity-status': 'Confirmed',
        'x-service-user-id': f.service.userId,
        'x-service-project-id': f.service.projectId,
        'x-service-roles': 'service',
      });
    });

    it('a service token without the service role: 401 (service_token_roles_required)', async () => {
      const r = await get(standard, {
        'x-auth-token': await demoToken(),
        'x-service-token': await demoToken(),
      });
      expect(r.status).toBe(401);
    });

    it('only a service token: 401', async () => {
      expect((await get(standard, { 'x-service-token': await serviceToken() })).status).toBe(401);
    });
  });

  describe('catalog', () => {
    it('include_service_catalog=false: no X-Service-Catalog, validation with ?nocatalog still confirms', async () => {
      const r = await get(noCatalog, { 'x-auth-token': await demoToken() });
      expect(r.status).toBe(200);
      expect(r.seen['x-service-catalog']).toBeUndefined();
      expect(r.seen['x-project-id']).toBe(f.demo.projectId);
    });
  });

  describe('delay_auth_decision', () => {
    it('no token, bad token: forwarded as Invalid without identity; valid token: Confirmed', async () => {
      const none = await get(delayed, { 'x-roles': 'admin', 'openstack-system-scope': 'all' });
      expect(none.status).toBe(200);
      expect(none.seen['x-identity-status']).toBe('Invalid');
      expect(none.seen['x-roles']).toBeUndefined();
      expect(none.seen['openstack-system-scope']).toBeUndefined();
      const bad = await get(delayed, { 'x-auth-token': 'gAAAAABbad' });
      expect(bad.seen['x-identity-status']).toBe('Invalid');
      const good = await get(delayed, { 'x-auth-token': await demoToken() });
      expect(good.seen['x-identity-status']).toBe('Confirmed');
    });

    it('bad user + valid service token: user Invalid, service Confirmed', async () => {
      const r = await get(delayed, { 'x-auth-token': 'gAAAAABbad', 'x-service-token': await serviceToken() });
      expect(r.status).toBe(200);
      expect(r.seen['x-identity-status']).toBe('Invalid');
      expect(r.seen['x-service-identity-status']).toBe('Confirmed');
    });
  });

  describe("the proxy's own credentials", () => {
    it('a service user without the right to validate: 503, never 401 or 500', async () => {
      const weak = await start({ username: f.weakValidator.user, password: f.weakValidator.password });
      const r = await get(weak, { 'x-auth-token': await demoToken() });
      expect(r.status).toBe(503);
      expect(r.headers.get('retry-after')).toBe('5');
      expect((await fetch(`${weak.adminUrl}/readyz`)).status).toBe(200);
    });

    it('wrong password for the service user: 503 and not ready', async () => {
      const wrong = await start({ password: 'not-the-password' });
      expect((await get(wrong, { 'x-auth-token': await demoToken() })).status).toBe(503);
      expect((await fetch(`${wrong.adminUrl}/readyz`)).status).toBe(503);
    });

    it('application credential as the proxy credentials', async () => {
      const appCredProxy = await start({
        auth_type: 'v3applicationcredential',
        application_credential_id: f.appCred.id,
        application_credential_secret: f.appCred.secret,
        username: undefined,
        password: undefined,
        user_domain_id: undefined,
        project_name: undefined,
        project_domain_id: undefined,
      });
      // demo's own application credential has no service role: Keystone refuses it the validation of others.
      expect((await get(appCredProxy, { 'x-auth-token': await serviceToken() })).status).toBe(503);
      // but a token may always be validated by its own user.
      expect((await get(appCredProxy, { 'x-auth-token': await demoToken() })).status).toBe(200);
    });
  });
});
