/**
 * The engine against the Keystone emulator over real HTTP on loopback: discovery, the service token, the
 * validation request, outcome mapping, fault injection, coalescing, and tokens kept out of logs.
 */
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AuthOptionsInput } from '../../src/config/auth-options.js';
import { type Authenticator, createAuthenticator } from '../../src/http/authenticate.js';
import type { Logger } from '../../src/observability/observer.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';

const { users, projects, roles } = fixtures;

class MemoryLogger implements Logger {
  readonly lines: { level: string; obj: object; msg: string }[] = [];
  debug(obj: object, msg: string) {
    this.lines.push({ level: 'debug', obj, msg });
  }
  info(obj: object, msg: string) {
    this.lines.push({ level: 'info', obj, msg });
  }
  warn(obj: object, msg: string) {
    this.lines.push({ level: 'warn', obj, msg });
  }
  error(obj: object, msg: string) {
    this.lines.push({ level: 'error', obj, msg });
  }
  text(): string {
    return JSON.stringify(this.lines, (_k, v) =>
      v instanceof Error ? { message: v.message, stack: v.stack } : v,
    );
  }
}

let keystone: KeystoneEmulator;
const open: Authenticator[] = [];

function engine(extra: Partial<AuthOptionsInput> = {}, logger = new MemoryLogger()): Authenticator {
  const auth = createAuthenticator(
    {
      www_authenticate_uri: 'http://keystone.example:5000',
      auth_url: keystone.url,
      username: users.proxy.name,
      password: users.proxy.password,
      user_domain_name: 'Default',
      project_name: projects.service.name,
      project_domain_name: 'Default',
      service_type: 'echo',
      http_request_timeout_seconds: 2,
      ...extra,
    },
    { logger },
  );
  open.push(auth);
  return auth;
}

const userToken = (extra: Partial<Parameters<KeystoneEmulator['issueToken']>[0]> = {}) =>
  keystone.issueToken({
    user: users.demo,
    scope: { project: projects.demo },
    roles: [roles.member, roles.reader],
    ...extra,
  });

const facts = (headers: Record<string, string>, method = 'GET', path = '/v1/things') => ({
  method,
  path,
  headers,
});

beforeAll(async () => {
  keystone = await startKeystoneEmulator();
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((a) => a.close()));
  keystone.reset();
});
afterAll(async () => {
  await keystone.close();
});

describe('talking to Keystone', () => {
  it('discovers v3 at auth_url, authenticates once, validates at the catalog identity endpoint', async () => {
    const auth = engine();
    const token = userToken();
    const outcome = await auth.authenticate(facts({ 'x-auth-token': token }));
    expect(outcome.action).toBe('forward');
    expect(keystone.count('discovery')).toBe(1);
    expect(keystone.count('auth')).toBe(1);
    const authCall = keystone.requests.find((r) => r.operation === 'auth');
    expect(JSON.parse(authCall?.body ?? '{}')).toEqual({
      auth: {
        identity: {
          methods: ['password'],
          password: { user: { name: 'proxy', domain: { name: 'Default' }, password: 'proxy-secret' } },
        },
        scope: { project: { name: 'service', domain: { name: 'Default' } } },
      },
    });
    const validation = keystone.requests.find((r) => r.operation === 'validate');
    expect(validation?.path).toBe('/v3/auth/tokens');
    expect(validation?.headers['x-subject-token']).toBe(token);
    expect(validation?.headers['openstack-identity-access-rules']).toBe('1');
    expect(validation?.headers['user-agent']).toMatch(/^keystone-auth-proxy\/\d+\.\d+\.\d+/);
    expect(validation?.query.has('nocatalog')).toBe(false);
    expect(validation?.query.has('allow_expired')).toBe(false);
  });

  it('auth_url ending in /v3 skips discovery; include_service_catalog=false sends ?nocatalog', async () => {
    const auth = engine({ auth_url: `${keystone.url}/v3`, include_service_catalog: false });
    await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(keystone.count('discovery')).toBe(0);
    const validation = keystone.requests.find((r) => r.operation === 'validate');
    expect(validation?.query.has('nocatalog')).toBe(true);
  });

  it('reuses the service token across validations', async () => {
    const auth = engine();
    for (let i = 0; i < 5; i++) await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(keystone.count('auth')).toBe(1);
    expect(keystone.count('validate')).toBe(5);
    const serviceTokens = new Set(
      keystone.requests.filter((r) => r.operation === 'validate').map((r) => r.headers['x-auth-token']),
    );
    expect(serviceTokens.size).toBe(1);
  });

  it('obtains the service token once for concurrent first requests (single flight)', async () => {
    const auth = engine();
    keystone.setFault('auth', { kind: 'delay', ms: 100 });
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, () => auth.authenticate(facts({ 'x-auth-token': userToken() }))),
    );
    expect(outcomes.every((o) => o.action === 'forward')).toBe(true);
    expect(keystone.count('auth')).toBe(1);
  });

  it('authenticates with an application credential', async () => {
    keystone.addAppCred({
      id: 'ac-proxy',
      name: 'proxy-ac',
      secret: 'ac-secret',
      user: users.proxy,
      project: projects.service,
      roles: [roles.service],
    });
    const auth = engine({
      auth_type: 'v3applicationcredential',
      application_credential_id: 'ac-proxy',
      application_credential_secret: 'ac-secret',
      username: undefined,
      password: undefined,
      user_domain_name: undefined,
      project_name: undefined,
      project_domain_name: undefined,
    });
    expect((await auth.authenticate(facts({ 'x-auth-token': userToken() }))).action).toBe('forward');
  });

  it('warmUp obtains the service token before the first request', async () => {
    const auth = engine();
    await auth.warmUp();
    expect(keystone.count('auth')).toBe(1);
    await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(keystone.count('auth')).toBe(1);
  });

  it('ready() is true while Keystone answers, false when it is down, true again after', async () => {
    const auth = engine();
    expect(await auth.ready()).toBe(true);
    await keystone.stop();
    try {
      await auth.authenticate(facts({ 'x-auth-token': userToken() }));
      expect(await auth.ready()).toBe(false);
    } finally {
      await keystone.start();
    }
    expect(await auth.ready()).toBe(true);
  });
});

