import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import type { TokenCheck } from '../../../src/auth/decision.js';
import { bindAllows, type DecisionPolicy, decide, decideCachedUser } from '../../../src/auth/decision.js';
import type { BindMode } from '../../../src/config/auth-options.js';
import { KeystoneUnavailableError } from '../../../src/errors.js';
import { parseTokenBody, type TokenInfo } from '../../../src/keystone/token-info.js';
import { type FixtureToken, fixtureTokenBody } from '../../../src/testing.js';

const info = (input: FixtureToken & { bind?: Record<string, string> } = {}): TokenInfo => {
  const body = fixtureTokenBody(input);
  if (input.bind) body.token.bind = input.bind;
  return parseTokenBody(body, { renderCatalog: false });
};

const USER = info({ userId: 'user', roles: ['member'] });
const SERVICE = info({ userId: 'nova', roles: ['service'] });
const NOT_SERVICE = info({ userId: 'other', roles: ['member'] });
const RULED = info({
  userId: 'appcred-user',
  appCredId: 'ac',
  accessRules: [{ service: 'compute', method: 'GET', path: '/servers' }],
  catalog: [{ type: 'compute', name: 'nova', endpoints: [] }],
});
const KERBEROS = info({ userId: 'krb', bind: { kerberos: 'alice@REALM' } });

const valid = (i: TokenInfo): TokenCheck => ({ status: 'valid', info: i, source: 'keystone' });
const invalid: TokenCheck = { status: 'invalid', reason: 'not_found' };
const down: TokenCheck = { status: 'unavailable', error: new KeystoneUnavailableError('connect', 'down') };

const policy: DecisionPolicy = {
  filter: 'auth_token',
  delayAuthDecision: false,
  serviceTokenRoles: ['service'],
  serviceTokenRolesRequired: true,
  serviceType: 'compute',
  enforceTokenBind: 'permissive',
};

function checker(table: Record<string, TokenCheck | ((allowExpired: boolean) => TokenCheck)>) {
  return vi.fn(async (token: string, allowExpired: boolean): Promise<TokenCheck> => {
    const entry = table[token] ?? invalid;
    return typeof entry === 'function' ? entry(allowExpired) : entry;
  });
}

const request = (headers: Record<string, string>, method = 'GET', path = '/servers') => ({
  method,
  path,
  headers,
});

describe('decide: default mode', () => {
  it('no token → reject (missing), no Keystone call', async () => {
    const check = checker({});
    expect(await decide(request({}), policy, check)).toEqual({ action: 'reject', reason: 'missing' });
    expect(check).not.toHaveBeenCalled();
  });

  it('blank token → reject without asking Keystone about it as a real token', async () => {
    const check = checker({});
    const d = await decide(request({ 'x-auth-token': '   ' }), policy, check);
    expect(d.action).toBe('reject');
  });

  it('valid user token → forward, confirmed, no service status', async () => {
    const d = await decide(request({ 'x-auth-token': 'u' }), policy, checker({ u: valid(USER) }));
    expect(d).toEqual({ action: 'forward', user: { status: 'Confirmed', info: USER }, service: undefined });
  });

  it('X-Storage-Token is used when X-Auth-Token is absent; whitespace is trimmed', async () => {
    const check = checker({ u: valid(USER) });
    expect((await decide(request({ 'x-storage-token': ' u ' }), policy, check)).action).toBe('forward');
    expect(check).toHaveBeenCalledWith('u', false);
  });

  it('invalid user token → reject (not_found)', async () => {
    expect(await decide(request({ 'x-auth-token': 'bad' }), policy, checker({}))).toEqual({
      action: 'reject',
      reason: 'not_found',
    });
  });

  it('Keystone unavailable for the user token → unavailable', async () => {
    const d = await decide(request({ 'x-auth-token': 'u' }), policy, checker({ u: down }));
    expect(d.action).toBe('unavailable');
  });

  it('user + service token with the service role → both confirmed, user checked with allow_expired', async () => {
    const check = checker({ u: valid(USER), s: valid(SERVICE) });
    const d = await decide(request({ 'x-auth-token': 'u', 'x-service-token': 's' }), policy, check);
    expect(d).toEqual({
      action: 'forward',
      user: { status: 'Confirmed', info: USER },
      service: { status: 'Confirmed', info: SERVICE },
    });
    expect(check).toHaveBeenNthCalledWith(1, 's', false);
    expect(check).toHaveBeenNthCalledWith(2, 'u', true);
  });

  it('service token without the role, roles required → reject before validating the user token', async () => {
    const check = checker({ u: valid(USER), s: valid(NOT_SERVICE) });
    const d = await decide(request({ 'x-auth-token': 'u', 'x-service-token': 's' }), policy, check);
    expect(d).toEqual({ action: 'reject', reason: 'service_token_invalid' });
    expect(check).toHaveBeenCalledTimes(1);
  });

  it('service token without the role, roles not required → confirmed but no allow_expired, warned', async () => {
    const check = checker({ u: valid(USER), s: valid(NOT_SERVICE) });
    const warn = vi.fn();
    const d = await decide(
      request({ 'x-auth-token': 'u', 'x-service-token': 's' }),
      { ...policy, serviceTokenRolesRequired: false },
      check,
      warn,
    );
    expect(d.action).toBe('forward');
    expect(check).toHaveBeenNthCalledWith(2, 'u', false);
    expect(warn).toHaveBeenCalledOnce();
  });

  it('invalid service token → reject even with a valid user token', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'u', 'x-service-token': 'bad' }),
      policy,
      checker({ u: valid(USER) }),
    );
    expect(d).toEqual({ action: 'reject', reason: 'service_token_invalid' });
  });

  it('service token alone → reject', async () => {
    const d = await decide(request({ 'x-service-token': 's' }), policy, checker({ s: valid(SERVICE) }));
    expect(d).toEqual({ action: 'reject', reason: 'missing' });
  });

  it('Keystone unavailable for the service token → unavailable', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'u', 'x-service-token': 's' }),
      policy,
      checker({ s: down }),
    );
    expect(d.action).toBe('unavailable');
  });

  it('expired user token is accepted only through a service token holding the role', async () => {
    const table = { u: (allowExpired: boolean) => (allowExpired ? valid(USER) : invalid), s: valid(SERVICE) };
    expect((await decide(request({ 'x-auth-token': 'u' }), policy, checker(table))).action).toBe('reject');
    expect(
      (await decide(request({ 'x-auth-token': 'u', 'x-service-token': 's' }), policy, checker(table))).action,
    ).toBe('forward');
  });
});

