/**
 * The second cache tier: validation bodies in memcached, shared by every replica and readable by (and from)
 * keystonemiddleware with the same `memcache_security_strategy` and `memcache_secret_key`: same keys
 * (`tokens/…`), same protection, same value (`{"token": {…}}` as JSON). Never on the request path when it
 * misbehaves: the store answers a miss at its deadline, and a tampered or foreign entry is a miss.
 */
import type { Logger } from '../observability/observer.js';
import {
  type MemcacheEntryKeys,
  type MemcacheSecurityStrategy,
  memcacheEntryKeys,
  protectEntry,
  unprotectEntry,
} from './memcache-crypt.js';

/** What the tier needs from memcached (src/state/memcached.ts); never rejects. */
export interface SharedStore {
  get(key: string): Promise<Buffer | undefined>;
  set(key: string, value: Buffer, ttlSeconds: number): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

export interface SharedTokenCacheOptions {
  readonly store: SharedStore;
  readonly strategy: MemcacheSecurityStrategy;
  /** The strategy as configured: keystonemiddleware derives keys from that exact text. */
  readonly strategyText: string;
  readonly secretKey: string | undefined;
  /** Wall clock in ms. */
  readonly now: () => number;
  readonly logger: Logger;
  /** An entry that failed its MAC, did not decrypt or is not a validation body. */
  readonly onRejected?: () => void;
}

export interface SharedEntry {
  /** The Keystone validation body (`{"token": {…}}`). */
  readonly body: unknown;
  /** When a replica of ours stored it (ms); `undefined` for entries keystonemiddleware wrote. */
  readonly cachedAtMs: number | undefined;
}

/**
 * Our own mark inside the token object, so a reader knows how old the entry is and keeps it no longer than
 * token_cache_time in total. keystonemiddleware ignores unknown token keys. (Not a top-level key: a two-key
 * top-level dict is read by keystonemiddleware as its legacy `(data, expires)` tuple.)
 */
const CACHED_AT = 'keystone_auth_proxy_cached_at';

export class SharedTokenCache {
  readonly #options: SharedTokenCacheOptions;
  readonly #secret: Buffer | undefined;

  constructor(options: SharedTokenCacheOptions) {
    this.#options = options;
    this.#secret = options.secretKey === undefined ? undefined : Buffer.from(options.secretKey, 'utf8');
  }

  /** Per-token memcached key and protection keys (one HMAC-SHA384, or a SHA-256 for None). */
  keysFor(token: string): MemcacheEntryKeys {
    return memcacheEntryKeys(token, this.#options.strategy, this.#secret, this.#options.strategyText);
  }

  async get(keys: MemcacheEntryKeys): Promise<SharedEntry | undefined> {
    const stored = await this.#options.store.get(keys.cacheKey);
    if (stored === undefined) return undefined;
    const plain = unprotectEntry(keys, stored);
    if (plain === undefined) return this.#rejected(keys, 'memcached entry failed its integrity check');
    let body: unknown;
    try {
      body = JSON.parse(plain.toString('utf8'));
    } catch {
      return this.#rejected(keys, 'memcached entry is not JSON');
    }
    const token = (body as { token?: unknown } | null)?.token;
    if (token === null || typeof token !== 'object' || Array.isArray(token)) {
      return this.#rejected(keys, 'memcached entry is not a validation body');
    }
    const mark = (token as Record<string, unknown>)[CACHED_AT];
    return { body, cachedAtMs: typeof mark === 'number' && Number.isFinite(mark) ? mark : undefined };
  }

  /** Fire and forget: the request that validated the token does not wait for memcached. */
  set(keys: MemcacheEntryKeys, body: unknown, ttlSeconds: number): void {
    const token = (body as { token?: unknown } | null)?.token;
    if (token === null || typeof token !== 'object') return;
    const marked = { token: { ...(token as object), [CACHED_AT]: this.#options.now() } };
    const value = protectEntry(keys, Buffer.from(JSON.stringify(marked), 'utf8'));
    void this.#options.store.set(keys.cacheKey, value, Math.max(1, Math.ceil(ttlSeconds)));
  }

  delete(key: string): void {
    void this.#options.store.delete(key);
  }

  close(): Promise<void> {
    return this.#options.store.close();
  }

  #rejected(keys: MemcacheEntryKeys, message: string): undefined {
    this.#options.onRejected?.();
    // The key is derived from the token with a secret (or is its SHA-256): safe to log a prefix of it.
    this.#options.logger.warn({ cacheKey: keys.cacheKey.slice(0, 20) }, `${message}: treated as a miss`);
    // Left in place it would be read, and rejected, by every replica until it expires.
    this.delete(keys.cacheKey);
    return undefined;
  }
}
