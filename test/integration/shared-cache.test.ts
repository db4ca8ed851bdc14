/**
 * The memcached tier between engines ("replicas") sharing one real memcached, with the emulator as Keystone:
 * a token validated by one is served by the other without a Keystone call; entries are protected (MAC,
 * ENCRYPT), so a tampered or foreign entry is a miss; a dead or black-holed memcached costs one bounded
 * lookup, then none; revocation events reach both tiers; the negative cache and background re-validation.
 */
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AuthOptionsInput } from '../../src/config/auth-options.js';
import { type Authenticator, createAuthenticator } from '../../src/http/authenticate.js';
import type { CacheEvent, MemcachedOutcome } from '../../src/observability/observer.js';
import { memcacheEntryKeys } from '../../src/state/memcache-crypt.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { type Memcached, skipWithoutMemcached, startMemcached } from '../helpers/memcached.js';

const { users, projects, roles } = fixtures;
let keystone: KeystoneEmulator;
let memcached: Memcached;
const open: Authenticator[] = [];

interface Seen {
  cache: CacheEvent[];
  memcached: MemcachedOutcome[];
}

function baseOptions(): AuthOptionsInput {
  return {
    www_authenticate_uri: 'http://keystone.example:5000',
    auth_url: keystone.url,
    username: users.proxy.name,
    password: users.proxy.password,
    user_domain_name: 'Default',
    project_name: projects.service.name,
    project_domain_name: 'Default',
    http_request_timeout_seconds: 1,
    memcached_servers: `127.0.0.1:${memcached.port}`,
    memcache_security_strategy: 'ENCRYPT',
    memcache_secret_key: 'shared-secret',
    memcache_pool_socket_timeout: 0.2,
    memcache_pool_dead_retry: 1,
    revocation_poll_interval_seconds: 0,
  };
}

function replica(extra: Partial<AuthOptionsInput> = {}, seen: Seen = { cache: [], memcached: [] }) {
  const auth = createAuthenticator(
    { ...baseOptions(), ...extra },
    {
      observer: {
        cache: (event) => seen.cache.push(event),
        memcached: (_op, outcome) => seen.memcached.push(outcome),
      },
    },
  );
  open.push(auth);
  return { auth, seen };
}

const token = () =>
  keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });
