/**
 * The identity state of a host, held in this process: the token cache (with its negative and stale entries),
 * the memcached tier, validations in flight, the Keystone client and its breaker, and revocation polling. One per
 * process with `workers: 1` and for the middleware; the primary's with `workers: N`, answering its workers.
 */
import type { TokenCheck } from '../auth/decision.js';
import type { TokenValidator } from '../keystone/client.js';
import type { TokenInfo } from '../keystone/token-info.js';
import type { IdentityState, StateStats } from './identity-state.js';
import type { RevocationEvent } from './revocation.js';
import type { RevocationPoller } from './revocation-poller.js';
import type { SharedTokenCache } from './shared-cache.js';
import type { CachedIdentity, TokenCache } from './token-cache.js';
import type { TokenChecker } from './token-checker.js';

/** What copies of the state held elsewhere (the workers' L1s) must learn to stay true. */
export interface StateChangeListener {
  /** These identities were dropped or replaced (re-validated, found invalid): copies must go. */
  forget?(keys: readonly string[]): void;
  /** New revocation events: copies must be checked against them. */
  revoked?(events: readonly RevocationEvent[]): void;
}

/** Fans state changes out to whoever holds copies; nobody listens in a single process. */
export class StateChanges {
  readonly #listeners = new Set<StateChangeListener>();

  subscribe(listener: StateChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  forget(keys: readonly string[]): void {
    if (keys.length === 0) return;
    for (const listener of this.#listeners) listener.forget?.(keys);
  }

  revoked(events: readonly RevocationEvent[]): void {
    if (events.length === 0) return;
    for (const listener of this.#listeners) listener.revoked?.(events);
  }
}

export interface HostStateParts {
  readonly validator: TokenValidator;
  readonly cache: TokenCache;
  readonly shared: SharedTokenCache | undefined;
  readonly checker: TokenChecker;
  readonly revocation: RevocationPoller | undefined;
  readonly changes: StateChanges;
}

export class HostIdentityState implements IdentityState {
  readonly #parts: HostStateParts;

  constructor(parts: HostStateParts) {
    this.#parts = parts;
  }

  /** Revocation polling (OS-REVOKE); `undefined` when off or the validator cannot list events. */
  get revocation(): RevocationPoller | undefined {
    return this.#parts.revocation;
  }

  /** The keyed hash standing for a token in the cache, the logs and the workers' L1s. */
  keyOf(token: string): string {
    return this.#parts.cache.keyOf(token);
  }

  checkCached(token: string): TokenInfo | undefined {
    return this.#parts.checker.checkCached(token);
  }

  check(token: string, allowExpired: boolean): Promise<TokenCheck> {
    return this.#parts.checker.check(token, allowExpired);
  }

  /** The cache entry behind a valid answer, if it is cached: how long a worker may keep its copy. */
  entryOf(key: string, allowExpired: boolean): CachedIdentity | undefined {
    return this.#parts.cache.lookup(key, allowExpired ? 'allow_expired' : 'normal');
  }

  subscribe(listener: StateChangeListener): () => void {
    return this.#parts.changes.subscribe(listener);
  }

  async ready(): Promise<boolean> {
    const { validator } = this.#parts;
    return validator.ready === undefined ? true : validator.ready();
  }

  async warmUp(): Promise<void> {
    await this.#parts.validator.warmUp?.();
  }

  stats(): StateStats {
    const { cache, checker } = this.#parts;
    return { entries: cache.size, bytes: cache.bytes, inflight: checker.inflight };
  }

  async close(): Promise<void> {
    const { revocation, cache, validator, shared } = this.#parts;
    revocation?.stop();
    cache.clear();
    await Promise.all([validator.close?.(), shared?.close()]);
  }
}
