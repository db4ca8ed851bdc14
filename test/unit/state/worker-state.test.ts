/**
 * A cluster worker's L1 in front of the host state, over an in-memory channel (test/helpers/state-link.ts):
 * hits never leave the worker, misses ask the host once per token, the copy never outlives the host's entry,
 * and what the host pushes (forget, revoked) reaches the L1 in order.
 */
import { describe, expect, it } from 'vitest';
import { resolveAuthOptions } from '../../../src/config/auth-options.js';
import type { TokenValidator } from '../../../src/keystone/client.js';
import type { HostLookupOutcome } from '../../../src/observability/observer.js';
import { assembleHostState } from '../../../src/state/assemble.js';
import { createHostService } from '../../../src/state/host-service.js';
import type { HostIdentityState } from '../../../src/state/host-state.js';
import { parseRevocationEvents } from '../../../src/state/revocation.js';
import { WorkerIdentityState } from '../../../src/state/worker-state.js';
import { createAuthTokenFixture } from '../../../src/testing.js';
import { type LinkPair, linkPair } from '../../helpers/state-link.js';

function clock(start = Date.now()) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

interface Host {
  readonly state: HostIdentityState;
  readonly fixture: ReturnType<typeof createAuthTokenFixture>;
  readonly clock: ReturnType<typeof clock>;
  readonly hashKey: Buffer;
  /** A worker on its own channel to this host. */
  worker(options?: { maxEntries?: number; answerTimeoutMs?: number }): Promise<Worker>;
}

interface Worker {
  readonly state: WorkerIdentityState;
  readonly link: LinkPair;
  readonly lookups: HostLookupOutcome[];
  /** Questions (check messages) this worker sent to the host. */
  checks(): number;
}

