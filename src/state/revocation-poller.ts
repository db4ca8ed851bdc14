/**
 * Closes the cache's revocation window (OSSN-0056) from token_cache_time to about one poll interval: polls
 * Keystone's revocation events, keeps them in an index, and has every identity they match dropped from both
 * cache tiers. When Keystone refuses the API (403) or no longer has it (404), it degrades to TTL-only
 * with a warning and a metric, and asks again now and then.
 */
import type { RevocationFeedAnswer } from '../keystone/client.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import { parseRevocationEvents, type RevocationEvent, type RevocationIndex } from './revocation.js';

export type RevocationPollOutcome = 'ok' | 'error' | 'unsupported';

export interface RevocationPollerOptions {
  readonly fetchEvents: (since: string | undefined) => Promise<RevocationFeedAnswer>;
  readonly index: RevocationIndex;
  readonly intervalMs: number;
  /**
   * How long an event is kept after it was revoked: past it, every cache entry written before the event has
   * expired (token_cache_time, the stale-if-error window and the validation time budget, plus a margin).
   */
  readonly retentionMs: number;
  /** Interval while the API is refused or missing. */
  readonly unsupportedRetryMs: number;
  /** Wall clock in ms. */
  readonly now: () => number;
  /** These events are new (and indexed): drop what they match from the caches; returns how many identities went. */
  readonly onNewEvents: (events: readonly RevocationEvent[]) => number;
  readonly logger: Logger;
  readonly observer: AuthObserver;
}

/** Keystone compares `since` strictly and at one-second precision: ask again from a second before. */
const SINCE_OVERLAP_MS = 1_000;

export class RevocationPoller {
  readonly #options: RevocationPollerOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<RevocationPollOutcome> | undefined;
  #stopped = false;
  #state: 'starting' | 'active' | 'degraded' | 'failing' = 'starting';
  #lastSuccessMs: number | undefined;

  constructor(options: RevocationPollerOptions) {
    this.#options = options;
  }

  /** First poll now, then one per interval (the timer never keeps the process alive). */
  start(): void {
    if (this.#timer !== undefined || this.#stopped) return;
    this.#schedule(0);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** `active`: events are being applied; `degraded`: Keystone refuses the API; `failing`: polls fail. */
  get state(): 'starting' | 'active' | 'degraded' | 'failing' {
    return this.#state;
  }

  /** Wall-clock ms of the last successful poll. */
  get lastSuccessMs(): number | undefined {
    return this.#lastSuccessMs;
  }

  /** One poll (concurrent callers share it). */
  pollNow(): Promise<RevocationPollOutcome> {
    this.#running ??= this.#poll().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.pollNow().then((outcome) => {
        this.#schedule(
          outcome === 'unsupported' ? this.#options.unsupportedRetryMs : this.#options.intervalMs,
        );
      });
    }, delayMs);
    this.#timer.unref();
  }

  #since(): string {
    const { index, now, retentionMs } = this.#options;
    const newest = index.newestRevokedAtMs;
    // The first poll only needs what can still be in a cache; later polls overlap the newest event seen.
    const from = newest === undefined ? now() - retentionMs : newest - SINCE_OVERLAP_MS;
    return new Date(Math.max(0, from)).toISOString();
  }

  async #poll(): Promise<RevocationPollOutcome> {
    const { fetchEvents, index, now, retentionMs, logger, observer } = this.#options;
    let answer: RevocationFeedAnswer;
    try {
      answer = await fetchEvents(this.#since());
    } catch (error) {
      if (this.#state !== 'failing') {
        logger.warn(
          { reason: (error as { reason?: string }).reason ?? 'error' },
          'revocation events unavailable: cached identities stay until their cache time',
        );
      }
      this.#state = 'failing';
      observer.revocationPoll?.('error', 0, 0);
      return 'error';
    }
    if (answer.kind === 'unsupported') {
      if (this.#state !== 'degraded') {
        logger.warn(
          { status: answer.status },
          'Keystone refuses revocation events (OS-REVOKE): revoked tokens stay valid until token_cache_time; give the service user the service role or turn polling off',
        );
      }
      this.#state = 'degraded';
      observer.revocationPoll?.('unsupported', 0, 0);
      return 'unsupported';
    }
    const { events, problems } = parseRevocationEvents(answer.body);
    if (problems.length > 0) logger.warn({ problems: problems.slice(0, 5) }, 'revocation events skipped');
    const added = index.add(events);
    const evicted = added.length > 0 ? this.#options.onNewEvents(added) : 0;
    index.prune(now() - retentionMs);
    if (this.#state !== 'active') {
      logger.info({ events: index.size }, 'revocation events are being applied');
    }
    if (evicted > 0) {
      logger.info({ newEvents: added.length, evicted }, 'revoked identities dropped from the cache');
    }
    this.#state = 'active';
    this.#lastSuccessMs = now();
    observer.revocationPoll?.('ok', added.length, evicted);
    return 'ok';
  }
}
