/**
 * A cluster worker's view of the host's identity state. The state itself (cache, in-flight validations, negative
 * and stale entries, the Keystone client and its breaker, revocation polling) lives once, in the primary. The
 * worker keeps a small L1 of identities it has served, so a cache hit never leaves the process; on an L1 miss it
 * asks the primary, which answers from the host's cache or validates once for the whole host.
 *
 * The L1 copy of an identity lives no longer than the primary's entry (the primary says until when), is dropped
 * when the primary re-validates it or finds it invalid (`forget`), and is checked against every new revocation
 * event the primary receives (`revoked`). Answers and pushes share one ordered channel, so a revocation can never
 * overtake an answer given before it.
 */
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { TokenCheck } from '../auth/decision.js';
import { KeystoneUnavailableError } from '../errors.js';
import type { TokenInfo } from '../keystone/token-info.js';
import type { AuthObserver, HostLookupOutcome, Logger } from '../observability/observer.js';
import type { IdentityState, StateStats } from './identity-state.js';
import { fromWire, type HostMessage, isHostMessage, type StateLink } from './protocol.js';
import { RevocationIndex } from './revocation.js';
import { type CacheMode, TokenCache } from './token-cache.js';

export interface WorkerStateOptions {
  readonly link: StateLink;
  /** token_cache_time: an L1 copy never outlives it (nor the primary's entry, nor the token). */
  readonly ttlSeconds: number;
  /** Identities the L1 holds at most; 0: none (every lookup asks the primary). */
  readonly maxEntries: number;
  readonly maxBytes: number;
  /** token_revalidate_seconds in ms: an L1 copy older than this makes the primary re-validate (0: never). */
  readonly revalidateAfterMs: number;
  /** How long to wait for the primary's answer before answering 503 (its own validation budget, and more). */
  readonly answerTimeoutMs: number;
  /** Wall clock in ms. */
  readonly now: () => number;
  readonly observer: AuthObserver;
  readonly logger: Logger;
}

interface Waiting {
  readonly resolve: (message: HostMessage | undefined) => void;
  readonly timer: NodeJS.Timeout;
}

const HANDSHAKE_TIMEOUT_MS = 10_000;

export class WorkerIdentityState implements IdentityState {
  readonly #options: WorkerStateOptions;
  readonly #l1: TokenCache;
  readonly #waiting = new Map<number, Waiting>();
  /** One question per token (and mode) at a time, however many requests wait for it. */
  readonly #flights = new Map<string, Promise<TokenCheck>>();
  /** L1 copies already sent to the primary for re-validation (one nudge per copy). */
  readonly #nudged: LRUCache<string, true>;
  readonly #detach: () => void;
  #nextId = 1;
  #closed = false;