describe('decide: access rules', () => {
  it('allowed method and path → forward; others → reject access_rule_denied', async () => {
    const check = checker({ r: valid(RULED) });
    expect((await decide(request({ 'x-auth-token': 'r' }, 'GET', '/servers'), policy, check)).action).toBe(
      'forward',
    );
    expect(await decide(request({ 'x-auth-token': 'r' }, 'DELETE', '/servers'), policy, check)).toEqual({
      action: 'reject',
      reason: 'access_rule_denied',
    });
    expect(await decide(request({ 'x-auth-token': 'r' }, 'GET', '/flavors'), policy, check)).toEqual({
      action: 'reject',
      reason: 'access_rule_denied',
    });
  });

  it('without service_type every access-rule token is refused', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'r' }),
      { ...policy, serviceType: undefined },
      checker({ r: valid(RULED) }),
    );
    expect(d).toEqual({ action: 'reject', reason: 'access_rule_denied' });
  });

  it('a service token skips the rules', async () => {
    const check = checker({ r: valid(RULED), s: valid(SERVICE) });
    const d = await decide(
      request({ 'x-auth-token': 'r', 'x-service-token': 's' }, 'DELETE', '/x'),
      policy,
      check,
    );
    expect(d.action).toBe('forward');
  });
});

describe('decide: delay_auth_decision', () => {
  const delay = { ...policy, delayAuthDecision: true };

  it.each([
    ['no token', {}, {}, 'missing'],
    ['bad token', { 'x-auth-token': 'bad' }, {}, 'not_found'],
    ['Keystone down', { 'x-auth-token': 'u' }, { u: down }, 'keystone_unavailable'],
  ] as const)('%s → forward with the user Invalid', async (_name, headers, table, reason) => {
    const d = await decide(request({ ...headers }), delay, checker({ ...table }));
    expect(d).toEqual({ action: 'forward', user: { status: 'Invalid', reason }, service: undefined });
  });

  it('bad user + good service → user Invalid, service Confirmed', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'bad', 'x-service-token': 's' }),
      delay,
      checker({ s: valid(SERVICE) }),
    );
    expect(d).toEqual({
      action: 'forward',
      user: { status: 'Invalid', reason: 'not_found' },
      service: { status: 'Confirmed', info: SERVICE },
    });
  });

  it('good user + bad service → user Confirmed, service Invalid (the app must check)', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'u', 'x-service-token': 'bad' }),
      delay,
      checker({ u: valid(USER) }),
    );
    expect(d).toMatchObject({
      action: 'forward',
      user: { status: 'Confirmed' },
      service: { status: 'Invalid' },
    });
  });

  it('service token Keystone failure → service Invalid, not 503', async () => {
    const d = await decide(
      request({ 'x-auth-token': 'u', 'x-service-token': 's' }),
      delay,
      checker({ u: valid(USER), s: down }),
    );
    expect(d).toMatchObject({
      action: 'forward',
      service: { status: 'Invalid', reason: 'keystone_unavailable' },
    });
  });
});

