import { describe, expect, it } from 'vitest';
import { parseTokenBody, type TokenInfo } from '../../../src/keystone/token-info.js';
import { TokenCache } from '../../../src/state/token-cache.js';
import { fixtureTokenBody } from '../../../src/testing.js';

function clock(start = Date.parse('2030-01-01T00:00:00Z')) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

function identity(now: number, lifetimeMs: number, userId = 'u'): TokenInfo {
  return parseTokenBody(fixtureTokenBody({ userId, expiresAt: new Date(now + lifetimeMs) }, new Date(now)), {
    renderCatalog: false,
  });
}

const base = { ttlSeconds: 300, maxEntries: 100, maxBytes: 1 << 20 };

describe('TokenCache', () => {
  it('keys are keyed hashes: fixed length, no token material, different per process key', () => {
    const a = new TokenCache({ ...base, now: Date.now });
    const b = new TokenCache({ ...base, now: Date.now });
    const token = 'gAAAAABsecret-token-value';
    expect(a.keyOf(token)).toHaveLength(43);
    expect(a.keyOf(token)).not.toContain('secret');
    expect(a.keyOf(token)).toBe(a.keyOf(token));
    expect(a.keyOf(token)).not.toBe(b.keyOf(token));
    const shared = Buffer.alloc(32, 7);
    expect(new TokenCache({ ...base, now: Date.now, hashKey: shared }).keyOf(token)).toBe(
      new TokenCache({ ...base, now: Date.now, hashKey: shared }).keyOf(token),
    );
  });

  it('TTL is token_cache_time when the token lives longer', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    cache.set('k', identity(c.now(), 3_600_000), 'normal');
    c.advance(299_000);
    expect(cache.get('k', 'normal')).toBeDefined();
    c.advance(2_000);
    expect(cache.get('k', 'normal')).toBeUndefined();
  });

  it('TTL is the time left to expires_at when that is shorter', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    cache.set('k', identity(c.now(), 10_000), 'normal');
    c.advance(9_000);
    expect(cache.get('k', 'normal')).toBeDefined();
    c.advance(2_000);
    expect(cache.get('k', 'normal')).toBeUndefined();
  });

  it('does not store a token that has already expired', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    cache.set('k', identity(c.now(), -1_000), 'normal');
    expect(cache.size).toBe(0);
  });

  it('token_cache_time <= 0 disables the cache', () => {
    const c = clock();
    for (const ttlSeconds of [0, -1]) {
      const cache = new TokenCache({ ...base, ttlSeconds, now: c.now });
      cache.set('k', identity(c.now(), 3_600_000), 'normal');
      expect(cache.get('k', 'normal')).toBeUndefined();
    }
  });

  it('allow_expired results are never served to a normal request', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    const expired = identity(c.now(), -60_000);
    cache.set('k', expired, 'allow_expired');
    expect(cache.get('k', 'normal')).toBeUndefined();
    expect(cache.get('k', 'allow_expired')).toBe(expired);
  });

  it('a normal result serves allow_expired requests too', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    const fresh = identity(c.now(), 3_600_000);
    cache.set('k', fresh, 'normal');
    expect(cache.get('k', 'allow_expired')).toBe(fresh);
  });

  it('is bounded by entries, evicting the least recently used', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, maxEntries: 3, now: c.now });
    for (const key of ['a', 'b', 'c']) cache.set(key, identity(c.now(), 3_600_000), 'normal');
    cache.get('a', 'normal');
    cache.set('d', identity(c.now(), 3_600_000), 'normal');
    expect(cache.size).toBe(3);
    expect(cache.get('b', 'normal')).toBeUndefined();
    expect(cache.get('a', 'normal')).toBeDefined();
  });

  it('is bounded by bytes', () => {
    const c = clock();
    const one = identity(c.now(), 3_600_000);
    const cache = new TokenCache({ ...base, maxBytes: (one.sizeBytes + 128) * 5, now: c.now });
    for (let i = 0; i < 20; i++) cache.set(`k${i}`, identity(c.now(), 3_600_000), 'normal');
    expect(cache.size).toBeLessThanOrEqual(5);
    expect(cache.bytes).toBeLessThanOrEqual((one.sizeBytes + 128) * 5);
  });

  it('delete removes both kinds of entry', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    cache.set('k', identity(c.now(), 3_600_000), 'normal');
    cache.set('k', identity(c.now(), -1), 'allow_expired');
    cache.delete('k');
    expect(cache.get('k', 'allow_expired')).toBeUndefined();
  });

  it('allow_expired answers have their own, smaller bound: they cannot push out normal identities', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, maxEntries: 16, now: c.now });
    for (let i = 0; i < 16; i++) cache.set(`n${i}`, identity(c.now(), 3_600_000), 'normal');
    for (let i = 0; i < 50; i++) cache.set(`e${i}`, identity(c.now(), -1), 'allow_expired');
    for (let i = 0; i < 16; i++) expect(cache.get(`n${i}`, 'normal'), `n${i}`).toBeDefined();
    // An eighth of 16: the two most recent allow_expired answers.
    expect(cache.size).toBe(18);
    expect(cache.get('e49', 'allow_expired')).toBeDefined();
    expect(cache.get('e47', 'allow_expired')).toBeUndefined();
  });

  it('sweep drops what a revocation selects, from both LRUs, and returns their memcached keys', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    cache.set('a', identity(c.now(), 3_600_000, 'alice'), 'normal', { sharedKey: 'tokens/a' });
    cache.set('b', identity(c.now(), 3_600_000, 'bob'), 'normal', { sharedKey: 'tokens/b' });
    cache.set('x', identity(c.now(), -1, 'alice'), 'allow_expired');
    const result = cache.sweep((info) => info.userId === 'alice');
    expect(result).toEqual({ evicted: 2, sharedKeys: ['tokens/a'] });
    expect(cache.get('a', 'normal')).toBeUndefined();
    expect(cache.get('x', 'allow_expired')).toBeUndefined();
    expect(cache.get('b', 'normal')?.userId).toBe('bob');
  });

  it('an entry from memcached keeps only the time it had left there, and its validation time', () => {
    const c = clock();
    const cache = new TokenCache({ ...base, now: c.now });
    const validatedAtMs = c.now() - 200_000;
    cache.set('k', identity(c.now(), 3_600_000), 'normal', { maxFreshMs: 100_000, validatedAtMs });
    expect(cache.lookup('k', 'normal')?.validatedAtMs).toBe(validatedAtMs);
    c.advance(99_000);
    expect(cache.get('k', 'normal')).toBeDefined();
    c.advance(2_000);
    expect(cache.get('k', 'normal')).toBeUndefined();
  });

  it('negative cache: only when enabled, for its own TTL', () => {
    const c = clock();
    const off = new TokenCache({ ...base, now: c.now });
    off.setInvalid('k');
    expect(off.isKnownInvalid('k')).toBe(false);
    const on = new TokenCache({ ...base, negativeSeconds: 5, now: c.now });
    on.setInvalid('k');
    expect(on.isKnownInvalid('k')).toBe(true);
    c.advance(5_001);
    expect(on.isKnownInvalid('k')).toBe(false);
  });
});
