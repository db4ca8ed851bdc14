import type { IncomingHttpHeaders } from 'node:http';
import { Agent, request as httpRequest } from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KeystoneEmulator } from '../helpers/keystone-emulator.js';
import { fixtures, startKeystoneEmulator } from '../helpers/keystone-emulator.js';

interface TokenDoc {
  token: {
    methods: string[];
    user: { domain: { id: string; name: string }; id: string; name: string; password_expires_at: null };
    audit_ids: string[];
    expires_at: string;
    issued_at: string;
    project?: { domain: { id: string; name: string }; id: string; name: string };
    domain?: { id: string; name: string };
    system?: { all: boolean };
    roles?: { id: string; name: string }[];
    catalog?: {
      endpoints: { id: string; interface: string; region_id: string; url: string; region: string }[];
      id: string;
      type: string;
      name: string;
    }[];
    application_credential?: {
      id: string;
      name: string;
      restricted: boolean;
      access_rules?: { id: string; service: string; path: string; method: string }[];
    };
    [key: string]: unknown;
  };
}

interface Answer {
  status: number;
  headers: Headers;
  text: string;
}

const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000Z$/;
const UNAUTHORIZED_BODY =
  '{"error":{"code":401,"message":"The request you have made requires authentication.",' +
  '"title":"Unauthorized"}}\n';
const { roles, users, projects, domains } = fixtures;

let emu: KeystoneEmulator;

async function call(
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: unknown; signal?: AbortSignal } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${emu.url}${path}`, {
    method: init.method ?? 'GET',
    headers,
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
    ...(init.signal ? { signal: init.signal } : {}),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

function tokenOf(answer: Answer): TokenDoc['token'] {
  return (JSON.parse(answer.text) as TokenDoc).token;
}

function passwordAuth(user: { name: string; domain: string; password: string }, scope?: unknown) {
  return {
    auth: {
      identity: {
        methods: ['password'],
        password: { user: { name: user.name, domain: { name: user.domain }, password: user.password } },
      },
      ...(scope !== undefined ? { scope } : {}),
    },
  };
}

const proxyLogin = passwordAuth(
  { name: 'proxy', domain: 'Default', password: 'proxy-secret' },
  { project: { name: 'service', domain: { name: 'Default' } } },
);
const demoLogin = passwordAuth(
  { name: 'demo', domain: 'Default', password: 'demo-secret' },
  { project: { name: 'demo', domain: { name: 'Default' } } },
);

async function login(body: unknown, query = ''): Promise<{ id: string; answer: Answer }> {
  const answer = await call(`/v3/auth/tokens${query}`, { method: 'POST', body });
  expect(answer.status).toBe(201);
  return { id: answer.headers.get('x-subject-token') ?? '', answer };
}

function proxyToken(): string {
  return emu.issueToken({ user: users.proxy, scope: { project: projects.service }, roles: [roles.service] });
}

function validate(
  subject: string | undefined,
  caller: string,
  query = '',
  extra: Record<string, string> = {},
) {
  const headers: Record<string, string> = { 'X-Auth-Token': caller, ...extra };
  if (subject !== undefined) headers['X-Subject-Token'] = subject;
  return call(`/v3/auth/tokens${query}`, { headers });
}

/** Plain node:http, for what fetch hides: socket reuse and socket-level errors. */
function rawRequest(
  url: string,
  options: { method?: string; headers?: Record<string, string>; agent?: Agent | false } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string; reusedSocket: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, {
      method: options.method ?? 'GET',
      headers: options.headers,
      agent: options.agent,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          reusedSocket: req.reusedSocket,
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function errorCode(err: unknown): string | undefined {
  const e = err as { code?: string; cause?: { code?: string } };
  return e.cause?.code ?? e.code;
}

beforeEach(async () => {
  emu = await startKeystoneEmulator();
});

afterEach(async () => {
  await emu.close();
});

describe('discovery', () => {
  it('answers GET /v3 and /v3/ with the version document, byte for byte like Keystone', async () => {
    expect(emu.url).toBe(`http://127.0.0.1:${emu.port}`);
    const expected =
      `{"version": {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z", "links": ` +
      `[{"rel": "self", "href": "${emu.url}/v3/"}], "media-types": [{"base": "application/json", ` +
      `"type": "application/vnd.openstack.identity-v3+json"}]}}`;
    for (const path of ['/v3', '/v3/']) {
      const answer = await call(path);
      expect(answer.status).toBe(200);
      expect(answer.text).toBe(expected);
      expect(answer.headers.get('content-type')).toBe('application/json');
      expect(answer.headers.get('content-length')).toBe(String(Buffer.byteLength(expected)));
      expect(answer.headers.get('vary')).toBe('X-Auth-Token');
      expect(answer.headers.get('x-openstack-request-id')).toMatch(/^req-[0-9a-f]{8}-[0-9a-f-]{27}$/);
    }
    expect(emu.count('discovery')).toBe(2);
  });

  it('answers GET / with 300 Multiple Choices pointing at /v3/', async () => {
    const res = await fetch(`${emu.url}/`, { redirect: 'manual' });
    expect(res.status).toBe(300);
    expect(res.headers.get('location')).toBe(`${emu.url}/v3/`);
    const doc = (await res.json()) as { versions: { values: { id: string; links: { href: string }[] }[] } };
    expect(doc.versions.values).toHaveLength(1);
    expect(doc.versions.values[0]?.id).toBe('v3.14');
    expect(doc.versions.values[0]?.links[0]?.href).toBe(`${emu.url}/v3/`);
    expect(emu.count('discovery')).toBe(1);
  });
});