describe('outcomes', () => {
  it('Keystone 404 → 401', async () => {
    const outcome = await engine().authenticate(facts({ 'x-auth-token': 'gAAAAABgarbage' }));
    expect(outcome).toMatchObject({ action: 'respond', response: { status: 401 }, reason: 'not_found' });
  });

  it('Keystone 401 on validation → re-authenticate once and retry', async () => {
    const auth = engine();
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'status', status: 401, times: 1 });
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(outcome.action).toBe('forward');
    expect(keystone.count('auth')).toBe(2);
    expect(keystone.count('validate')).toBe(2);
  });

  it('Keystone 401 twice → 503, never a loop', async () => {
    const auth = engine();
    keystone.setFault('validate', { kind: 'status', status: 401 });
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(outcome).toMatchObject({ action: 'respond', response: { status: 503 } });
    expect(keystone.count('validate')).toBe(2);
  });

  it('the proxy own credentials rejected → 503', async () => {
    const auth = engine({ password: 'wrong' });
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(outcome).toMatchObject({
      action: 'respond',
      response: { status: 503 },
      error: { reason: 'service_auth_rejected' },
    });
  });

  it.each([500, 502, 503, 403, 408])('Keystone %i → 503, and the error is not cached', async (status) => {
    const auth = engine();
    const token = userToken();
    keystone.setFault('validate', { kind: 'status', status, times: 1 });
    expect(await auth.authenticate(facts({ 'x-auth-token': token }))).toMatchObject({
      response: { status: 503 },
    });
    expect((await auth.authenticate(facts({ 'x-auth-token': token }))).action).toBe('forward');
  });

  it('a service user without the right to validate (403) → 503', async () => {
    keystone.addUser({ ...users.d2user, password: 'd2-secret' }, [
      { project: projects.d2project, roles: [roles.member] },
    ]);
    const auth = engine({
      username: users.d2user.name,
      password: 'd2-secret',
      user_domain_name: undefined,
      user_domain_id: users.d2user.domainId,
      project_name: projects.d2project.name,
      project_domain_name: undefined,
      project_domain_id: projects.d2project.domainId,
    });
    expect(await auth.authenticate(facts({ 'x-auth-token': userToken() }))).toMatchObject({
      response: { status: 503 },
    });
  });

  it('slow Keystone → 503 within the time budget', async () => {
    const auth = engine({ http_request_timeout_seconds: 0.5 });
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'delay', ms: 3_000 });
    const started = performance.now();
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    const elapsed = performance.now() - started;
    expect(outcome).toMatchObject({ response: { status: 503 }, error: { reason: 'timeout' } });
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(2_500);
  });

  it('black-holed Keystone → 503 within the time budget', async () => {
    const auth = engine({ http_request_timeout_seconds: 0.5 });
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'blackhole' });
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(outcome).toMatchObject({ response: { status: 503 }, error: { reason: 'timeout' } });
  });

  it('a connection reset is retried (http_request_max_retries)', async () => {
    const auth = engine();
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'reset', times: 2 });
    expect((await auth.authenticate(facts({ 'x-auth-token': userToken() }))).action).toBe('forward');
    expect(keystone.count('validate')).toBe(3);
  });

  it('resets beyond http_request_max_retries → 503', async () => {
    const auth = engine({ http_request_max_retries: 1 });
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'reset' });
    expect(await auth.authenticate(facts({ 'x-auth-token': userToken() }))).toMatchObject({
      response: { status: 503 },
      error: { reason: 'connect' },
    });
    expect(keystone.count('validate')).toBe(2);
  });

  it('Keystone refusing connections → 503 fast; cached tokens keep working', async () => {
    const auth = engine();
    const cached = userToken();
    const uncached = userToken();
    expect((await auth.authenticate(facts({ 'x-auth-token': cached }))).action).toBe('forward');
    await keystone.stop();
    try {
      const started = performance.now();
      expect(await auth.authenticate(facts({ 'x-auth-token': uncached }))).toMatchObject({
        response: { status: 503 },
        error: { reason: 'connect' },
      });
      expect(performance.now() - started).toBeLessThan(1_500);
      expect((await auth.authenticate(facts({ 'x-auth-token': cached }))).action).toBe('forward');
    } finally {
      await keystone.start();
    }
  });

  it('delay_auth_decision turns Keystone unavailability into Invalid', async () => {
    const auth = engine({ delay_auth_decision: true });
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'status', status: 500 });
    const outcome = await auth.authenticate(facts({ 'x-auth-token': userToken() }));
    expect(outcome).toMatchObject({
      action: 'forward',
      context: { userStatus: 'Invalid', reason: 'keystone_unavailable' },
    });
  });
});