const facts = (t: string) => ({ method: 'GET', path: '/v1', headers: { 'x-auth-token': t } });
const status = async (auth: Authenticator, t: string) => {
  const outcome = await auth.authenticate(facts(t));
  return outcome.action === 'forward' ? 200 : outcome.response.status;
};
/** memcached writes are fire-and-forget: give one a moment to land. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

describe.skipIf(skipWithoutMemcached)('shared memcached tier', () => {
  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    memcached = await startMemcached();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((a) => a.close()));
    keystone.reset();
  });
  afterAll(async () => {
    await memcached?.stop();
    await keystone?.close();
  });

  it('a token validated by one replica is served by another without a Keystone call', async () => {
    const a = replica();
    const b = replica();
    const t = token();
    expect(await status(a.auth, t)).toBe(200);
    expect(keystone.count('validate')).toBe(1);
    await settle();
    const outcome = await b.auth.authenticate(facts(t));
    expect(outcome.action).toBe('forward');
    expect(outcome.action === 'forward' && outcome.context.user?.userId).toBe(users.demo.id);
    expect(keystone.count('validate')).toBe(1);
    expect(b.seen.cache).toContain('shared_hit');
    // Now in b's own LRU: no memcached round trip either.
    const before = b.seen.memcached.length;
    expect(await status(b.auth, t)).toBe(200);
    expect(b.seen.memcached.length).toBe(before);
  });

  it('identity headers from a shared entry equal those from Keystone', async () => {
    const a = replica();
    const b = replica();
    const t = token();
    const first = await a.auth.authenticate(facts(t));
    await settle();
    const second = await b.auth.authenticate(facts(t));
    expect(first.action === 'forward' && second.action === 'forward').toBe(true);
    if (first.action === 'forward' && second.action === 'forward') {
      expect(second.headers).toEqual(first.headers);
    }
  });

  it('a memcached entry never holds the raw token, even with strategy None (keystonemiddleware stores it)', async () => {
    const { auth } = replica({ memcache_security_strategy: 'None', memcache_secret_key: undefined });
    const t = token();
    expect(await status(auth, t)).toBe(200);
    await settle();
    const stored = await memcached.get(memcacheEntryKeys(t, 'None', undefined).cacheKey);
    expect(stored?.toString('utf8')).toContain(users.demo.id);
    expect(stored?.toString('utf8')).not.toContain(t);
  });

  it('a replica with another secret cannot read the entries: it asks Keystone', async () => {
    const a = replica();
    const other = replica({ memcache_secret_key: 'another-secret' });
    const t = token();
    expect(await status(a.auth, t)).toBe(200);
    await settle();
    expect(await status(other.auth, t)).toBe(200);
    expect(keystone.count('validate')).toBe(2);
    expect(other.seen.cache).not.toContain('shared_hit');
  });

  it('a tampered entry is a miss, never an identity, and is removed', async () => {
    const a = replica();
    const t = token();
    expect(await status(a.auth, t)).toBe(200);
    await settle();
    const key = memcacheEntryKeys(t, 'ENCRYPT', Buffer.from('shared-secret')).cacheKey;
    const stored = await memcached.get(key);
    expect(stored).toBeDefined();
    const tampered = Buffer.from(stored as Buffer);
    tampered.writeUInt8((tampered.at(-5) ?? 0) ^ 0x01, tampered.length - 5);
    await memcached.set(key, tampered);
    const b = replica();
    expect(await status(b.auth, t)).toBe(200);
    expect(b.seen.cache).toContain('shared_rejected');
    expect(keystone.count('validate')).toBe(2);
  });

  it('an entry forged under the plain (None) key is not read by a MAC replica', async () => {
    const t = token();
    const plainKey = memcacheEntryKeys(t, 'None', undefined).cacheKey;
    const forged = { token: { user: { id: 'attacker' } } };
    await memcached.set(plainKey, Buffer.from(JSON.stringify(forged)));
    const a = replica({ memcache_security_strategy: 'MAC' });
    const outcome = await a.auth.authenticate(facts(t));
    expect(outcome.action === 'forward' && outcome.context.user?.userId).toBe(users.demo.id);
  });

  it('a token Keystone rejects on re-validation is removed from memcached, so other replicas stop serving it', async () => {
    let now = Date.now();
    const clocked = createAuthenticator(
      { ...baseOptions(), token_revalidate_seconds: 30 },
      { now: () => now },
    );
    open.push(clocked);
    const t = token();
    expect(await status(clocked, t)).toBe(200);
    await settle();
    keystone.revoke(t);
    now += 31_000;
    // Served once more while Keystone is asked in the background; its 404 removes the shared entry.
    expect(await status(clocked, t)).toBe(200);
    await settle();
    const b = replica();
    expect(await status(b.auth, t)).toBe(401);
    expect(b.seen.cache).not.toContain('shared_hit');
  });

  describe('memcached down or slow', () => {
    it('stopped: one bounded failed lookup, then the server is skipped; requests go on via Keystone', async () => {
      const dead = await startMemcached();
      const b = replica({ memcached_servers: `127.0.0.1:${dead.port}`, memcache_pool_dead_retry: 60 });
      await dead.stop();
      const started = performance.now();
      expect(await status(b.auth, token())).toBe(200);
      expect(await status(b.auth, token())).toBe(200);
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(b.seen.memcached).toContain('skipped_down');
      expect(b.seen.memcached.filter((o) => o === 'error' || o === 'timeout').length).toBeLessThanOrEqual(2);
    });

    it('black-holed (SIGSTOP): the lookup gives up at its deadline, later ones are skipped, then it recovers', async () => {
      const box = await startMemcached();
      try {
        const { auth, seen } = replica({
          memcached_servers: `127.0.0.1:${box.port}`,
          memcache_pool_dead_retry: 0.5,
        });
        expect(await status(auth, token())).toBe(200);
        box.pause();
        const started = performance.now();
        expect(await status(auth, token())).toBe(200);
        const first = performance.now() - started;
        expect(seen.memcached).toContain('timeout');
        const again = performance.now();
        expect(await status(auth, token())).toBe(200);
        expect(seen.memcached).toContain('skipped_down');
        // The second request did not wait for memcached at all.
        expect(performance.now() - again).toBeLessThan(first);
        box.resume();
        await new Promise((resolve) => setTimeout(resolve, 600));
        const t = token();
        expect(await status(auth, t)).toBe(200);
        await settle();
        const { auth: other, seen: otherSeen } = replica({ memcached_servers: `127.0.0.1:${box.port}` });
        expect(await status(other, t)).toBe(200);
        expect(otherSeen.cache).toContain('shared_hit');
      } finally {
        box.resume();
        await box.stop();
      }
    });
  });

  describe('revocation events', () => {
    it('a revoked token is dropped from both tiers at the next poll; other tokens of the user stay', async () => {
      const a = replica({ revocation_poll_interval_seconds: 60 });
      const b = replica({ revocation_poll_interval_seconds: 60 });
      await a.auth.revocation?.pollNow();
      await b.auth.revocation?.pollNow();
      const revoked = token();
      const kept = token();
      for (const t of [revoked, kept]) {
        expect(await status(a.auth, t)).toBe(200);
        await settle();
        expect(await status(b.auth, t)).toBe(200);
      }
      const validations = keystone.count('validate');
      keystone.revoke(revoked);
      // Before the poll the cached identity is still served (this is the window polling closes).
      expect(await status(a.auth, revoked)).toBe(200);
      expect(await a.auth.revocation?.pollNow()).toBe('ok');
      expect(a.seen.cache).not.toContain('revoked');
      expect(await status(a.auth, revoked)).toBe(401);
      expect(await status(a.auth, kept)).toBe(200);
      await b.auth.revocation?.pollNow();
      expect(await status(b.auth, revoked)).toBe(401);
      expect(await status(b.auth, kept)).toBe(200);
      // `revoked` went back to Keystone once per replica (404), `kept` never did.
      expect(keystone.count('validate') - validations).toBe(2);
    });

    it('a memcached entry written before the event is not served by a replica that never saw the token', async () => {
      const a = replica({ revocation_poll_interval_seconds: 60 });
      // Another user: a user event also revokes that user's tokens issued in the same second.
      const t = keystone.issueToken({
        user: users.d2user,
        scope: { project: projects.d2project },
        roles: [roles.member],
      });
      expect(await status(a.auth, t)).toBe(200);
      await settle();
      keystone.revokeUser(users.d2user.id);
      // A fresh replica polls first (as the CLI does at start), then meets the shared entry.
      const c = replica({ revocation_poll_interval_seconds: 60 });
      await c.auth.revocation?.pollNow();
      expect(await status(c.auth, t)).toBe(401);
      expect(c.seen.cache).toContain('revoked');
    });

    it('polls by itself every interval', async () => {
      const { auth } = replica({ revocation_poll_interval_seconds: 0.2 });
      const t = token();
      expect(await status(auth, t)).toBe(200);
      // The first poll runs at start; the revocation below can only be seen by a later one.
      while (auth.revocation?.lastSuccessMs === undefined) await new Promise((r) => setTimeout(r, 10));
      const polls = keystone.count('revoke_events');
      keystone.revoke(t);
      const started = Date.now();
      while ((await status(auth, t)) === 200 && Date.now() - started < 3_000) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(await status(auth, t)).toBe(401);
      expect(keystone.count('revoke_events')).toBeGreaterThan(polls);
    });

    it('Keystone refusing the API (403): TTL-only, with a warning; requests unaffected', async () => {
      keystone.setFault('revoke_events', { kind: 'status', status: 403, body: { error: { code: 403 } } });
      const { auth } = replica({ revocation_poll_interval_seconds: 60 });
      expect(await auth.revocation?.pollNow()).toBe('unsupported');
      expect(auth.revocation?.state).toBe('degraded');
      expect(await status(auth, token())).toBe(200);
    });
  });

  describe('negative cache', () => {
    it('an invalid token is answered from memory for negative_cache_seconds', async () => {
      const { auth } = replica({ negative_cache_seconds: 5 });
      const t = token();
      keystone.revoke(t);
      expect(await status(auth, t)).toBe(401);
      expect(await status(auth, t)).toBe(401);
      expect(keystone.count('validate')).toBe(1);
    });

    it('never applied to an allow_expired request (service token present)', async () => {
      const { auth } = replica({ negative_cache_seconds: 5, memcached_servers: undefined });
      const expired = keystone.issueToken({
        user: users.demo,
        scope: { project: projects.demo },
        roles: [roles.member],
        issuedAt: new Date(Date.now() - 7_200_000),
        expiresAt: new Date(Date.now() - 3_600_000),
      });
      expect(await status(auth, expired)).toBe(401);
      const service = keystone.issueToken({
        user: users.proxy,
        scope: { project: projects.service },
        roles: [roles.service],
      });
      const outcome = await auth.authenticate({
        method: 'GET',
        path: '/v1',
        headers: { 'x-auth-token': expired, 'x-service-token': service },
      });
      expect(outcome.action).toBe('forward');
    });
  });

  describe('background re-validation (token_revalidate_seconds)', () => {
    it('a cached identity Keystone no longer accepts is dropped without holding a request', async () => {
      let now = Date.now();
      // This process's cache alone: the shared tier is not what is tested here.
      const auth = createAuthenticator(
        { ...baseOptions(), memcached_servers: undefined, token_revalidate_seconds: 30 },
        { now: () => now },
      );
      open.push(auth);
      const t = token();
      expect(await status(auth, t)).toBe(200);
      // Invalid at Keystone without any event (like a role unassigned).
      keystone.revoke(t);
      now += 10_000;
      expect(await status(auth, t)).toBe(200);
      expect(keystone.count('validate')).toBe(1);
      now += 25_000;
      // Past 30 s: served once more while Keystone is asked in the background...
      expect(await status(auth, t)).toBe(200);
      await settle();
      expect(keystone.count('validate')).toBe(2);
      // ...and from then on refused.
      expect(await status(auth, t)).toBe(401);
    });
  });
});