describe('token bind', () => {
  it.each([
    [undefined, 'disabled', true],
    [undefined, 'permissive', true],
    [undefined, 'strict', true],
    [undefined, 'required', false],
    [undefined, { name: 'kerberos' }, false],
    [{ kerberos: 'a' }, 'disabled', true],
    [{ kerberos: 'a' }, 'permissive', false],
    [{ x509: 'a' }, 'permissive', true],
    [{ x509: 'a' }, 'strict', false],
    [{ x509: 'a' }, 'required', false],
    [{ x509: 'a' }, { name: 'x509' }, false],
    [{ x509: 'a' }, { name: 'other' }, false],
  ] as [Record<string, string> | undefined, BindMode, boolean][])(
    'bind %j mode %j → %s',
    (bind, mode, allowed) => {
      expect(bindAllows(bind, mode)).toBe(allowed);
    },
  );

  it('rejects a kerberos-bound user token, but not when a service token vouches', async () => {
    const check = checker({ k: valid(KERBEROS), s: valid(SERVICE) });
    expect(await decide(request({ 'x-auth-token': 'k' }), policy, check)).toEqual({
      action: 'reject',
      reason: 'bind_rejected',
    });
    expect(
      (await decide(request({ 'x-auth-token': 'k', 'x-service-token': 's' }), policy, check)).action,
    ).toBe('forward');
  });
});

describe('decideCachedUser: the synchronous cached path', () => {
  const infos = [USER, RULED, KERBEROS, SERVICE];
  const modes: BindMode[] = ['disabled', 'permissive', 'strict', 'required', { name: 'kerberos' }];

  it('decides exactly as decide does when the user token is valid, for every policy and request', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...infos),
        fc.boolean(),
        fc.constantFrom(...modes),
        fc.constantFrom('GET', 'POST', 'DELETE'),
        fc.constantFrom('/servers', '/servers/x', '/images', '/', '/servers/../images'),
        fc.constantFrom('compute', 'image', undefined),
        fc.constantFrom<Record<string, string>>(
          { 'x-auth-token': 'tok' },
          { 'x-storage-token': 'tok' },
          { 'x-auth-token': ' tok ' },
          { authorization: 'Bearer tok' },
          { authorization: 'Bearer tok', 'x-auth-token': 'tok' },
        ),
        fc.constantFrom<DecisionPolicy['filter']>('auth_token', 'oauth2_token'),
        async (i, delay, bind, method, path, serviceType, headers, filter) => {
          const p: DecisionPolicy = {
            ...policy,
            filter,
            delayAuthDecision: delay,
            enforceTokenBind: bind,
            serviceType,
          };
          const req = request(headers, method, path);
          const sync = decideCachedUser(req, p, (t) => (t === 'tok' ? i : undefined));
          const full = await decide(req, p, checker({ tok: valid(i) }));
          // Only the filter's own header carries a token; without it the cached path declines.
          const carries =
            filter === 'oauth2_token'
              ? 'authorization' in headers
              : 'x-auth-token' in headers || 'x-storage-token' in headers;
          if (carries) expect(sync).toEqual(full);
          else expect(sync).toBeUndefined();
        },
      ),
      { numRuns: 300 },
    );
  });

  it('declines what it cannot decide without Keystone: a miss, a service token, no or a blank token', () => {
    const hit = () => USER;
    expect(decideCachedUser(request({ 'x-auth-token': 'tok' }), policy, () => undefined)).toBeUndefined();
    expect(
      decideCachedUser(request({ 'x-auth-token': 'tok', 'x-service-token': 's' }), policy, hit),
    ).toBeUndefined();
    expect(decideCachedUser(request({}), policy, hit)).toBeUndefined();
    expect(decideCachedUser(request({ 'x-auth-token': '  ' }), policy, hit)).toBeUndefined();
  });
});