describe('cache and coalescing', () => {
  it('50 concurrent requests with one uncached token cause exactly 1 validation', async () => {
    const auth = engine();
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'delay', ms: 100 });
    const token = userToken();
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, () => auth.authenticate(facts({ 'x-auth-token': token }))),
    );
    expect(outcomes.every((o) => o.action === 'forward')).toBe(true);
    expect(keystone.count('validate')).toBe(1);
  });

  it('50 concurrent requests with one invalid token cause 1 validation, and nothing is cached', async () => {
    const auth = engine();
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'delay', ms: 100 });
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, () => auth.authenticate(facts({ 'x-auth-token': 'gAAAAABnope' }))),
    );
    expect(outcomes.every((o) => o.action === 'respond')).toBe(true);
    expect(keystone.count('validate')).toBe(1);
    await auth.authenticate(facts({ 'x-auth-token': 'gAAAAABnope' }));
    expect(keystone.count('validate')).toBe(2);
  });

  it('a cached token is served without Keystone; a revoked one stays accepted until its entry ends', async () => {
    const auth = engine();
    const token = userToken();
    await auth.authenticate(facts({ 'x-auth-token': token }));
    keystone.revoke(token);
    expect((await auth.authenticate(facts({ 'x-auth-token': token }))).action).toBe('forward');
    expect(keystone.count('validate')).toBe(1);
  });

  it('token_cache_time 0: every request validates, so revocation is seen at once', async () => {
    const auth = engine({ token_cache_time: 0 });
    const token = userToken();
    expect((await auth.authenticate(facts({ 'x-auth-token': token }))).action).toBe('forward');
    keystone.revoke(token);
    expect((await auth.authenticate(facts({ 'x-auth-token': token }))).action).toBe('respond');
  });
});

