/**
 * Validated identities, bounded by entries and bytes (lru-cache), keyed by a keyed hash of the token so no raw
 * token is kept in memory. Only successful validations are stored. Results obtained with allow_expired live
 * in a separate key space, so they can neither be served to nor be displaced by requests without a valid
 * service token (keystonemiddleware bug 1987355).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { TokenInfo } from '../keystone/token-info.js';

export interface TokenCacheOptions {
  /** keystonemiddleware's `token_cache_time`; 0 or less disables caching. */
  readonly ttlSeconds: number;
  readonly maxEntries: number;
  readonly maxBytes: number;
  /** Wall clock in ms. */
  readonly now: () => number;
  /** HMAC key for cache keys; random per process unless given (a shared cache needs a shared one). */
  readonly hashKey?: Buffer | undefined;
}

export type CacheMode = 'normal' | 'allow_expired';

export class TokenCache {
  readonly #lru: LRUCache<string, TokenInfo> | undefined;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #hashKey: Buffer;

  constructor(options: TokenCacheOptions) {
    this.#ttlMs = Math.floor(options.ttlSeconds * 1000);
    this.#now = options.now;
    this.#hashKey = options.hashKey ?? randomBytes(32);
    this.#lru =
      this.#ttlMs > 0 && options.maxEntries > 0
        ? new LRUCache<string, TokenInfo>({
            max: options.maxEntries,
            maxSize: options.maxBytes,
            sizeCalculation: (info) => info.sizeBytes + 128,
            ttl: this.#ttlMs,
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
    return createHmac('sha256', this.#hashKey).update(token).digest('base64url');
  }

  get(key: string, mode: CacheMode): TokenInfo | undefined {
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
    if (mode === 'allow_expired') {
      lru.set(`e:${key}`, info, { ttl: this.#ttlMs });
      return;
    }
    const ttl = Math.min(this.#ttlMs, info.expiresAtMs - this.#now());
    if (ttl > 0) lru.set(`n:${key}`, info, { ttl });
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