describe('decide: oauth2_token (keystonemiddleware 10.1 OAuth2Protocol)', () => {
  const oauth2: DecisionPolicy = { ...policy, filter: 'oauth2_token' };

  it('reads the token from Authorization: Bearer only', async () => {
    const check = checker({ u: valid(USER) });
    const d = await decide(request({ authorization: 'Bearer u' }), oauth2, check);
    expect(d).toEqual({ action: 'forward', user: { status: 'Confirmed', info: USER }, service: undefined });
    expect(check).toHaveBeenCalledWith('u', false);
  });

  it.each([
    ['X-Auth-Token alone', { 'x-auth-token': 'u' }],
    ['X-Storage-Token alone', { 'x-storage-token': 'u' }],
    ['a lower-case scheme (webob compares it case-sensitively)', { authorization: 'bearer u' }],
    ['another scheme', { authorization: 'Basic dTpw' }],
    ['Bearer with nothing after it', { authorization: 'Bearer   ' }],
    ['the scheme without a space', { authorization: 'Beareru' }],
  ])('%s → reject (missing), no Keystone call', async (_name, headers) => {
    const check = checker({ u: valid(USER) });
    expect(await decide(request(headers), oauth2, check)).toEqual({ action: 'reject', reason: 'missing' });
    expect(check).not.toHaveBeenCalled();
  });

  it('ignores X-Service-Token: one Keystone call, no service verdict', async () => {
    const check = checker({ u: valid(USER), s: valid(SERVICE) });
    const d = await decide(request({ authorization: 'Bearer u', 'x-service-token': 's' }), oauth2, check);
    expect(d).toEqual({ action: 'forward', user: { status: 'Confirmed', info: USER }, service: undefined });
    expect(check).toHaveBeenCalledTimes(1);
  });

  it('enforces access rules', async () => {
    const check = checker({ r: valid(RULED) });
    const allowed = await decide(request({ authorization: 'Bearer r' }, 'GET', '/servers'), oauth2, check);
    const denied = await decide(request({ authorization: 'Bearer r' }, 'DELETE', '/servers'), oauth2, check);
    expect(allowed.action).toBe('forward');
    expect(denied).toEqual({ action: 'reject', reason: 'access_rule_denied' });
  });

  it('delay_auth_decision does not forward an unauthenticated request', async () => {
    const delayed: DecisionPolicy = { ...oauth2, delayAuthDecision: true };
    expect(await decide(request({}), delayed, checker({}))).toEqual({ action: 'reject', reason: 'missing' });
    expect(await decide(request({ authorization: 'Bearer bad' }), delayed, checker({}))).toEqual({
      action: 'reject',
      reason: 'not_found',
    });
  });

  it('Keystone down: 503, or 401 with delay_auth_decision (its InvalidToken)', async () => {
    const sent = request({ authorization: 'Bearer u' });
    expect((await decide(sent, oauth2, checker({ u: down }))).action).toBe('unavailable');
    expect(await decide(sent, { ...oauth2, delayAuthDecision: true }, checker({ u: down }))).toEqual({
      action: 'reject',
      reason: 'keystone_unavailable',
    });
  });
});

