/**
 * One token → valid / invalid / unavailable, through the cache tiers: this process's LRU, then memcached
 * (shared by replicas), then Keystone. Concurrent checks of one token share one lookup (single flight,
 * detached from any one request); Keystone errors are never cached; known revocations are never served.
 */
import type { TokenCheck, TokenSource } from '../auth/decision.js';
import { KeystoneUnavailableError } from '../errors.js';
import type { TokenValidator } from '../keystone/client.js';
import { MalformedTokenBodyError, parseTokenBody, type TokenInfo } from '../keystone/token-info.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import type { SharedTokenCache } from './shared-cache.js';
import type { CachedIdentity, CacheMode, TokenCache } from './token-cache.js';

type Fetched =
  | { readonly status: 'valid'; readonly info: TokenInfo; readonly source: Exclude<TokenSource, 'cache'> }
  | Exclude<TokenCheck, { status: 'valid' }>;

export interface TokenCheckerOptions {
  readonly validator: TokenValidator;
  readonly cache: TokenCache;
  /** Second tier (memcached); absent: this process's cache only. */
  readonly shared?: SharedTokenCache | undefined;
  /** keystonemiddleware's token_cache_time, in ms: also the most an identity lives across both tiers. */
  readonly cacheTimeMs: number;
  /**
   * An identity served from the cache longer than this (ms) since Keystone confirmed it is re-validated in
   * the background, the request not held: catches what makes no revocation event (a role unassigned).
   * 0: never.
   */
  readonly revalidateAfterMs?: number | undefined;
  /** Known revocation events (OS-REVOKE polling); absent: no polling. */
  readonly isRevoked?: ((info: TokenInfo) => boolean) | undefined;
  readonly renderCatalog: boolean;
  /**
   * An identity was re-validated, or found invalid or revoked: copies of it held elsewhere (a cluster worker's
   * L1) must be dropped, and asked for again.
   */
  readonly onForget?: ((key: string) => void) | undefined;
  /** Wall clock in ms. */
  readonly now: () => number;
  readonly observer: AuthObserver;
  readonly logger: Logger;
}

export class TokenChecker {
  readonly #options: TokenCheckerOptions;
  readonly #inflight = new Map<string, Promise<Fetched>>();

  constructor(options: TokenCheckerOptions) {
    this.#options = options;
  }

  /** Number of lookups (memcached or Keystone) under way (for metrics). */
  get inflight(): number {
    return this.#inflight.size;
  }

  /**
   * A cache hit answered synchronously (no promise, no microtask), for a request without allow_expired;
   * `undefined` for anything else (miss, expired, known invalid), which `check` then handles in full.
   */
  checkCached(token: string): TokenInfo | undefined {
    const { cache } = this.#options;
    const key = cache.keyOf(token);
    const cached = cache.lookup(key, 'normal');
    if (cached === undefined || this.#expired(cached.info)) return undefined;
    return this.#served(token, key, 'normal', cached);
  }

  async check(token: string, allowExpired: boolean): Promise<TokenCheck> {
    if (token.length === 0) return { status: 'invalid', reason: 'missing' };
    const { cache, observer } = this.#options;
    const key = cache.keyOf(token);
    const mode: CacheMode = allowExpired ? 'allow_expired' : 'normal';
    const cached = cache.lookup(key, mode);
    if (cached !== undefined) {
      const info = cached.info;
      if (!allowExpired && this.#expired(info)) {
        observer.cache?.('expired');
        cache.delete(key);
        return { status: 'invalid', reason: 'expired' };
      }
      return { status: 'valid', info: this.#served(token, key, mode, cached), source: 'cache' };
    }
    if (!allowExpired && cache.isKnownInvalid(key)) {
      observer.cache?.('negative_hit');
      return { status: 'invalid', reason: 'not_found' };
    }
    const flightKey = `${mode}:${key}`;
    let flight = this.#inflight.get(flightKey);
    if (flight === undefined) {
      observer.cache?.('miss');
      flight = this.#fetch(token, key, mode).finally(() => this.#inflight.delete(flightKey));
      this.#inflight.set(flightKey, flight);
    } else {
      observer.cache?.('coalesced');
    }
    const result = await flight;
    if (result.status !== 'valid') return result;
    // Keystone does not return expired tokens without allow_expired, but clocks differ: re-check like ksm.
    if (!allowExpired && this.#expired(result.info)) return { status: 'invalid', reason: 'expired' };
    return result;
  }

  /** A cache hit being served: counted, and sent for background re-validation when it is old enough. */
  #served(token: string, key: string, mode: CacheMode, cached: CachedIdentity): TokenInfo {
    const revalidateAfterMs = this.#options.revalidateAfterMs ?? 0;
    if (revalidateAfterMs > 0 && this.#options.now() - cached.validatedAtMs >= revalidateAfterMs) {
      this.#revalidate(token, key, mode);
    }
    this.#options.observer.cache?.('hit');
    return cached.info;
  }

  /** One background validation per token at a time; its answer replaces or removes the cached identity. */
  #revalidate(token: string, key: string, mode: CacheMode): void {
    const flightKey = `${mode}:${key}`;
    if (this.#inflight.has(flightKey)) return;
    this.#options.observer.cache?.('revalidate');
    const flight = this.#fetch(token, key, mode, true).finally(() => {
      this.#inflight.delete(flightKey);
      this.#options.onForget?.(key);
    });
    this.#inflight.set(flightKey, flight);
  }