async function host(
  options: Record<string, unknown> = {},
  validator?: (fixture: ReturnType<typeof createAuthTokenFixture>) => TokenValidator,
): Promise<Host> {
  const fixture = createAuthTokenFixture();
  const c = clock();
  const hashKey = Buffer.alloc(32, 3);
  const resolved = resolveAuthOptions(
    { www_authenticate_uri: 'http://keystone', revocation_poll_interval_seconds: 0, ...options },
    { credentialsOptional: true },
  );
  const state = assembleHostState(resolved, {
    validator: validator?.(fixture) ?? fixture,
    now: c.now,
    cacheHashKey: hashKey,
  });
  const service = createHostService(state, hashKey, {
    debug: () => undefined,
    info: () => undefined,
    warn: () => undefined,
    error: () => undefined,
  });
  return {
    state,
    fixture,
    clock: c,
    hashKey,
    async worker(o = {}) {
      const link = linkPair();
      service.attach(link.host);
      const lookups: HostLookupOutcome[] = [];
      const worker = await WorkerIdentityState.connect({
        link: link.worker,
        ttlSeconds: resolved.tokenCacheTimeSeconds,
        maxEntries: o.maxEntries ?? 100,
        maxBytes: 1 << 20,
        revalidateAfterMs: resolved.tokenRevalidateSeconds * 1000,
        answerTimeoutMs: o.answerTimeoutMs ?? 1_000,
        now: c.now,
        observer: { hostLookup: (outcome) => lookups.push(outcome) },
        logger: {
          debug: () => undefined,
          info: () => undefined,
          warn: () => undefined,
          error: () => undefined,
        },
      });
      return {
        state: worker,
        link,
        lookups,
        checks: () => link.sent.worker.filter((m) => (m as { kap?: string }).kap === 'check').length,
      };
    },
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('WorkerIdentityState', () => {
  it('an L1 hit is answered in the worker: no message to the host, no validation', async () => {
    const h = await host();
    const w = await h.worker();
    const token = h.fixture.addToken({ userId: 'u1' });
    expect(await w.state.check(token, false)).toMatchObject({ status: 'valid', source: 'keystone' });
    expect(w.checks()).toBe(1);
    expect(w.state.checkCached(token)?.userId).toBe('u1');
    expect(await w.state.check(token, false)).toMatchObject({ status: 'valid', source: 'cache' });
    expect(w.checks()).toBe(1);
    expect(h.fixture.calls).toBe(1);
    expect(w.state.stats().entries).toBe(1);
  });

  it('two workers, one token: the second is answered from the host cache (one validation for the host)', async () => {
    const h = await host();
    const [a, b] = [await h.worker(), await h.worker()];
    const token = h.fixture.addToken();
    await a.state.check(token, false);
    expect(await b.state.check(token, false)).toMatchObject({ status: 'valid', source: 'cache' });
    expect(h.fixture.calls).toBe(1);
    expect([a.lookups, b.lookups]).toEqual([['valid'], ['valid']]);
  });

  it('concurrent checks of one token in a worker: one question to the host', async () => {
    const h = await host();
    const w = await h.worker();
    const token = h.fixture.addToken();
    const answers = await Promise.all(Array.from({ length: 10 }, () => w.state.check(token, false)));
    expect(answers.every((a) => a.status === 'valid')).toBe(true);
    expect(w.checks()).toBe(1);
  });

  it('the L1 copy lives no longer than the host entry: past token_cache_time the worker asks again', async () => {
    const h = await host({ token_cache_time: 60 });
    const w = await h.worker();
    const token = h.fixture.addToken();
    await w.state.check(token, false);
    h.clock.advance(30_000);
    expect(w.state.checkCached(token)).toBeDefined();
    // The host entry is 30 s old: a second worker's copy gets the 30 s left, not 60.
    const late = await h.worker();
    await late.state.check(token, false);
    h.clock.advance(31_000);
    expect(w.state.checkCached(token)).toBeUndefined();
    expect(late.state.checkCached(token)).toBeUndefined();
    await w.state.check(token, false);
    expect(w.checks()).toBe(2);
    expect(h.fixture.calls).toBe(2);
  });

  it('nothing cached on the host (token_cache_time 0): nothing kept in the L1 either', async () => {
    const h = await host({ token_cache_time: 0 });
    const w = await h.worker();
    const token = h.fixture.addToken();
    await w.state.check(token, false);
    await w.state.check(token, false);
    expect(w.checks()).toBe(2);
    expect(w.state.stats().entries).toBe(0);
  });

  it('invalid and unavailable answers cross the channel with their reason; a breaker 503 keeps Retry-After', async () => {
    const h = await host({ circuit_breaker_failure_threshold: 1 }, (fixture) => ({
      validate: async (token, options) => {
        if (token.startsWith('down')) {
          const { KeystoneUnavailableError } = await import('../../../src/errors.js');
          throw new KeystoneUnavailableError('circuit_open', 'open', { retryAfterSeconds: 4 });
        }
        return fixture.validate(token, options);
      },
    }));
    const w = await h.worker();
    expect(await w.state.check('not-a-token', false)).toEqual({ status: 'invalid', reason: 'not_found' });
    const unavailable = await w.state.check('down-1', false);
    expect(unavailable.status).toBe('unavailable');
    if (unavailable.status !== 'unavailable') return;
    expect(unavailable.error.code).toBe('ERR_KSAUTH_KEYSTONE_UNAVAILABLE');
    expect(unavailable.error.reason).toBe('circuit_open');
    expect(unavailable.error.retryAfterSeconds).toBe(4);
    expect(w.lookups).toEqual(['invalid', 'unavailable']);
    expect(w.state.stats().entries).toBe(0);
  });

  it('a host that does not answer: 503 (timeout) after answerTimeoutMs, never a hang', async () => {
    const h = await host();
    const w = await h.worker({ answerTimeoutMs: 50 });
    w.link.muteHost();
    const started = Date.now();
    const answer = await w.state.check(h.fixture.addToken(), false);
    expect(answer.status).toBe('unavailable');
    expect(answer.status === 'unavailable' && answer.error.reason).toBe('timeout');
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(w.lookups).toEqual(['unanswered']);
  });

  it('a closed channel: 503 at once', async () => {
    const h = await host();
    const w = await h.worker({ answerTimeoutMs: 60_000 });
    w.link.close();
    expect((await w.state.check(h.fixture.addToken(), false)).status).toBe('unavailable');
  });

  it('forget from the host drops the copy: a re-validation that found the token invalid reaches the L1', async () => {
    const h = await host({ token_revalidate_seconds: 10 });
    const w = await h.worker();
    const token = h.fixture.addToken();
    await w.state.check(token, false);
    h.clock.advance(11_000);
    h.fixture.revoke(token);
    // The old copy is still served, and sent once to the host, which re-validates in the background.
    expect(w.state.checkCached(token)).toBeDefined();
    expect(w.state.checkCached(token)).toBeDefined();
    for (let i = 0; i < 10 && w.state.stats().entries > 0; i++) await tick();
    expect(w.checks()).toBe(2);
    expect(h.fixture.calls).toBe(2);
    expect(w.state.checkCached(token)).toBeUndefined();
    expect(await w.state.check(token, false)).toMatchObject({ status: 'invalid' });
  });

  it('revoked from the host: copies the new events match are dropped, others stay', async () => {
    const h = await host();
    const w = await h.worker();
    const kept = h.fixture.addToken({ userId: 'stays' });
    const doomed = h.fixture.addToken({ userId: 'revoked-user' });
    await w.state.check(kept, false);
    await w.state.check(doomed, false);
    const { events } = parseRevocationEvents({
      events: [{ user_id: 'revoked-user', issued_before: new Date(h.clock.now() + 1000).toISOString() }],
    });
    w.link.host.send({ kap: 'revoked', events });
    await tick();
    expect(w.state.checkCached(doomed)).toBeUndefined();
    expect(w.state.checkCached(kept)).toBeDefined();
  });

  it('the L1 is bounded by worker_cache_max_entries', async () => {
    const h = await host();
    const w = await h.worker({ maxEntries: 3 });
    for (let i = 0; i < 10; i++) await w.state.check(h.fixture.addToken(), false);
    expect(w.state.stats().entries).toBe(3);
    expect(h.state.stats().entries).toBe(10);
  });

  it('allow_expired answers are kept apart: never served to a request without it', async () => {
    const h = await host();
    const w = await h.worker();
    const token = h.fixture.addToken({ expiresAt: new Date(Date.now() - 1000) });
    expect(await w.state.check(token, true)).toMatchObject({ status: 'valid' });
    expect(w.state.checkCached(token)).toBeUndefined();
    expect(await w.state.check(token, true)).toMatchObject({ status: 'valid', source: 'cache' });
    expect(await w.state.check(token, false)).toMatchObject({ status: 'invalid' });
  });
});

describe('host service', () => {
  it('new revocation events polled by the host are pushed to every worker', async () => {
    let body: unknown = { events: [] };
    const h = await host({ revocation_poll_interval_seconds: 60 }, (fixture) => ({
      validate: (token, options) => fixture.validate(token, options),
      revocationEvents: async () => ({ kind: 'events', body }),
    }));
    const [a, b] = [await h.worker(), await h.worker()];
    const token = h.fixture.addToken({ userId: 'gone' });
    await a.state.check(token, false);
    await b.state.check(token, false);
    body = { events: [{ user_id: 'gone', issued_before: new Date(h.clock.now() + 1000).toISOString() }] };
    expect(await h.state.revocation?.pollNow()).toBe('ok');
    await tick();
    expect(a.state.checkCached(token)).toBeUndefined();
    expect(b.state.checkCached(token)).toBeUndefined();
    expect(h.state.checkCached(token)).toBeUndefined();
    await h.state.close();
  });
});