describe('POST /v3/auth/tokens', () => {
  it('issues a project token for the proxy with the body shaped like Keystone', async () => {
    const { id, answer } = await login(proxyLogin);
    expect(id).toMatch(/^gAAAAAB[A-Za-z0-9_-]{160,200}$/);
    expect(answer.headers.get('vary')).toBe('X-Auth-Token');
    expect(answer.headers.get('content-length')).toBe(String(Buffer.byteLength(answer.text)));
    // Python json.dumps separators, as Keystone writes them.
    expect(
      answer.text.startsWith('{"token": {"methods": ["password"], "user": {"domain": {"id": "default"'),
    ).toBe(true);
    const token = tokenOf(answer);
    expect(Object.keys(token)).toEqual([
      'methods',
      'user',
      'audit_ids',
      'expires_at',
      'issued_at',
      'project',
      'is_domain',
      'roles',
      'catalog',
    ]);
    expect(Object.keys(token.user)).toEqual(['domain', 'id', 'name', 'password_expires_at']);
    expect(token.user).toEqual({
      domain: { id: 'default', name: 'Default' },
      id: users.proxy.id,
      name: 'proxy',
      password_expires_at: null,
    });
    expect(token.project).toEqual({
      domain: { id: 'default', name: 'Default' },
      id: projects.service.id,
      name: 'service',
    });
    expect(Object.keys(token.project ?? {})).toEqual(['domain', 'id', 'name']);
    expect(token.is_domain).toBe(false);
    expect(token.roles).toEqual([roles.service]);
    expect(token.audit_ids).toHaveLength(1);
    expect(token.audit_ids[0]).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(token.issued_at).toMatch(TIMESTAMP);
    expect(token.expires_at).toMatch(TIMESTAMP);
    expect(Date.parse(token.expires_at) - Date.parse(token.issued_at)).toBe(3600_000);
    expect(Math.abs(Date.parse(token.issued_at) - Date.now())).toBeLessThan(5000);

    const catalog = token.catalog ?? [];
    expect(catalog.map((s) => [s.type, s.name])).toEqual([
      ['identity', 'keystone'],
      ['echo', 'echo'],
    ]);
    const identity = catalog[0];
    expect(Object.keys(identity ?? {})).toEqual(['endpoints', 'id', 'type', 'name']);
    expect(identity?.id).toMatch(/^[0-9a-f]{32}$/);
    expect(identity?.endpoints.map((e) => e.interface)).toEqual(['public', 'internal', 'admin']);
    for (const endpoint of identity?.endpoints ?? []) {
      expect(Object.keys(endpoint)).toEqual(['id', 'interface', 'region_id', 'url', 'region']);
      expect(endpoint).toMatchObject({ url: `${emu.url}/v3`, region_id: 'RegionOne', region: 'RegionOne' });
    }
    expect(catalog[1]?.endpoints).toEqual([
      expect.objectContaining({ interface: 'public', url: 'http://127.0.0.1:8081', region: 'RegionOne' }),
    ]);
    expect(emu.count('auth')).toBe(1);
  });

  it('finds users and projects by id, honours ?nocatalog and issues distinct tokens', async () => {
    const body = {
      auth: {
        identity: {
          methods: ['password'],
          password: { user: { id: users.demo.id, password: 'demo-secret' } },
        },
        scope: { project: { id: projects.demo.id } },
      },
    };
    const first = await login(body, '?nocatalog');
    const second = await login(body, '?nocatalog');
    expect(first.id).not.toBe(second.id);
    const token = tokenOf(first.answer);
    expect(token.catalog).toBeUndefined();
    expect(token.project?.id).toBe(projects.demo.id);
    expect(token.roles).toEqual([roles.member, roles.reader]);
    expect(tokenOf(second.answer).audit_ids).not.toEqual(token.audit_ids);
  });

  it('scopes a request without scope to the default project, and "unscoped" to nothing', async () => {
    const creds = { name: 'demo', domain: 'Default', password: 'demo-secret' };
    const defaulted = tokenOf((await login(passwordAuth(creds))).answer);
    expect(defaulted.project?.id).toBe(projects.demo.id);
    expect(defaulted.roles?.map((r) => r.name)).toEqual(['member', 'reader']);

    const unscoped = tokenOf((await login(passwordAuth(creds, 'unscoped'))).answer);
    expect(Object.keys(unscoped)).toEqual(['methods', 'user', 'audit_ids', 'expires_at', 'issued_at']);
  });

  it('issues domain and system tokens with Keystone key order', async () => {
    const d2user = { name: 'd2user', domain: 'd2', password: 'd2-secret' };
    const domainToken = tokenOf((await login(passwordAuth(d2user, { domain: { name: 'd2' } }))).answer);
    expect(Object.keys(domainToken).slice(5)).toEqual(['domain', 'roles', 'catalog']);
    expect(domainToken.domain).toEqual(domains.d2);
    expect(domainToken.user.domain).toEqual(domains.d2);

    const admin = { name: 'admin', domain: 'Default', password: 'admin-secret' };
    const systemToken = tokenOf(
      (await login(passwordAuth(admin, { system: { all: true } }), '?nocatalog')).answer,
    );
    expect(Object.keys(systemToken).slice(5)).toEqual(['roles', 'system']);
    expect(systemToken.system).toEqual({ all: true });
    expect(systemToken.roles?.map((r) => r.name)).toEqual(['admin', 'member', 'reader']);
  });

  it('answers 401 for a wrong password, unknown or disabled user, or a scope without a role', async () => {
    emu.addUser(
      { id: 'disabled-id', name: 'disabled', domainId: 'default', domainName: 'Default', password: 'x' },
      [{ project: projects.demo, roles: [roles.member] }],
    );
    emu.addUser(
      {
        id: 'disabled-id',
        name: 'disabled',
        domainId: 'default',
        domainName: 'Default',
        password: 'x',
        enabled: false,
      },
      [{ project: projects.demo, roles: [roles.member] }],
    );
    const demoScope = { project: { name: 'demo', domain: { name: 'Default' } } };
    const attempts = [
      passwordAuth({ name: 'demo', domain: 'Default', password: 'wrong' }, demoScope),
      passwordAuth({ name: 'nobody', domain: 'Default', password: 'demo-secret' }, demoScope),
      passwordAuth({ name: 'demo', domain: 'd2', password: 'demo-secret' }, demoScope),
      passwordAuth({ name: 'disabled', domain: 'Default', password: 'x' }, demoScope),
      passwordAuth(
        { name: 'demo', domain: 'Default', password: 'demo-secret' },
        { project: { name: 'service', domain: { name: 'Default' } } },
      ),
      passwordAuth({ name: 'demo', domain: 'Default', password: 'demo-secret' }, { system: { all: true } }),
    ];
    for (const body of attempts) {
      const answer = await call('/v3/auth/tokens', { method: 'POST', body });
      expect(answer.status).toBe(401);
      expect(answer.text).toBe(UNAUTHORIZED_BODY);
      expect(answer.headers.get('www-authenticate')).toBe(`Keystone uri="${emu.url}/v3"`);
      expect(answer.headers.get('x-subject-token')).toBeNull();
    }
  });

  it('answers 400 for a body that is not JSON', async () => {
    const res = await fetch(`${emu.url}/v3/auth/tokens`, { method: 'POST', body: '{not json' });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: number } }).error.code).toBe(400);
  });

  it('rescopes a token (token method) keeping the audit chain and the expiry', async () => {
    const parent = await login(
      passwordAuth({ name: 'demo', domain: 'Default', password: 'demo-secret' }, 'unscoped'),
    );
    const parentToken = tokenOf(parent.answer);
    const body = {
      auth: {
        identity: { methods: ['token'], token: { id: parent.id } },
        scope: { project: { name: 'demo', domain: { name: 'Default' } } },
      },
    };
    const child = tokenOf((await login(body, '?nocatalog')).answer);
    expect(child.methods).toEqual(['token', 'password']);
    expect(child.audit_ids).toHaveLength(2);
    expect(child.audit_ids[1]).toBe(parentToken.audit_ids[0]);
    expect(child.expires_at).toBe(parentToken.expires_at);
    expect(child.project?.id).toBe(projects.demo.id);

    emu.revoke(parent.id);
    const refused = await call('/v3/auth/tokens', { method: 'POST', body });
    expect(refused.status).toBe(401);
  });

  it('authenticates application credentials by id or by name and user', async () => {
    emu.addAppCred({
      id: '42b2a4ca823f4acaa6f4d9e4dbf93dc5',
      name: 'demo-appcred',
      secret: 's3cret',
      user: users.demo,
      project: projects.demo,
      roles: [roles.reader, roles.member],
    });
    const byId = {
      auth: {
        identity: {
          methods: ['application_credential'],
          application_credential: { id: '42b2a4ca823f4acaa6f4d9e4dbf93dc5', secret: 's3cret' },
        },
      },
    };
    const { id, answer } = await login(byId);
    expect(id).toMatch(/^gAAAAAB/);
    const token = tokenOf(answer);
    expect(Object.keys(token)).toEqual([
      'methods',
      'user',
      'audit_ids',
      'expires_at',
      'issued_at',
      'project',
      'is_domain',
      'roles',
      'catalog',
      'application_credential',
    ]);
    expect(token.methods).toEqual(['application_credential']);
    expect(token.user.id).toBe(users.demo.id);
    expect(token.roles).toEqual([roles.reader, roles.member]);
    expect(token.application_credential).toEqual({
      id: '42b2a4ca823f4acaa6f4d9e4dbf93dc5',
      name: 'demo-appcred',
      restricted: true,
    });

    const byName = {
      auth: {
        identity: {
          methods: ['application_credential'],
          application_credential: {
            name: 'demo-appcred',
            user: { name: 'demo', domain: { name: 'Default' } },
            secret: 's3cret',
          },
        },
      },
    };
    expect(tokenOf((await login(byName, '?nocatalog')).answer).application_credential?.name).toBe(
      'demo-appcred',
    );

    const wrong = structuredClone(byId);
    wrong.auth.identity.application_credential.secret = 'nope';
    expect((await call('/v3/auth/tokens', { method: 'POST', body: wrong })).status).toBe(401);
  });
});

