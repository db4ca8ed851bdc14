/**
 * Validated identities, bounded by entries and bytes (lru-cache), keyed by a keyed hash of the token so no raw
 * token is kept in memory. Only successful validations are stored. Results obtained with allow_expired live
 * in a separate, smaller LRU, so they can neither be served to nor be displaced by requests without a valid
 * service token (keystonemiddleware bug 1987355).
 */
import { hash, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { TokenInfo } from '../keystone/token-info.js';

export interface TokenCacheOptions {
  /** keystonemiddleware's `token_cache_time`; 0 or less disables caching. */
  readonly ttlSeconds: number;
  readonly maxEntries: number;
  readonly maxBytes: number;
  /** Wall clock in ms. */
  readonly now: () => number;
  /** Secret of the keyed hash behind cache keys; random per process unless given (a shared cache needs one). */
  readonly hashKey?: Buffer | undefined;
  /**
   * stale-if-error: how long an entry is kept past its cache time, to be served only while Keystone is
   * unavailable (never past the token's own expiry). 0: not kept.
   */
  readonly staleSeconds?: number | undefined;
  /** How long a token Keystone called invalid is answered from memory; 0: never. */
  readonly negativeSeconds?: number | undefined;
  /** Bound of the negative cache (its own LRU, so a flood of bad tokens cannot push out valid identities). */
  readonly negativeMaxEntries?: number | undefined;
}

export interface CachedIdentity {
  readonly info: TokenInfo;
  /** Wall-clock ms until which the entry is served normally. */
  readonly freshUntil: number;
  /** When Keystone last confirmed it (wall-clock ms; for an entry from memcached, when that was written). */
  readonly validatedAtMs: number;
  /** Its memcached key, so that a revocation can remove it from the shared tier too. */
  readonly sharedKey: string | undefined;
}
type Entry = CachedIdentity;

/** Where an identity came from; an entry filled from memcached keeps no more than the tier's remaining time. */
export interface CacheFill {
  readonly sharedKey?: string | undefined;
  /** When Keystone confirmed the identity, if earlier than now (an entry read from memcached). */
  readonly validatedAtMs?: number | undefined;
  /** Cap on the cache time, in ms (time left of an entry read from memcached). */
  readonly maxFreshMs?: number | undefined;
}

export type CacheMode = 'normal' | 'allow_expired';

/** lru-cache's own bookkeeping, the entry wrapper and the key (a 43-character string), per entry. */
const ENTRY_OVERHEAD_BYTES = 200;
/** allow_expired answers (rare: services finishing long operations) get this fraction of the bounds, on top. */
const EXPIRED_SHARE = 8;

export class TokenCache {
  readonly #lru: LRUCache<string, Entry> | undefined;
  /** allow_expired answers: their own, smaller LRU (no key prefix to build per lookup, no crowding out). */
  readonly #expired: LRUCache<string, Entry> | undefined;
  readonly #ttlMs: number;
  readonly #staleMs: number;
  readonly #now: () => number;
  readonly #hashPrefix: string;
  readonly #negative: LRUCache<string, true> | undefined;

  constructor(options: TokenCacheOptions) {
    this.#ttlMs = Math.floor(options.ttlSeconds * 1000);
    this.#staleMs = Math.max(0, Math.floor((options.staleSeconds ?? 0) * 1000));
    this.#now = options.now;
    this.#hashPrefix = `${(options.hashKey ?? randomBytes(32)).toString('hex')}:`;
    const enabled = this.#ttlMs > 0 && options.maxEntries > 0;
    const lru = (maxEntries: number, maxBytes: number): LRUCache<string, Entry> =>
      new LRUCache<string, Entry>({
        max: maxEntries,
        maxSize: maxBytes,
        sizeCalculation: (entry) => entry.info.sizeBytes + ENTRY_OVERHEAD_BYTES,
        ttl: this.#ttlMs + this.#staleMs,
        perf: { now: options.now },
        // Read the clock on every check: a cached "now" would let an entry outlive its TTL by a tick.
        ttlResolution: 0,
        // TTLs are checked on read; an interval timer would keep the process alive for nothing.
        ttlAutopurge: false,
      });
    this.#lru = enabled ? lru(options.maxEntries, options.maxBytes) : undefined;
    this.#expired = enabled
      ? lru(
          Math.max(1, Math.floor(options.maxEntries / EXPIRED_SHARE)),
          Math.max(4096, Math.floor(options.maxBytes / EXPIRED_SHARE)),
        )
      : undefined;
    const negativeMs = Math.floor((options.negativeSeconds ?? 0) * 1000);
    this.#negative =
      negativeMs > 0
        ? new LRUCache<string, true>({
            max: options.negativeMaxEntries ?? 10_000,
            ttl: negativeMs,
            perf: { now: options.now },
            ttlResolution: 0,
            ttlAutopurge: false,
          })
        : undefined;
  }

  /** The keyed hash standing for a token everywhere past extraction (cache key, logs, coalescing). */
  keyOf(token: string): string {
    // SHA-256 of a random per-process secret followed by the token: a keyed hash, and one-shot `hash` costs a
    // quarter of an HMAC object per request.
    return hash('sha256', this.#hashPrefix + token, 'base64url');
  }

  get(key: string, mode: CacheMode): TokenInfo | undefined {
    return this.lookup(key, mode)?.info;
  }

  /** The fresh entry with its validation time (for background re-validation). */
  lookup(key: string, mode: CacheMode): CachedIdentity | undefined {
    const entry = this.#entry(key, mode);
    return entry !== undefined && this.#now() <= entry.freshUntil ? entry : undefined;
  }

  /** An entry past its cache time but inside the stale-if-error window (only for when Keystone is down). */
  getStale(key: string, mode: CacheMode): TokenInfo | undefined {
    return this.#staleMs > 0 ? this.#entry(key, mode)?.info : undefined;
  }

  #entry(key: string, mode: CacheMode): Entry | undefined {
    const normal = this.#lru?.get(key);
    // An identity validated without allow_expired is good for either kind of request; the reverse is not.
    if (normal !== undefined || mode === 'normal') return normal;
    return this.#expired?.get(key);
  }

  set(key: string, info: TokenInfo, mode: CacheMode, fill: CacheFill = {}): void {
    const lru = this.#lru;
    if (lru === undefined) return;
    const now = this.#now();
    const ttl = Math.min(this.#ttlMs, fill.maxFreshMs ?? this.#ttlMs);
    if (ttl <= 0) return;
    const sharedKey = fill.sharedKey;
    const validatedAtMs = Math.min(now, fill.validatedAtMs ?? now);
    if (mode === 'allow_expired') {
      this.#expired?.set(key, { info, freshUntil: now + ttl, validatedAtMs, sharedKey }, { ttl });
      return;
    }
    const untilExpiry = info.expiresAtMs - now;
    const fresh = Math.min(ttl, untilExpiry);
    if (fresh <= 0) return;
    // Never kept past the token's own expiry, stale or not.
    lru.set(
      key,
      { info, freshUntil: now + fresh, validatedAtMs, sharedKey },
      { ttl: Math.min(fresh + this.#staleMs, untilExpiry) },
    );
  }

  delete(key: string): void {
    this.#lru?.delete(key);
    this.#expired?.delete(key);
  }

  /** Keystone called this token invalid (checked without allow_expired): remember it for a few seconds. */
  setInvalid(key: string): void {
    this.#negative?.set(key, true);
  }

  /** Only for requests without allow_expired: an expired token may still be good for those (bug 1987355). */
  isKnownInvalid(key: string): boolean {
    return this.#negative?.get(key) === true;
  }

  /**
   * Drops every identity `revoked` selects (a revocation event arrived) and returns the memcached keys of
   * the dropped entries, so the shared tier forgets them as well.
   */
  sweep(revoked: (info: TokenInfo) => boolean): { evicted: number; sharedKeys: string[] } {
    let evicted = 0;
    const sharedKeys = new Set<string>();
    for (const lru of [this.#lru, this.#expired]) {
      if (lru === undefined) continue;
      const doomed: string[] = [];
      // Collected first: deleting while iterating would skip entries. Entries inside their stale-if-error
      // window are still live to lru-cache, so they are visited too.
      lru.forEach((entry, key) => {
        if (!revoked(entry.info)) return;
        doomed.push(key);
        if (entry.sharedKey !== undefined) sharedKeys.add(entry.sharedKey);
      });
      for (const key of doomed) lru.delete(key);
      evicted += doomed.length;
    }
    return { evicted, sharedKeys: [...sharedKeys] };
  }

  clear(): void {
    this.#lru?.clear();
    this.#expired?.clear();
    this.#negative?.clear();
  }

  get size(): number {
    return (this.#lru?.size ?? 0) + (this.#expired?.size ?? 0);
  }

  get bytes(): number {
    return (this.#lru?.calculatedSize ?? 0) + (this.#expired?.calculatedSize ?? 0);
  }
}
