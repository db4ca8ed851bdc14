/**
 * One token → valid / invalid / unavailable, through the cache. Concurrent checks of one token share one
 * Keystone call (single flight, detached from any one request); Keystone errors are never cached.
 */
import { type InvalidTokenReason, KeystoneUnavailableError } from '../errors.js';
import type { TokenValidator } from '../keystone/client.js';
import { MalformedTokenBodyError, parseTokenBody, type TokenInfo } from '../keystone/token-info.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import type { CacheMode, TokenCache } from './token-cache.js';

export type TokenCheck =
  | { readonly status: 'valid'; readonly info: TokenInfo; readonly source: 'cache' | 'keystone' | 'stale' }
  | { readonly status: 'invalid'; readonly reason: InvalidTokenReason }
  | { readonly status: 'unavailable'; readonly error: KeystoneUnavailableError };

type Fetched =
  | { readonly status: 'valid'; readonly info: TokenInfo; readonly stale?: true }
  | Exclude<TokenCheck, { status: 'valid' }>;

export interface TokenCheckerOptions {
  readonly validator: TokenValidator;
  readonly cache: TokenCache;
  readonly renderCatalog: boolean;
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

  /** Number of Keystone validations under way (for metrics). */
  get inflight(): number {
    return this.#inflight.size;
  }

  async check(token: string, allowExpired: boolean): Promise<TokenCheck> {
    if (token.length === 0) return { status: 'invalid', reason: 'missing' };
    const { cache, observer } = this.#options;
    const key = cache.keyOf(token);
    const mode: CacheMode = allowExpired ? 'allow_expired' : 'normal';
    const cached = cache.get(key, mode);
    if (cached !== undefined) {
      if (!allowExpired && this.#expired(cached)) {
        observer.cache?.('expired');
        cache.delete(key);
        return { status: 'invalid', reason: 'expired' };
      }
      observer.cache?.('hit');
      return { status: 'valid', info: cached, source: 'cache' };
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
    return { status: 'valid', info: result.info, source: result.stale ? 'stale' : 'keystone' };
  }

  #expired(info: TokenInfo): boolean {
    return info.expiresAtMs < this.#options.now();
  }

  async #fetch(token: string, key: string, mode: CacheMode): Promise<Fetched> {
    const { validator, cache, renderCatalog, logger } = this.#options;
    const fingerprint = key.slice(0, 12);
    try {
      const answer = await validator.validate(token, { allowExpired: mode === 'allow_expired' });
      if (answer.kind === 'invalid') {
        // Known to be invalid (revoked, expired…): never served as stale either.
        cache.delete(key);
        logger.info({ tokenHash: fingerprint }, 'Keystone does not recognise the token');
        return { status: 'invalid', reason: 'not_found' };
      }
      const info = parseTokenBody(answer.body, { renderCatalog });
      cache.set(key, info, mode);
      return { status: 'valid', info };
    } catch (error) {
      if (error instanceof MalformedTokenBodyError) {
        logger.warn({ tokenHash: fingerprint, problem: error.message }, 'invalid token contents');
        return { status: 'invalid', reason: 'malformed_body' };
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
        return { status: 'valid', info: stale, stale: true };
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
}
