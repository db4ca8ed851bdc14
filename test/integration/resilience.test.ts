/**
 * Keystone outages as the engine sees them, injected with the emulator: the circuit breaker (fast 503 with
 * Retry-After, half-open probe, closing by itself), the retry budget, and stale-if-error.
 */
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AuthOptionsInput } from '../../src/config/auth-options.js';
import { type Authenticator, createAuthenticator } from '../../src/http/authenticate.js';
import type { CircuitState } from '../../src/observability/observer.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';

const { users, projects, roles } = fixtures;
let keystone: KeystoneEmulator;
const open: Authenticator[] = [];

function engine(
  extra: Partial<AuthOptionsInput> = {},
  states: CircuitState[] = [],
  now?: () => number,
): Authenticator {
  const auth = createAuthenticator(
    {
      www_authenticate_uri: 'http://keystone.example:5000',
      auth_url: keystone.url,
      username: users.proxy.name,
      password: users.proxy.password,
      user_domain_name: 'Default',
      project_name: projects.service.name,
      project_domain_name: 'Default',
      http_request_timeout_seconds: 0.5,
      http_request_max_retries: 0,
      ...extra,
    },
    { observer: { circuitState: (s) => states.push(s) }, ...(now === undefined ? {} : { now }) },
  );
  open.push(auth);
  return auth;
}

const token = () =>
  keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });
const facts = (t: string) => ({ method: 'GET', path: '/v1', headers: { 'x-auth-token': t } });

beforeAll(async () => {
  keystone = await startKeystoneEmulator();
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((a) => a.close()));
  keystone.reset();
});
afterAll(() => keystone.close());

describe('circuit breaker', () => {
  it('opens after repeated failures: uncached tokens get 503 with Retry-After at once', async () => {
    const states: CircuitState[] = [];
    const auth = engine({ circuit_breaker_failure_threshold: 3, circuit_breaker_open_seconds: 30 }, states);
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'blackhole' });
    for (let i = 0; i < 3; i++) {
      expect(await auth.authenticate(facts(token()))).toMatchObject({ response: { status: 503 } });
    }
    expect(states).toEqual(['open']);
    const validations = keystone.count('validate');
    const started = performance.now();
    const outcome = await auth.authenticate(facts(token()));
    const elapsedMs = performance.now() - started;
    expect(outcome).toMatchObject({
      action: 'respond',
      response: { status: 503 },
      error: { reason: 'circuit_open' },
    });
    expect(
      outcome.action === 'respond' && Number(outcome.response.headers['Retry-After']),
    ).toBeGreaterThanOrEqual(29);
    // Refused without a Keystone round trip: the validate count below is the proof, the time only a sanity check.
    expect(elapsedMs).toBeLessThan(1_000);
    expect(keystone.count('validate')).toBe(validations);
  });

  it('cached tokens keep working while it is open', async () => {
    const auth = engine({ circuit_breaker_failure_threshold: 2, circuit_breaker_open_seconds: 30 });
    const cached = token();
    expect((await auth.authenticate(facts(cached))).action).toBe('forward');
    keystone.setFault('validate', { kind: 'status', status: 500 });
    await auth.authenticate(facts(token()));
    await auth.authenticate(facts(token()));
    expect((await auth.authenticate(facts(token()))).action).toBe('respond');
    expect((await auth.authenticate(facts(cached))).action).toBe('forward');
  });

  it('half-opens after the open period, one probe closes it when Keystone is back', async () => {
    const states: CircuitState[] = [];
    const auth = engine({ circuit_breaker_failure_threshold: 2, circuit_breaker_open_seconds: 0.3 }, states);
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'status', status: 503 });
    await auth.authenticate(facts(token()));
    await auth.authenticate(facts(token()));
    expect(states).toEqual(['open']);
    keystone.setFault('validate', undefined);
    const openedAt = performance.now();
    await new Promise((r) => setTimeout(r, 350));
    expect((await auth.authenticate(facts(token()))).action).toBe('forward');
    expect(states).toEqual(['open', 'half_open', 'closed']);
    expect(performance.now() - openedAt).toBeLessThan(1_000);
  });

  it('flapping Keystone: a failed probe opens it again', async () => {
    const states: CircuitState[] = [];
    const auth = engine({ circuit_breaker_failure_threshold: 2, circuit_breaker_open_seconds: 0.2 }, states);
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'status', status: 502 });
    await auth.authenticate(facts(token()));
    await auth.authenticate(facts(token()));
    await new Promise((r) => setTimeout(r, 250));
    await auth.authenticate(facts(token()));
    expect(states).toEqual(['open', 'half_open', 'open']);
  });

  it('the service token rejected by Keystone counts as a failure too', async () => {
    const states: CircuitState[] = [];
    const auth = engine({ password: 'wrong', circuit_breaker_failure_threshold: 2 }, states);
    await auth.authenticate(facts(token()));
    await auth.authenticate(facts(token()));
    expect(states).toEqual(['open']);
    const auths = keystone.count('auth');
    await auth.authenticate(facts(token()));
    expect(keystone.count('auth')).toBe(auths);
  });

  it('404 answers never open it (Keystone is up, the tokens are bad)', async () => {
    const states: CircuitState[] = [];
    const auth = engine({ circuit_breaker_failure_threshold: 2 }, states);
    for (let i = 0; i < 5; i++) await auth.authenticate(facts(`gAAAAABbad-${i}`));
    expect(states).toEqual([]);
  });
});