  /** Asks the primary for the host's cache hash key (L1 keys must equal the primary's), then listens. */
  static async connect(options: WorkerStateOptions): Promise<WorkerIdentityState> {
    const hashKey = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        stop();
        reject(new Error('the primary did not send the identity state key'));
      }, HANDSHAKE_TIMEOUT_MS);
      const stop = options.link.onMessage((message) => {
        if (!isHostMessage(message, 'init')) return;
        clearTimeout(timer);
        stop();
        resolve(Buffer.from(message.hashKey, 'hex'));
      });
      if (!options.link.send({ kap: 'hello' })) {
        clearTimeout(timer);
        stop();
        reject(new Error('no channel to the primary'));
      }
    });
    return new WorkerIdentityState(options, hashKey);
  }

  private constructor(options: WorkerStateOptions, hashKey: Buffer) {
    this.#options = options;
    this.#l1 = new TokenCache({
      ttlSeconds: options.ttlSeconds,
      maxEntries: options.maxEntries,
      maxBytes: options.maxBytes,
      now: options.now,
      hashKey,
    });
    this.#nudged = new LRUCache({ max: Math.max(1, options.maxEntries) });
    this.#detach = options.link.onMessage((message) => this.#onMessage(message));
  }

  checkCached(token: string): TokenInfo | undefined {
    const key = this.#l1.keyOf(token);
    const entry = this.#l1.lookup(key, 'normal');
    if (entry === undefined || entry.info.expiresAtMs < this.#options.now()) return undefined;
    this.#served(token, key, 'normal', entry.validatedAtMs);
    return entry.info;
  }

  async check(token: string, allowExpired: boolean): Promise<TokenCheck> {
    if (token.length === 0) return { status: 'invalid', reason: 'missing' };
    const key = this.#l1.keyOf(token);
    const mode: CacheMode = allowExpired ? 'allow_expired' : 'normal';
    const entry = this.#l1.lookup(key, mode);
    // An expired copy is not answered here: the primary says expired (or, for allow_expired, what Keystone says).
    if (entry !== undefined && (allowExpired || entry.info.expiresAtMs >= this.#options.now())) {
      this.#served(token, key, mode, entry.validatedAtMs);
      return { status: 'valid', info: entry.info, source: 'cache' };
    }
    const flightKey = `${mode}:${key}`;
    let flight = this.#flights.get(flightKey);
    if (flight === undefined) {
      flight = this.#ask(token, key, mode).finally(() => this.#flights.delete(flightKey));
      this.#flights.set(flightKey, flight);
    }
    return flight;
  }

  async ready(): Promise<boolean> {
    const id = this.#nextId++;
    const answer = await this.#request({ kap: 'ready', id }, id, this.#options.answerTimeoutMs);
    return isHostMessage(answer, 'ready') && answer.ready;
  }

  /** The primary obtains the service token; a worker has nothing to warm up. */
  async warmUp(): Promise<void> {}

  stats(): StateStats {
    return { entries: this.#l1.size, bytes: this.#l1.bytes, inflight: this.#flights.size };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#detach();
    for (const [id, waiting] of this.#waiting) {
      clearTimeout(waiting.timer);
      this.#waiting.delete(id);
      waiting.resolve(undefined);
    }
    this.#l1.clear();
  }

  /** An L1 hit: counted, and old enough (token_revalidate_seconds) to be sent once to the primary to re-check. */
  #served(token: string, key: string, mode: CacheMode, validatedAtMs: number): void {
    this.#options.observer.cache?.('hit');
    const after = this.#options.revalidateAfterMs;
    if (after <= 0 || this.#options.now() - validatedAtMs < after) return;
    const flightKey = `${mode}:${key}`;
    if (this.#nudged.has(flightKey) || this.#flights.has(flightKey)) return;
    this.#nudged.set(flightKey, true);
    // The primary's answer is the identity as it stands; its re-validation, when done, comes back as `forget`.
    const nudge = this.#ask(token, key, mode).finally(() => this.#flights.delete(flightKey));
    this.#flights.set(flightKey, nudge);
  }

  async #ask(token: string, key: string, mode: CacheMode): Promise<TokenCheck> {
    const started = performance.now();
    const id = this.#nextId++;
    const allowExpired = mode === 'allow_expired';
    const answer = await this.#request(
      { kap: 'check', id, token, allowExpired },
      id,
      this.#options.answerTimeoutMs,
    );
    if (!isHostMessage(answer, 'answer')) {
      this.#observe('unanswered', started);
      return {
        status: 'unavailable',
        error: new KeystoneUnavailableError('timeout', 'the cluster primary did not answer in time'),
      };
    }
    const { check, freshUntilMs, validatedAtMs } = answer;
    this.#observe(check.status, started);
    if (check.status === 'valid' && freshUntilMs !== undefined) {
      const left = freshUntilMs - this.#options.now();
      if (left > 0) this.#l1.set(key, check.info, mode, { maxFreshMs: left, validatedAtMs });
    }
    return fromWire(check);
  }

  #request(message: object, id: number, timeoutMs: number): Promise<HostMessage | undefined> {
    if (this.#closed) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        resolve(undefined);
      }, timeoutMs);
      timer.unref();
      this.#waiting.set(id, { resolve, timer });
      if (!this.#options.link.send(message)) {
        clearTimeout(timer);
        this.#waiting.delete(id);
        resolve(undefined);
      }
    });
  }

  #onMessage(message: unknown): void {
    if (typeof message !== 'object' || message === null) return;
    const m = message as HostMessage;
    switch (m.kap) {
      case 'answer':
      case 'ready': {
        const waiting = this.#waiting.get(m.id);
        if (waiting === undefined) return;
        this.#waiting.delete(m.id);
        clearTimeout(waiting.timer);
        waiting.resolve(m);
        return;
      }
      case 'forget':
        for (const key of m.keys) {
          this.#l1.delete(key);
          this.#nudged.delete(`normal:${key}`);
          this.#nudged.delete(`allow_expired:${key}`);
        }
        return;
      case 'revoked': {
        const index = new RevocationIndex();
        index.add(m.events);
        const { evicted } = this.#l1.sweep((info) => index.isRevoked(info));
        if (evicted > 0) this.#options.logger.debug({ evicted }, 'revoked identities dropped from the L1');
        return;
      }
      default:
        return;
    }
  }

  #observe(outcome: HostLookupOutcome, started: number): void {
    this.#options.observer.hostLookup?.(outcome, (performance.now() - started) / 1000);
  }
}