describe('GET /v3/auth/tokens', () => {
  it('validates a user token with the proxy token, with and without the catalog', async () => {
    const proxy = (await login(proxyLogin)).id;
    const demo = await login(demoLogin, '?nocatalog');

    const full = await validate(demo.id, proxy);
    expect(full.status).toBe(200);
    expect(full.headers.get('x-subject-token')).toBe(demo.id);
    expect(full.headers.get('vary')).toBe('X-Auth-Token');
    expect(full.headers.get('content-type')).toBe('application/json');
    expect(tokenOf(full).catalog?.map((s) => s.type)).toEqual(['identity', 'echo']);

    const bare = await validate(demo.id, proxy, '?nocatalog');
    expect(bare.status).toBe(200);
    expect(tokenOf(bare).catalog).toBeUndefined();
    // Validation shows the very token that was issued.
    expect(bare.text).toBe(demo.answer.text);
    expect(emu.count('validate')).toBe(2);
  });

  it('omits the catalog of unscoped tokens', async () => {
    const unscoped = emu.issueToken({ user: users.demo, scope: 'unscoped' });
    const token = tokenOf(await validate(unscoped, proxyToken()));
    expect(token.catalog).toBeUndefined();
    expect(token.roles).toBeUndefined();
  });

  it('answers 404 for garbage and for a missing subject token', async () => {
    const proxy = proxyToken();
    const garbage = await validate('gAAAAABnotavalidtoken', proxy);
    expect(garbage.status).toBe(404);
    expect(garbage.text).toBe(
      '{"error":{"code":404,"message":"Could not recognize Fernet token","title":"Not Found"}}\n',
    );
    const missing = await validate(undefined, proxy);
    expect(missing.status).toBe(404);
    expect(missing.text).toBe(
      '{"error":{"code":404,"message":"No token in the request","title":"Not Found"}}\n',
    );
  });

  it('answers 404 for a revoked token, even with allow_expired', async () => {
    const proxy = proxyToken();
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    expect((await validate(demo, proxy)).status).toBe(200);
    emu.revoke(demo);
    const failed = '{"error":{"code":404,"message":"Failed to validate token","title":"Not Found"}}\n';
    const revoked = await validate(demo, proxy);
    expect(revoked.status).toBe(404);
    expect(revoked.text).toBe(failed);
    expect((await validate(demo, proxy, '?allow_expired=1')).text).toBe(failed);
    expect(() => emu.revoke('gAAAAABunknown')).toThrow();
  });

  it('answers 404 for an expired token unless allow_expired is set (within 48 h)', async () => {
    const proxy = proxyToken();
    const expired = emu.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      issuedAt: new Date(Date.now() - 7200_000),
      expiresAt: new Date(Date.now() - 60_000),
    });
    expect((await validate(expired, proxy)).status).toBe(404);
    for (const flag of ['1', 'true']) {
      const allowed = await validate(expired, proxy, `?nocatalog&allow_expired=${flag}`);
      expect(allowed.status).toBe(200);
      expect(Date.parse(tokenOf(allowed).expires_at)).toBeLessThan(Date.now());
    }
    expect((await validate(expired, proxy, '?allow_expired=0')).status).toBe(404);

    const ancient = emu.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      expiresAt: new Date(Date.now() - 49 * 3600_000),
    });
    expect((await validate(ancient, proxy, '?allow_expired=1')).status).toBe(404);
  });

  it('answers 401 when the caller token is bad, expired or revoked', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const expiredProxy = emu.issueToken({
      user: users.proxy,
      scope: { project: projects.service },
      roles: [roles.service],
      expiresAt: new Date(Date.now() - 1000),
    });
    const revokedProxy = proxyToken();
    emu.revoke(revokedProxy);
    for (const caller of ['garbage', expiredProxy, revokedProxy]) {
      const answer = await validate(demo, caller);
      expect(answer.status).toBe(401);
      expect(answer.text).toBe(UNAUTHORIZED_BODY);
      expect(answer.headers.get('www-authenticate')).toBe(`Keystone uri="${emu.url}/v3"`);
    }
    const anonymous = await call('/v3/auth/tokens', { headers: { 'X-Subject-Token': demo } });
    expect(anonymous.status).toBe(401);
  });

  it('answers 403 to a member-only caller but lets a user validate its own token', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const member = emu.issueToken({
      user: users.d2user,
      scope: { project: projects.d2project },
      roles: [roles.member, roles.reader],
    });
    const denied = await validate(demo, member);
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.text)).toEqual({
      error: {
        code: 403,
        message: 'You are not authorized to perform the requested action: identity:validate_token.',
        title: 'Forbidden',
      },
    });
    // Roles only count when the caller token is scoped.
    const unscopedProxy = emu.issueToken({ user: users.proxy, scope: 'unscoped' });
    expect((await validate(demo, unscopedProxy)).status).toBe(403);
    expect((await validate(demo, demo)).status).toBe(200);
  });

  it('answers HEAD with 403 for a service-only caller and 200 without a body for an admin', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const head = (caller: string) =>
      call('/v3/auth/tokens', {
        method: 'HEAD',
        headers: { 'X-Auth-Token': caller, 'X-Subject-Token': demo },
      });
    const byService = await head(proxyToken());
    expect(byService.status).toBe(403);
    expect(byService.text).toBe('');
    const admin = emu.issueToken({
      user: users.admin,
      scope: { project: projects.admin },
      roles: [roles.member, roles.admin, roles.reader],
    });
    const byAdmin = await head(admin);
    expect(byAdmin.status).toBe(200);
    expect(byAdmin.text).toBe('');
    expect(Number(byAdmin.headers.get('content-length'))).toBeGreaterThan(100);
    expect(byAdmin.headers.get('x-subject-token')).toBe(demo);
    expect(emu.count('validate')).toBe(2);
  });

  it('requires OpenStack-Identity-Access-Rules for app-cred tokens with access rules', async () => {
    emu.addAppCred({
      id: '5f61d99e19eb40c9ae259be3824959c4',
      name: 'demo-appcred-rules',
      secret: 'rules-secret',
      user: users.demo,
      project: projects.demo,
      roles: [roles.reader, roles.member],
      accessRules: [{ service: 'echo', method: 'GET', path: '/allowed/**' }],
    });
    const { id } = await login({
      auth: {
        identity: {
          methods: ['application_credential'],
          application_credential: { id: '5f61d99e19eb40c9ae259be3824959c4', secret: 'rules-secret' },
        },
      },
    });
    const proxy = proxyToken();
    const without = await validate(id, proxy);
    expect(without.status).toBe(404);
    expect(JSON.parse(without.text)).toMatchObject({ error: { message: 'Failed to validate token' } });

    const withHeader = await validate(id, proxy, '', { 'OpenStack-Identity-Access-Rules': '1' });
    expect(withHeader.status).toBe(200);
    const cred = tokenOf(withHeader).application_credential;
    expect(cred?.access_rules).toHaveLength(1);
    expect(Object.keys(cred?.access_rules?.[0] ?? {})).toEqual(['id', 'service', 'path', 'method']);
    expect(cred?.access_rules?.[0]).toMatchObject({ service: 'echo', path: '/allowed/**', method: 'GET' });
    expect(cred?.access_rules?.[0]?.id).toMatch(/^[0-9a-f]{32}$/);

    // A token without access rules needs no header.
    const plain = emu.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      appCred: { id: 'plain-cred', name: 'plain' },
    });
    expect((await validate(plain, proxy)).status).toBe(200);
  });

  it('skips the access-rules header requirement when accessRulesRequireHeader is false', async () => {
    await emu.close();
    emu = await startKeystoneEmulator({ accessRulesRequireHeader: false });
    const token = emu.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      appCred: { id: 'cred', name: 'cred', accessRules: [{ service: 'echo', method: 'GET', path: '/x' }] },
    });
    expect((await validate(token, proxyToken())).status).toBe(200);
  });

  it("lets serviceRoles decide who may validate others' tokens", async () => {
    await emu.close();
    emu = await startKeystoneEmulator({ serviceRoles: ['validator'] });
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    expect((await validate(demo, proxyToken())).status).toBe(403);
    const validator = emu.issueToken({
      user: users.proxy,
      scope: { project: projects.service },
      roles: [{ id: 'f'.repeat(32), name: 'validator' }],
    });
    expect((await validate(demo, validator)).status).toBe(200);
  });

  it('invalidates tokens of a user disabled after issue', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    emu.addUser({ ...users.demo, enabled: false }, [{ project: projects.demo, roles: [roles.member] }]);
    expect((await validate(demo, proxyToken())).status).toBe(404);
  });
});