  #expired(info: TokenInfo): boolean {
    return info.expiresAtMs < this.#options.now();
  }

  async #fetch(token: string, key: string, mode: CacheMode, revalidating = false): Promise<Fetched> {
    const { validator, cache, shared, renderCatalog, logger, isRevoked } = this.#options;
    const fingerprint = key.slice(0, 12);
    const sharedKeys = shared?.keysFor(token);
    // A re-validation asks Keystone: another replica's entry is no newer than ours.
    if (shared !== undefined && sharedKeys !== undefined && !revalidating) {
      const fromShared = await this.#fromShared(shared, sharedKeys, key, mode);
      if (fromShared !== undefined) return fromShared;
    }
    try {
      const answer = await validator.validate(token, { allowExpired: mode === 'allow_expired' });
      if (answer.kind === 'invalid') {
        // Known to be invalid (revoked, expired…): never served as stale, nor by another replica.
        cache.delete(key);
        if (sharedKeys !== undefined) shared?.delete(sharedKeys.cacheKey);
        if (mode === 'normal') cache.setInvalid(key);
        this.#options.onForget?.(key);
        logger.info({ tokenHash: fingerprint }, 'Keystone does not recognise the token');
        return { status: 'invalid', reason: 'not_found' };
      }
      const info = parseTokenBody(answer.body, { renderCatalog });
      // A validation that was under way when its token was revoked may come back valid.
      if (isRevoked?.(info) === true) {
        this.#options.observer.cache?.('revoked');
        cache.delete(key);
        this.#options.onForget?.(key);
        return { status: 'invalid', reason: 'revoked' };
      }
      cache.set(key, info, mode, { sharedKey: sharedKeys?.cacheKey });
      // Only answers checked without allow_expired go to the shared tier: another replica may serve them to
      // any request (an expired identity is re-checked on every read there too).
      if (shared !== undefined && sharedKeys !== undefined && mode === 'normal') {
        const ttlMs = Math.min(this.#options.cacheTimeMs, info.expiresAtMs - this.#options.now());
        if (ttlMs > 0) shared.set(sharedKeys, answer.body, ttlMs / 1000);
      }
      return { status: 'valid', info, source: 'keystone' };
    } catch (error) {
      if (error instanceof MalformedTokenBodyError) {
        logger.warn({ tokenHash: fingerprint, problem: error.message }, 'invalid token contents');
        return { status: 'invalid', reason: error.reason };
      }
      const unavailable =
        error instanceof KeystoneUnavailableError
          ? error
          : new KeystoneUnavailableError('bad_response', 'token validation failed unexpectedly', {
              cause: error,
            });
      const stale = cache.getStale(key, mode);
      if (stale !== undefined && (mode === 'allow_expired' || !this.#expired(stale))) {
        this.#options.observer.cache?.('stale');
        logger.warn(
          { tokenHash: fingerprint, reason: unavailable.reason },
          'Keystone unavailable: serving a stale identity',
        );
        return { status: 'valid', info: stale, source: 'stale' };
      }
      if (unavailable.reason !== 'circuit_open') {
        logger.error(
          { tokenHash: fingerprint, reason: unavailable.reason, keystoneStatus: unavailable.keystoneStatus },
          'unable to validate token: Keystone unavailable',
        );
      }
      return { status: 'unavailable', error: unavailable };
    }
  }

  /** A memcached entry usable for this request, or `undefined` to ask Keystone. */
  async #fromShared(
    shared: SharedTokenCache,
    sharedKeys: ReturnType<SharedTokenCache['keysFor']>,
    key: string,
    mode: CacheMode,
  ): Promise<Fetched | undefined> {
    const { cache, renderCatalog, observer, isRevoked, now } = this.#options;
    const entry = await shared.get(sharedKeys);
    if (entry === undefined) return undefined;
    let info: TokenInfo;
    try {
      info = parseTokenBody(entry.body, { renderCatalog });
    } catch {
      observer.cache?.('shared_rejected');
      shared.delete(sharedKeys.cacheKey);
      return undefined;
    }
    if (isRevoked?.(info) === true) {
      // Written before the revocation event by some replica: forget it everywhere and ask Keystone.
      observer.cache?.('revoked');
      shared.delete(sharedKeys.cacheKey);
      return undefined;
    }
    if (mode === 'normal' && this.#expired(info)) return { status: 'invalid', reason: 'expired' };
    // An entry lives token_cache_time in all, however many tiers it passes through.
    const left =
      entry.cachedAtMs === undefined
        ? this.#options.cacheTimeMs
        : this.#options.cacheTimeMs - (now() - entry.cachedAtMs);
    if (left <= 0) return undefined;
    cache.set(key, info, mode, {
      sharedKey: sharedKeys.cacheKey,
      maxFreshMs: left,
      validatedAtMs: entry.cachedAtMs,
    });
    observer.cache?.('shared_hit');
    return { status: 'valid', info, source: 'shared' };
  }
}