describe('retry budget', () => {
  it('connection retries across all requests are bounded per second', async () => {
    const auth = engine({
      http_request_max_retries: 3,
      retry_budget_per_second: 2,
      circuit_breaker_failure_threshold: 0,
      http_request_timeout_seconds: 2,
    });
    await auth.warmUp();
    keystone.setFault('validate', { kind: 'reset' });
    const before = keystone.count('validate');
    await Promise.all(Array.from({ length: 10 }, () => auth.authenticate(facts(token()))));
    const attempts = keystone.count('validate') - before;
    // 10 first attempts plus at most the budget (2, refilled at 2/s while the retries back off).
    expect(attempts).toBeGreaterThanOrEqual(10);
    expect(attempts).toBeLessThanOrEqual(13);
  });
});

describe('stale-if-error', () => {
  function clock() {
    let offset = 0;
    return { now: () => Date.now() + offset, advance: (ms: number) => (offset += ms) };
  }

  it('off by default: an expired cache entry is not served when Keystone is down', async () => {
    const c = clock();
    const auth = engine({ token_cache_time: 1 }, [], c.now);
    const t = token();
    expect((await auth.authenticate(facts(t))).action).toBe('forward');
    c.advance(2_000);
    keystone.setFault('validate', { kind: 'status', status: 503 });
    expect((await auth.authenticate(facts(t))).action).toBe('respond');
  });

  it('serves a cached identity past its cache time while Keystone is unavailable, up to the cap', async () => {
    const c = clock();
    const auth = engine({ token_cache_time: 1, stale_if_error_seconds: 60 }, [], c.now);
    const t = token();
    expect((await auth.authenticate(facts(t))).action).toBe('forward');
    c.advance(2_000);
    keystone.setFault('validate', { kind: 'status', status: 503 });
    const outcome = await auth.authenticate(facts(t));
    expect(outcome).toMatchObject({ action: 'forward', context: { userStatus: 'Confirmed' } });
    c.advance(60_000);
    expect((await auth.authenticate(facts(t))).action).toBe('respond');
  });

  it('never for a token Keystone has said is invalid', async () => {
    const c = clock();
    const auth = engine({ token_cache_time: 1, stale_if_error_seconds: 60 }, [], c.now);
    const t = token();
    await auth.authenticate(facts(t));
    c.advance(2_000);
    keystone.revoke(t);
    expect((await auth.authenticate(facts(t))).action).toBe('respond');
    keystone.setFault('validate', { kind: 'status', status: 503 });
    expect((await auth.authenticate(facts(t))).action).toBe('respond');
  });

  it('never past the token expiry', async () => {
    const c = clock();
    const auth = engine({ token_cache_time: 300, stale_if_error_seconds: 3_600 }, [], c.now);
    const t = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      expiresAt: new Date(Date.now() + 10_000),
    });
    await auth.authenticate(facts(t));
    c.advance(11_000);
    keystone.setFault('validate', { kind: 'status', status: 503 });
    expect((await auth.authenticate(facts(t))).action).toBe('respond');
  });
});
