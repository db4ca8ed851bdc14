/**
 * A circuit breaker around Keystone: after `failureThreshold` consecutive failures (timeouts, refused
 * connections, 5xx, rejected service credentials) it opens, and validations of uncached tokens fail at once for
 * `openMs` instead of each waiting out its own timeout. Then one request is let through as a probe (half-open):
 * success closes the breaker, failure opens it again.
 */
import { KeystoneUnavailableError } from '../errors.js';
import type { CircuitState } from '../observability/observer.js';

export type { CircuitState };

export interface BreakerOptions {
  /** Consecutive failures that open the breaker; 0 disables it. */
  readonly failureThreshold: number;
  readonly openMs: number;
  /** Monotonic clock in ms. */
  readonly now: () => number;
  readonly onChange?: (state: CircuitState) => void;
}

export type Admission =
  | { readonly allowed: true; readonly probe: boolean }
  | { readonly allowed: false; readonly retryAfterMs: number };

export class CircuitBreaker {
  readonly #options: BreakerOptions;
  #state: CircuitState = 'closed';
  #failures = 0;
  #openedAt = 0;
  #probing = false;

  constructor(options: BreakerOptions) {
    this.#options = options;
  }

  get state(): CircuitState {
    return this.#state;
  }

  admit(): Admission {
    if (this.#options.failureThreshold <= 0 || this.#state === 'closed')
      return { allowed: true, probe: false };
    const waited = this.#options.now() - this.#openedAt;
    if (this.#state === 'open' && waited >= this.#options.openMs) this.#set('half_open');
    if (this.#state === 'half_open' && !this.#probing) {
      this.#probing = true;
      return { allowed: true, probe: true };
    }
    // While the probe is out, the others wait at most one more open period.
    return {
      allowed: false,
      retryAfterMs: Math.max(
        this.#options.openMs - waited,
        this.#state === 'half_open' ? this.#options.openMs : 0,
      ),
    };
  }

  success(probe: boolean): void {
    if (probe) this.#probing = false;
    this.#failures = 0;
    if (this.#state !== 'closed') this.#set('closed');
  }

  failure(probe: boolean): void {
    if (probe) this.#probing = false;
    this.#failures++;
    if (
      this.#state === 'half_open' ||
      (this.#state === 'closed' && this.#failures >= this.#options.failureThreshold)
    ) {
      if (this.#options.failureThreshold <= 0) return;
      this.#openedAt = this.#options.now();
      this.#set('open');
    }
  }

  /**
   * One call through the breaker: refused at once while open (503 with Retry-After), counted as a failure only
   * when the service was unavailable; any other error (an invalid token) proves the service answered.
   */
  async guard<T>(call: () => Promise<T>, openMessage: string): Promise<T> {
    const admission = this.admit();
    if (!admission.allowed) {
      throw new KeystoneUnavailableError('circuit_open', openMessage, {
        retryAfterSeconds: admission.retryAfterMs / 1000,
      });
    }
    try {
      const answer = await call();
      this.success(admission.probe);
      return answer;
    } catch (error) {
      if (error instanceof KeystoneUnavailableError) this.failure(admission.probe);
      else this.success(admission.probe);
      throw error;
    }
  }

  #set(state: CircuitState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#options.onChange?.(state);
  }
}