describe('decide: external_oauth2_token with thumbprint_verify', () => {
  const der = Buffer.from('certificate-a');
  const pem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`;
  const thumb = createHash('sha256').update(der).digest('base64url');
  const BOUND: TokenInfo = { ...info({ userId: 'app' }), certThumbprint: thumb };
  const ext: DecisionPolicy = {
    ...policy,
    filter: 'external_oauth2_token',
    enforceTokenBind: 'disabled',
    thumbprintVerify: true,
  };
  const bearer = { authorization: 'Bearer t' };

  it.each([
    ['its certificate', { der, pem }, 'forward'],
    ['another certificate', { der: Buffer.from('certificate-b'), pem: 'b' }, 'certificate_mismatch'],
    ['no certificate', undefined, 'certificate_missing'],
  ] as const)('a bound token on a connection with %s → %s', async (_name, clientCertificate, expected) => {
    const sent = { ...request(bearer), clientCertificate };
    const decision = await decide(sent, ext, checker({ t: valid(BOUND) }));
    const cached = decideCachedUser(sent, ext, () => BOUND);
    if (expected === 'forward') {
      expect(decision.action).toBe('forward');
      expect(cached?.action).toBe('forward');
    } else {
      expect(decision).toEqual({ action: 'reject', reason: expected });
      expect(cached).toEqual({ action: 'reject', reason: expected });
    }
  });

  it('an unbound token is refused; without thumbprint_verify the binding is not looked at', async () => {
    const unbound = info({ userId: 'app' });
    const sent = { ...request(bearer), clientCertificate: { der, pem } };
    expect(await decide(sent, ext, checker({ t: valid(unbound) }))).toEqual({
      action: 'reject',
      reason: 'certificate_mismatch',
    });
    const off = { ...ext, thumbprintVerify: false };
    expect((await decide(request(bearer), off, checker({ t: valid(BOUND) }))).action).toBe('forward');
  });

  it('reads Authorization: Bearer only, as the Keystone OAuth2 filters', async () => {
    const check = checker({ t: valid(BOUND) });
    expect(await decide(request({ 'x-auth-token': 't' }), ext, check)).toEqual({
      action: 'reject',
      reason: 'missing',
    });
    expect(check).not.toHaveBeenCalled();
  });
});

describe('decide: oauth2_mtls_token', () => {
  const mtls: DecisionPolicy = { ...policy, filter: 'oauth2_mtls_token' };
  const der = Buffer.from('not a real certificate, only its bytes are hashed');
  const pem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`;
  const thumbprint = createHash('sha256').update(der).digest('base64url');
  const BOUND = info({ userId: 'bound', roles: ['member'] });
  const bound: TokenInfo = { ...BOUND, certThumbprint: thumbprint };
  const withCert = (headers: Record<string, string>, certificate = { der, pem }) => ({
    ...request(headers),
    clientCertificate: certificate,
  });

  it('a token bound to the connection certificate → forward, on the full and on the cached path', async () => {
    const sent = withCert({ authorization: 'Bearer b' });
    expect((await decide(sent, mtls, checker({ b: valid(bound) }))).action).toBe('forward');
    expect(decideCachedUser(sent, mtls, () => bound)?.action).toBe('forward');
  });

  it.each([
    ['no client certificate', request({ authorization: 'Bearer b' }), 'certificate_missing'],
    [
      'another certificate',
      withCert({ authorization: 'Bearer b' }, { der: Buffer.from('other'), pem: 'other' }),
      'certificate_mismatch',
    ],
  ])('%s → reject (%s), cached or not', async (_name, sent, reason) => {
    expect(await decide(sent, mtls, checker({ b: valid(bound) }))).toEqual({ action: 'reject', reason });
    expect(decideCachedUser(sent, mtls, () => bound)).toEqual({ action: 'reject', reason });
  });

  it('a token without oauth2_credential is refused (a plain Keystone token is not bound)', async () => {
    const sent = withCert({ authorization: 'Bearer u' });
    expect(await decide(sent, mtls, checker({ u: valid(USER) }))).toEqual({
      action: 'reject',
      reason: 'certificate_mismatch',
    });
  });
});

describe('oauth2 filters: any Authorization value (fast-check)', () => {
  it('forwards only `Bearer <the valid token>`, never throws, never reads another header', async () => {
    const valueChar = fc.oneof(
      fc.constantFrom('B', 'e', 'a', 'r', 'b', ' ', '\t', 'g', 'o', 'd', ',', '=', '"'),
      fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    );
    const authorization = fc.oneof(
      fc.string({ unit: valueChar, maxLength: 20 }),
      fc.string({ unit: valueChar, maxLength: 4 }).map((pad) => `Bearer ${pad}good${pad}`),
      fc.constantFrom(
        'Bearer good',
        'bearer good',
        'Bearer  good',
        'Bearer good ',
        'Basic good',
        'Bearergood',
      ),
    );
    await fc.assert(
      fc.asyncProperty(
        authorization,
        fc.constantFrom<DecisionPolicy['filter']>('oauth2_token', 'oauth2_mtls_token'),
        fc.boolean(),
        async (value, filter, delay) => {
          const p: DecisionPolicy = { ...policy, filter, delayAuthDecision: delay };
          const good = filter === 'oauth2_mtls_token' ? { ...USER, certThumbprint: 'x' } : USER;
          const check = checker({ good: valid(good) });
          const sent = {
            ...request({ authorization: value, 'x-auth-token': 'good', 'x-service-token': 'good' }),
            clientCertificate: undefined,
          };
          const decision = await decide(sent, p, check);
          const isBearerGood = value.startsWith('Bearer ') && value.slice(7).trim() === 'good';
          // mTLS without a certificate never forwards; oauth2_token forwards exactly the well-formed valid token.
          const expected = isBearerGood && filter === 'oauth2_token' ? 'forward' : 'reject';
          expect(decision.action).toBe(expected);
          for (const [token] of check.mock.calls) expect(value).toContain(token);
        },
      ),
      { numRuns: 500 },
    );
  });
});
