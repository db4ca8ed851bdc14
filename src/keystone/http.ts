/**
 * One Keystone HTTP exchange inside a deadline: connection failures are retried with back-off while the budget
 * allows (keystonemiddleware's `http_request_max_retries`), nothing else is retried here, and every failure
 * becomes a KeystoneUnavailableError with a bounded reason.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import { KeystoneUnavailableError } from '../errors.js';
import type { AuthObserver, KeystoneOperation, KeystoneOutcome } from '../observability/observer.js';

export interface KeystoneResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** Parsed JSON, or undefined when the body was empty or not JSON. */
  readonly json: unknown;
}

export interface KeystoneRequest {
  readonly operation: KeystoneOperation;
  readonly method: 'GET' | 'POST';
  readonly url: URL;
  readonly headers: Record<string, string>;
  readonly body?: string;
  /** Absolute time (performance clock, ms) by which the exchange must be over. */
  readonly deadline: number;
}

export interface KeystoneHttpOptions {
  readonly dispatcher: Dispatcher;
  readonly maxConnectRetries: number;
  /** First back-off delay; it doubles per retry. */
  readonly retryDelayMs: number;
  readonly userAgent: string;
  readonly observer: AuthObserver;
  readonly now: () => number;
  /** Most retries per second across all requests, so retries never multiply load on a struggling Keystone. */
  readonly retryBudgetPerSecond: number;
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

function errorCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && current !== null && typeof current === 'object'; depth++) {
    const { code, name } = current as { code?: unknown; name?: unknown };
    if (typeof code === 'string') return code;
    if (name === 'AbortError' || name === 'TimeoutError') return 'ABORT';
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

function classify(error: unknown): { outcome: KeystoneOutcome; retryable: boolean } {
  const code = errorCode(error);
  if (code === undefined) return { outcome: 'connect_error', retryable: false };
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return { outcome: 'timeout', retryable: true };
  if (CONNECT_CODES.has(code)) return { outcome: 'connect_error', retryable: true };
  if (TIMEOUT_CODES.has(code) || code === 'ABORT' || code === 'UND_ERR_ABORTED') {
    return { outcome: 'timeout', retryable: false };
  }
  if (code.includes('CERT') || code.includes('TLS') || code.includes('SSL') || code.startsWith('ERR_SSL')) {
    return { outcome: 'tls_error', retryable: false };
  }
  return { outcome: 'connect_error', retryable: false };
}

const REASON = {
  timeout: 'timeout',
  connect_error: 'connect',
  tls_error: 'tls',
} as const;

export class KeystoneHttp {
  readonly #options: KeystoneHttpOptions;
  #retryTokens: number;
  #refilledAt: number;

  constructor(options: KeystoneHttpOptions) {
    this.#options = options;
    this.#retryTokens = options.retryBudgetPerSecond;
    this.#refilledAt = options.now();
  }

  /** Token bucket: `retryBudgetPerSecond` tokens, refilled continuously. */
  #takeRetry(): boolean {
    const rate = this.#options.retryBudgetPerSecond;
    const now = this.#options.now();
    this.#retryTokens = Math.min(rate, this.#retryTokens + ((now - this.#refilledAt) / 1000) * rate);
    this.#refilledAt = now;
    if (this.#retryTokens < 1) return false;
    this.#retryTokens -= 1;
    return true;
  }

  async send(request: KeystoneRequest): Promise<KeystoneResponse> {
    const { now, observer } = this.#options;
    let delay = this.#options.retryDelayMs;
    for (let attempt = 0; ; attempt++) {
      const started = now();
      const remaining = request.deadline - started;
      if (remaining <= 0) {
        observer.keystoneRequest?.(request.operation, 'timeout', 0);
        throw new KeystoneUnavailableError('timeout', `Keystone ${request.operation} ran out of time`);
      }
      try {
        const response = await this.#once(request, remaining);
        return response;
      } catch (error) {
        const { outcome, retryable } = classify(error);
        const elapsed = now() - started;
        observer.keystoneRequest?.(request.operation, outcome, elapsed / 1000);
        const retryAt = now() + delay;
        if (
          !retryable ||
          attempt >= this.#options.maxConnectRetries ||
          retryAt >= request.deadline ||
          !this.#takeRetry()
        ) {
          const reason = REASON[outcome as keyof typeof REASON] ?? 'connect';
          throw new KeystoneUnavailableError(reason, `Keystone ${request.operation} failed: ${outcome}`, {
            cause: error,
          });
        }
        await sleep(delay);
        delay *= 2;
      }
    }
  }

  async #once(request: KeystoneRequest, remainingMs: number): Promise<KeystoneResponse> {
    const { dispatcher, now, observer } = this.#options;
    const started = now();
    const timeoutMs = Math.max(1, Math.ceil(remainingMs));
    const response = await dispatcher.request({
      origin: request.url.origin,
      path: `${request.url.pathname}${request.url.search}`,
      method: request.method,
      headers: {
        accept: 'application/json',
        'user-agent': this.#options.userAgent,
        ...(request.body === undefined ? {} : { 'content-type': 'application/json' }),
        ...request.headers,
      },
      body: request.body,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs),
    });
    let text: string;
    try {
      text = await response.body.text();
    } catch (error) {
      // A body that breaks off is a transport failure, not an answer.
      throw Object.assign(new Error('Keystone response body failed'), {
        cause: error,
        code: 'UND_ERR_SOCKET',
      });
    }
    let json: unknown;
    if (text.length > 0) {
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
    }
    const status = response.statusCode;
    observer.keystoneRequest?.(
      request.operation,
      outcomeOf(request.operation, status),
      (now() - started) / 1000,
    );
    return { status, headers: response.headers, json };
  }
}

function outcomeOf(operation: KeystoneOperation, status: number): KeystoneOutcome {
  if (status >= 200 && status < 400) return 'ok';
  if (status === 404 && operation === 'validate') return 'invalid';
  if (status === 401) return 'unauthorized';
  if (status === 403) return 'forbidden';
  return 'http_error';
}
