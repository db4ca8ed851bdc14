/**
 * Validated identities, bounded by entries and bytes (lru-cache), keyed by a keyed hash of the token so no raw
 * token is kept in memory. Only successful validations are stored. Results obtained with allow_expired live
 * in a separate key space, so they can neither be served to nor be displaced by requests without a valid
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
}

interface Entry {
  readonly info: TokenInfo;
  /** Wall-clock ms until which the entry is served normally. */
  readonly freshUntil: number;
}

export type CacheMode = 'normal' | 'allow_expired';

export class TokenCache {
  readonly #lru: LRUCache<string, Entry> | undefined;
  readonly #ttlMs: number;
  readonly #staleMs: number;
  readonly #now: () => number;
  readonly #hashPrefix: string;

  constructor(options: TokenCacheOptions) {
    this.#ttlMs = Math.floor(options.ttlSeconds * 1000);
    this.#staleMs = Math.max(0, Math.floor((options.staleSeconds ?? 0) * 1000));
    this.#now = options.now;
    this.#hashPrefix = `${(options.hashKey ?? randomBytes(32)).toString('hex')}:`;
    this.#lru =
      this.#ttlMs > 0 && options.maxEntries > 0
        ? new LRUCache<string, Entry>({
            max: options.maxEntries,
            maxSize: options.maxBytes,
            sizeCalculation: (entry) => entry.info.sizeBytes + 128,
            ttl: this.#ttlMs + this.#staleMs,
            perf: { now: options.now },
            // Read the clock on every check: a cached "now" would let an entry outlive its TTL by a tick.
            ttlResolution: 0,
            // TTLs are checked on read; an interval timer would keep the process alive for nothing.
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
    const entry = this.#entry(key, mode);
    return entry !== undefined && this.#now() <= entry.freshUntil ? entry.info : undefined;
  }

  /** An entry past its cache time but inside the stale-if-error window (only for when Keystone is down). */
  getStale(key: string, mode: CacheMode): TokenInfo | undefined {
    return this.#staleMs > 0 ? this.#entry(key, mode)?.info : undefined;
  }

  #entry(key: string, mode: CacheMode): Entry | undefined {
    const lru = this.#lru;
    if (lru === undefined) return undefined;
    const normal = lru.get(`n:${key}`);
    // An identity validated without allow_expired is good for either kind of request; the reverse is not.
    if (normal !== undefined || mode === 'normal') return normal;
    return lru.get(`e:${key}`);
  }

  set(key: string, info: TokenInfo, mode: CacheMode): void {
    const lru = this.#lru;
    if (lru === undefined) return;
    const now = this.#now();
    if (mode === 'allow_expired') {
      lru.set(`e:${key}`, { info, freshUntil: now + this.#ttlMs }, { ttl: this.#ttlMs });
      return;
    }
    const untilExpiry = info.expiresAtMs - now;
    const fresh = Math.min(this.#ttlMs, untilExpiry);
    if (fresh <= 0) return;
    // Never kept past the token's own expiry, stale or not.
    lru.set(
      `n:${key}`,
      { info, freshUntil: now + fresh },
      { ttl: Math.min(fresh + this.#staleMs, untilExpiry) },
    );
  }

  delete(key: string): void {
    this.#lru?.delete(`n:${key}`);
    this.#lru?.delete(`e:${key}`);
  }

  clear(): void {
    this.#lru?.clear();
  }

  get size(): number {
    return this.#lru?.size ?? 0;
  }

  get bytes(): number {
    return this.#lru?.calculatedSize ?? 0;
  }
}