describe('issueToken', () => {
  it('renders trust, admin-project and bind data and app-cred defaults', async () => {
    const token = emu.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      trust: { id: 'trust-1', trustorId: users.admin.id, trusteeId: users.demo.id, impersonation: false },
      isAdminProject: false,
      bind: { kerberos: 'demo@EXAMPLE' },
    });
    const body = tokenOf(await validate(token, proxyToken(), '?nocatalog'));
    expect(Object.keys(body).slice(5)).toEqual([
      'OS-TRUST:trust',
      'project',
      'is_domain',
      'roles',
      'is_admin_project',
      'bind',
    ]);
    expect(body['OS-TRUST:trust']).toEqual({
      id: 'trust-1',
      trustor_user: { id: users.admin.id },
      trustee_user: { id: users.demo.id },
      impersonation: false,
    });
    expect(body.roles).toEqual([roles.member]);
    expect(body.is_admin_project).toBe(false);

    const appCred = tokenOf(
      await validate(
        emu.issueToken({
          user: users.demo,
          scope: { project: projects.demo },
          appCred: { id: 'c', name: 'n' },
        }),
        proxyToken(),
      ),
    );
    expect(appCred.methods).toEqual(['application_credential']);
    expect(appCred.application_credential).toEqual({ id: 'c', name: 'n', restricted: true });
  });

  it('uses the given timestamps, truncated to whole seconds', async () => {
    const issuedAt = new Date('2030-01-02T03:04:05.678Z');
    const expiresAt = new Date('2030-01-02T04:04:05.999Z');
    const token = emu.issueToken({
      user: users.demo,
      scope: { domain: domains.default },
      issuedAt,
      expiresAt,
    });
    const body = tokenOf(await validate(token, proxyToken(), '?nocatalog'));
    expect(body.issued_at).toBe('2030-01-02T03:04:05.000000Z');
    expect(body.expires_at).toBe('2030-01-02T04:04:05.000000Z');
    expect(body.domain).toEqual(domains.default);
  });
});