describe('service tokens and allow_expired', () => {
  const serviceToken = () =>
    keystone.issueToken({ user: users.proxy, scope: { project: projects.service }, roles: [roles.service] });

  it('an expired user token passes with a service token holding the role (allow_expired=1)', async () => {
    const auth = engine();
    const expired = userToken({
      expiresAt: new Date(Date.now() - 60_000),
      issuedAt: new Date(Date.now() - 3_660_000),
    });
    expect((await auth.authenticate(facts({ 'x-auth-token': expired }))).action).toBe('respond');
    const outcome = await auth.authenticate(
      facts({ 'x-auth-token': expired, 'x-service-token': serviceToken() }),
    );
    expect(outcome).toMatchObject({
      action: 'forward',
      context: { userStatus: 'Confirmed', serviceStatus: 'Confirmed' },
    });
    const withExpired = keystone.requests.filter(
      (r) => r.operation === 'validate' && r.query.get('allow_expired') === '1',
    );
    expect(withExpired).toHaveLength(1);
    expect(withExpired[0]?.headers['x-subject-token']).toBe(expired);
  });

  it('an allow_expired result is never served to a later request without a service token (bug 1987355)', async () => {
    const auth = engine();
    const expired = userToken({
      expiresAt: new Date(Date.now() - 60_000),
      issuedAt: new Date(Date.now() - 3_660_000),
    });
    expect(
      (await auth.authenticate(facts({ 'x-auth-token': expired, 'x-service-token': serviceToken() }))).action,
    ).toBe('forward');
    expect((await auth.authenticate(facts({ 'x-auth-token': expired }))).action).toBe('respond');
  });

  it('a failed normal validation does not poison a later service-token request', async () => {
    const auth = engine();
    const expired = userToken({
      expiresAt: new Date(Date.now() - 60_000),
      issuedAt: new Date(Date.now() - 3_660_000),
    });
    expect((await auth.authenticate(facts({ 'x-auth-token': expired }))).action).toBe('respond');
    expect(
      (await auth.authenticate(facts({ 'x-auth-token': expired, 'x-service-token': serviceToken() }))).action,
    ).toBe('forward');
  });

  it('access rules with include_service_catalog=false fetch the catalog for those tokens only', async () => {
    const auth = engine({ include_service_catalog: false });
    const ruled = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      appCred: {
        id: 'ac1',
        name: 'ac1',
        accessRules: [{ service: 'echo', method: 'GET', path: '/allowed/**' }],
      },
    });
    expect((await auth.authenticate(facts({ 'x-auth-token': ruled }, 'GET', '/allowed/x'))).action).toBe(
      'forward',
    );
    expect((await auth.authenticate(facts({ 'x-auth-token': ruled }, 'GET', '/denied'))).action).toBe(
      'respond',
    );
    const validations = keystone.requests.filter((r) => r.operation === 'validate');
    expect(validations.map((r) => r.query.has('nocatalog'))).toEqual([true, false]);
  });
});

describe('no raw token leaves the engine', () => {
  it('tokens appear in no log line or error message, whatever happened', async () => {
    const logger = new MemoryLogger();
    const auth = engine({ http_request_timeout_seconds: 0.5 }, logger);
    const tokens = [userToken(), userToken(), userToken(), 'gAAAAABgarbage-token-value'];
    const service = keystone.issueToken({
      user: users.proxy,
      scope: { project: projects.service },
      roles: [roles.service],
    });
    const outcomes = [];
    outcomes.push(
      await auth.authenticate(facts({ 'x-auth-token': tokens[0] as string, 'x-service-token': service })),
    );
    outcomes.push(await auth.authenticate(facts({ 'x-auth-token': tokens[3] as string })));
    keystone.setFault('validate', { kind: 'status', status: 500, times: 1 });
    outcomes.push(await auth.authenticate(facts({ 'x-auth-token': tokens[1] as string })));
    keystone.setFault('validate', { kind: 'delay', ms: 2_000, times: 1 });
    outcomes.push(await auth.authenticate(facts({ 'x-auth-token': tokens[2] as string })));
    await keystone.stop();
    outcomes.push(await auth.authenticate(facts({ 'x-auth-token': `${tokens[2]}x` })));
    await keystone.start();

    expect(logger.lines.length).toBeGreaterThan(2);
    const everything = `${logger.text()} ${JSON.stringify(outcomes, (_k, v) => (v instanceof Error ? `${v.message} ${String(v.cause)}` : v))}`;
    for (const secret of [...tokens, service, users.proxy.password as string]) {
      expect(everything).not.toContain(secret);
    }
    for (const key of ['n:', 'e:']) expect(everything).not.toContain(`${key}gAAAA`);
  });
});