describe('GET /v3/OS-REVOKE/events', () => {
  it('lists an audit_id event per revoked token, for service callers only', async () => {
    const proxy = proxyToken();
    const empty = await call('/v3/OS-REVOKE/events', { headers: { 'X-Auth-Token': proxy } });
    expect(empty.status).toBe(200);
    // Keystone's exact bytes: Python separators and Flask's trailing newline.
    expect(empty.text).toBe(
      `{"events": [], "links": {"next": null, "self": "${emu.url}/v3/OS-REVOKE/events", "previous": null}}\n`,
    );
    expect(JSON.parse(empty.text)).toEqual({
      events: [],
      links: { next: null, self: `${emu.url}/v3/OS-REVOKE/events`, previous: null },
    });

    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const auditId = tokenOf(await validate(demo, proxy)).audit_ids[0];
    emu.revoke(demo);
    const listed = await call('/v3/OS-REVOKE/events', { headers: { 'X-Auth-Token': proxy } });
    type Event = { audit_id: string; issued_before: string; revoked_at: string };
    const { events } = JSON.parse(listed.text) as { events: Event[] };
    expect(events).toHaveLength(1);
    expect(Object.keys(events[0] ?? {})).toEqual(['audit_id', 'issued_before', 'revoked_at']);
    expect(events[0]?.audit_id).toBe(auditId);
    expect(events[0]?.revoked_at).toMatch(TIMESTAMP);

    // `since` is strict at one-second precision.
    const revokedAt = Date.parse(events[0]?.revoked_at ?? '');
    const since = async (ms: number) => {
      const query = `?since=${new Date(ms).toISOString().slice(0, 19)}Z`;
      const answer = await call(`/v3/OS-REVOKE/events${query}`, { headers: { 'X-Auth-Token': proxy } });
      return (JSON.parse(answer.text) as { events: Event[] }).events.length;
    };
    expect(await since(revokedAt)).toBe(0);
    expect(await since(revokedAt - 1000)).toBe(1);

    const member = await call('/v3/OS-REVOKE/events', { headers: { 'X-Auth-Token': demo } });
    expect(member.status).toBe(401);
    const live = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    expect((await call('/v3/OS-REVOKE/events', { headers: { 'X-Auth-Token': live } })).status).toBe(403);
    expect(emu.count('revoke_events')).toBe(6);
  });
});

describe('faults', () => {
  it('answers with an injected status for `times` requests, then recovers', async () => {
    const proxy = proxyToken();
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    emu.setFault('validate', { kind: 'status', status: 503, times: 2 });
    const first = await validate(demo, proxy);
    expect(first.status).toBe(503);
    expect(JSON.parse(first.text)).toMatchObject({ error: { code: 503 } });
    // Other operations are unaffected by a fault set for validate.
    expect((await call('/v3')).status).toBe(200);
    expect((await validate(demo, proxy)).status).toBe(503);
    expect((await validate(demo, proxy)).status).toBe(200);
    expect(emu.count('validate')).toBe(3);
  });

  it('sends custom status bodies and headers; an operation fault wins over an `all` fault', async () => {
    emu.setFault('all', { kind: 'status', status: 500 });
    emu.setFault('discovery', {
      kind: 'status',
      status: 502,
      body: '<html>Bad Gateway</html>',
      headers: { 'Content-Type': 'text/html' },
    });
    const discovery = await call('/v3');
    expect(discovery.status).toBe(502);
    expect(discovery.text).toBe('<html>Bad Gateway</html>');
    expect(discovery.headers.get('content-type')).toBe('text/html');
    expect((await call('/v3/auth/tokens', { method: 'POST', body: proxyLogin })).status).toBe(500);
    emu.setFault('discovery', undefined);
    expect((await call('/v3')).status).toBe(500);
    emu.setFault('all', undefined);
    expect((await call('/v3')).status).toBe(200);
  });

  it('delays answers', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    emu.setFault('validate', { kind: 'delay', ms: 500, times: 1 });
    let started = performance.now();
    expect((await validate(demo, proxyToken())).status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(480);
    started = performance.now();
    expect((await validate(demo, proxyToken())).status).toBe(200);
    expect(performance.now() - started).toBeLessThan(400);
  });

  it('resets the connection without answering', async () => {
    emu.setFault('auth', { kind: 'reset', times: 1 });
    const error = await call('/v3/auth/tokens', { method: 'POST', body: proxyLogin }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(TypeError);
    // A TCP RST (what a crashed or firewalled peer sends), not an orderly close (UND_ERR_SOCKET).
    expect(errorCode(error)).toBe('ECONNRESET');
    expect(emu.count('auth')).toBe(1);
    expect((await call('/v3/auth/tokens', { method: 'POST', body: proxyLogin })).status).toBe(201);
  });

  it('black-holes requests until the client gives up', async () => {
    emu.setFault('validate', { kind: 'blackhole' });
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const started = performance.now();
    const error = await call('/v3/auth/tokens', {
      headers: { 'X-Auth-Token': proxyToken(), 'X-Subject-Token': demo },
      signal: AbortSignal.timeout(200),
    }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((error as Error).name).toBe('TimeoutError');
    expect(performance.now() - started).toBeGreaterThanOrEqual(180);
    expect(emu.count('validate')).toBe(1);
    // Only the faulted operation is black-holed.
    expect((await call('/v3')).status).toBe(200);
  });

  it('destroys black-holed connections on close() so nothing hangs', async () => {
    emu.setFault('all', { kind: 'blackhole' });
    const pending = rawRequest(`${emu.url}/v3`, { agent: false }).then(
      () => 'answered',
      (err: unknown) => errorCode(err),
    );
    await waitFor(() => emu.count('discovery') === 1);
    const started = performance.now();
    await emu.close();
    expect(performance.now() - started).toBeLessThan(1000);
    expect(await pending).toBe('ECONNRESET');
  });

  it('refuses connections after stop() and works again after start(), keeping its state', async () => {
    const proxy = proxyToken();
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const { port, url } = emu;
    await emu.stop();
    const refused = await rawRequest(`${url}/v3`, { agent: false }).then(
      () => undefined,
      (err: unknown) => errorCode(err),
    );
    expect(refused).toBe('ECONNREFUSED');
    await emu.start();
    expect(emu.port).toBe(port);
    expect((await validate(demo, proxy)).status).toBe(200);
  });

  it('reset() clears requests and faults but keeps tokens', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    emu.setFault('validate', { kind: 'status', status: 500 });
    expect((await validate(demo, proxyToken())).status).toBe(500);
    const requests = emu.requests;
    emu.reset();
    expect(emu.requests).toBe(requests);
    expect(emu.requests).toHaveLength(0);
    expect((await validate(demo, proxyToken())).status).toBe(200);
    expect(emu.count('validate')).toBe(1);
  });
});

describe('request recording and connections', () => {
  it('records every request with its operation, method, path, query, headers and body', async () => {
    await call('/v3');
    await call('/');
    await call('/v3/auth/tokens?nocatalog', { method: 'POST', body: proxyLogin });
    await validate('gAAAAABx', proxyToken(), '?nocatalog&allow_expired=1');
    await call('/v3/auth/tokens', { method: 'HEAD' });
    await call('/v3/OS-REVOKE/events?since=2026-01-01T00:00:00Z');
    const unknown = await call('/v3/projects');
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.text)).toEqual({
      error: { code: 404, message: 'The resource could not be found.', title: 'Not Found' },
    });
    await call('/v3/auth/tokens', { method: 'DELETE' });

    expect(emu.requests.map((r) => [r.operation, r.method, r.path])).toEqual([
      ['discovery', 'GET', '/v3'],
      ['discovery', 'GET', '/'],
      ['auth', 'POST', '/v3/auth/tokens'],
      ['validate', 'GET', '/v3/auth/tokens'],
      ['validate', 'HEAD', '/v3/auth/tokens'],
      ['revoke_events', 'GET', '/v3/OS-REVOKE/events'],
      ['other', 'GET', '/v3/projects'],
      ['other', 'DELETE', '/v3/auth/tokens'],
    ]);
    const [, , auth, check] = emu.requests;
    expect(auth?.query.has('nocatalog')).toBe(true);
    expect(JSON.parse(auth?.body ?? '')).toEqual(proxyLogin);
    expect(check?.query.get('allow_expired')).toBe('1');
    expect(check?.headers['x-subject-token']).toBe('gAAAAABx');
    expect(check?.at).toBeLessThanOrEqual(Date.now());
    expect(emu.count('discovery')).toBe(2);
    expect(emu.count('auth')).toBe(1);
    expect(emu.count('validate')).toBe(2);
    expect(emu.count('revoke_events')).toBe(1);
    expect(emu.count('other')).toBe(2);
  });

  it('keeps connections alive between requests', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await rawRequest(`${emu.url}/v3`, { agent });
      const second = await rawRequest(`${emu.url}/v3`, { agent });
      expect([first.status, second.status]).toEqual([200, 200]);
      expect(second.reusedSocket).toBe(true);
    } finally {
      agent.destroy();
    }
  });

  it('revokes a token through DELETE /v3/auth/tokens for its owner only', async () => {
    const demo = emu.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const proxy = proxyToken();
    const byProxy = await call('/v3/auth/tokens', {
      method: 'DELETE',
      headers: { 'X-Auth-Token': proxy, 'X-Subject-Token': demo },
    });
    expect(byProxy.status).toBe(403);
    const bySelf = await call('/v3/auth/tokens', {
      method: 'DELETE',
      headers: { 'X-Auth-Token': demo, 'X-Subject-Token': demo },
    });
    expect(bySelf.status).toBe(204);
    expect((await validate(demo, proxy)).status).toBe(404);
  });

  it('publishes catalog options: identity URL, interfaces, region and extra services', async () => {
    await emu.close();
    emu = await startKeystoneEmulator({
      identityUrl: 'https://keystone.example/identity/v3',
      identityInterfaces: ['public'],
      region: 'RegionTwo',
      catalog: [
        { type: 'object-store', name: 'swift', endpoints: [{ interface: 'public', url: 'http://swift' }] },
      ],
    });
    const token = tokenOf((await login(demoLogin)).answer);
    expect(token.catalog?.map((s) => s.type)).toEqual(['identity', 'object-store']);
    expect(token.catalog?.[0]?.endpoints).toEqual([
      expect.objectContaining({
        interface: 'public',
        url: 'https://keystone.example/identity/v3',
        region_id: 'RegionTwo',
      }),
    ]);
    expect(token.catalog?.[1]?.endpoints[0]?.region).toBe('RegionTwo');
  });
});
