/**
 * Talks to Keystone the way keystonemiddleware does: version discovery on auth_url, the proxy's own token, the
 * identity endpoint from that token's catalog (by interface and region), then GET /v3/auth/tokens.
 * Outcomes are reduced to three: valid (body), invalid (404), or a thrown KeystoneUnavailableError.
 */
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import { KeystoneUnavailableError } from '../errors.js';
import { SUBJECT_TOKEN_HEADER } from '../identity/headers.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import { CircuitBreaker } from './breaker.js';
import { KeystoneHttp } from './http.js';
import { type ServiceCredentials, type ServiceToken, ServiceTokenProvider } from './service-token.js';

export type ValidationAnswer =
  | { readonly kind: 'valid'; readonly body: unknown }
  | { readonly kind: 'invalid' };

export interface ValidateOptions {
  readonly allowExpired: boolean;
}

/** `GET /v3/OS-REVOKE/events`: the body, or the status saying the API is not available to us. */
export type RevocationFeedAnswer =
  | { readonly kind: 'events'; readonly body: unknown }
  | { readonly kind: 'unsupported'; readonly status: number };

/** What the engine needs from Keystone; the testing fixture implements it without HTTP. */
export interface TokenValidator {
  validate(token: string, options: ValidateOptions): Promise<ValidationAnswer>;
  /** Revocation events revoked after `since` (ISO 8601); absent: no revocation polling. */
  revocationEvents?(since: string | undefined): Promise<RevocationFeedAnswer>;
  /** Readiness: the service token is held and Keystone answers (probing it if it has been quiet). */
  ready?(): Promise<boolean>;
  /** Obtain what validations need (service token, endpoints) before the first request. */
  warmUp?(): Promise<void>;
  close?(): Promise<void>;
}

export interface KeystoneClientOptions {
  readonly authUrl: string;
  /** Skip discovery and assume the endpoints speak v3 (keystonemiddleware's `auth_version`). */
  readonly authVersion: string | undefined;
  readonly interface: 'public' | 'internal' | 'admin';
  readonly regionName: string | undefined;
  readonly credentials: ServiceCredentials;
  readonly includeCatalog: boolean;
  readonly dispatcher: Dispatcher;
  readonly requestTimeoutMs: number;
  readonly maxConnectRetries: number;
  readonly retryDelayMs: number;
  readonly retryBudgetPerSecond: number;
  /** Consecutive failures that open the circuit breaker (0: no breaker) and how long it stays open. */
  readonly breakerFailureThreshold: number;
  readonly breakerOpenMs: number;
  readonly userAgent: string;
  readonly now: () => number;
  readonly logger: Logger;
  readonly observer: AuthObserver;
}

const trimSlash = (url: string): string => url.replace(/\/+$/, '');

function isV3Url(url: string): boolean {
  return /\/v3(\.\d+)?$/.test(trimSlash(new URL(url).pathname));
}

/** Picks the v3 endpoint out of a Keystone versions document (`GET /` answers 300 with a list). */
export function findV3InVersions(document: unknown, base: string): string | undefined {
  const doc = document as { versions?: { values?: unknown[] }; version?: unknown } | undefined;
  const candidates = doc?.versions?.values ?? (doc?.version === undefined ? [] : [doc.version]);
  for (const raw of candidates) {
    const version = raw as { id?: unknown; status?: unknown; links?: { rel?: unknown; href?: unknown }[] };
    if (typeof version.id !== 'string' || !version.id.startsWith('v3')) continue;
    if (version.status === 'deprecated') continue;
    const self = version.links?.find((link) => link.rel === 'self');
    if (typeof self?.href === 'string') return trimSlash(new URL(self.href, `${trimSlash(base)}/`).href);
  }
  return undefined;
}

/** The identity endpoint of the wanted interface (and region) in a v3 catalog. */
export function findIdentityEndpoint(
  catalog: readonly unknown[],
  wanted: 'public' | 'internal' | 'admin',
  regionName: string | undefined,
): string | undefined {
  for (const raw of catalog) {
    const service = raw as { type?: unknown; endpoints?: unknown };
    if (service.type !== 'identity' || !Array.isArray(service.endpoints)) continue;
    for (const rawEndpoint of service.endpoints) {
      const endpoint = rawEndpoint as {
        interface?: unknown;
        url?: unknown;
        region?: unknown;
        region_id?: unknown;
      };
      if (endpoint.interface !== wanted || typeof endpoint.url !== 'string') continue;
      if (regionName !== undefined && endpoint.region !== regionName && endpoint.region_id !== regionName)
        continue;
      return endpoint.url;
    }
  }
  return undefined;
}

export class KeystoneClient implements TokenValidator {
  readonly #options: KeystoneClientOptions;
  readonly #http: KeystoneHttp;
  readonly #serviceToken: ServiceTokenProvider;
  readonly #discovered = new Map<string, string>();
  readonly #breaker: CircuitBreaker;
  #authV3: string | undefined;
  #authV3Pending: Promise<string> | undefined;
  /** Identity endpoint resolved from the catalog of this service token. */
  #endpointFor: { token: string; url: string } | undefined;
  #warnedFallback = false;
  #probe: Promise<boolean> | undefined;

  constructor(options: KeystoneClientOptions) {
    this.#options = options;
    this.#http = new KeystoneHttp({
      dispatcher: options.dispatcher,
      maxConnectRetries: options.maxConnectRetries,
      retryDelayMs: options.retryDelayMs,
      retryBudgetPerSecond: options.retryBudgetPerSecond,
      userAgent: options.userAgent,
      observer: options.observer,
      now: () => performance.now(),
    });
    this.#breaker = new CircuitBreaker({
      failureThreshold: options.breakerFailureThreshold,
      openMs: options.breakerOpenMs,
      now: () => performance.now(),
      onChange: (state) => {
        options.observer.circuitState?.(state);
        const log = state === 'open' ? options.logger.error : options.logger.warn;
        log.call(options.logger, { state }, `Keystone circuit breaker ${state.replace('_', '-')}`);
      },
    });
    this.#serviceToken = new ServiceTokenProvider({
      http: this.#http,
      credentials: options.credentials,
      now: options.now,
      logger: options.logger,
      observer: options.observer,
    });
  }

  /**
   * Readiness: holds (or can obtain) the service token, and Keystone answers a request for its version document
   * now. Probed on every call (a readiness probe comes every few seconds); concurrent calls share one probe.
   */
  ready(): Promise<boolean> {
    this.#probe ??= this.warmUp(Math.min(this.#options.requestTimeoutMs, 2_000), true)
      .then(
        () => true,
        () => false,
      )
      .finally(() => {
        this.#probe = undefined;
      });
    return this.#probe;
  }

  /** Obtain the service token and resolve the identity endpoint ahead of the first request. */
  async warmUp(budgetMs = this.#options.requestTimeoutMs, probe = false): Promise<void> {
    const deadline = performance.now() + budgetMs;
    const service = await this.#serviceToken.get(await this.#authV3Url(deadline), deadline);
    const endpoint = await this.#identityEndpoint(service, deadline);
    if (probe) {
      const response = await this.#http.send({
        operation: 'discovery',
        method: 'GET',
        url: new URL(endpoint),
        headers: {},
        deadline,
      });
      if (response.status >= 500) {
        throw new KeystoneUnavailableError('http_status', `Keystone answered HTTP ${response.status}`, {
          status: response.status,
        });
      }
    }
  }

  async validate(token: string, options: ValidateOptions): Promise<ValidationAnswer> {
    return this.#breaker.guard(() => this.#validate(token, options), 'Keystone circuit breaker is open');
  }

  async #validate(token: string, options: ValidateOptions): Promise<ValidationAnswer> {
    const deadline = performance.now() + this.#options.requestTimeoutMs;
    const authV3 = await this.#authV3Url(deadline);
    // Keystone 401 means our own token went stale: re-authenticate once, then give up.
    for (let attempt = 0; attempt < 2; attempt++) {
      const service = await this.#serviceToken.get(authV3, deadline);
      const endpoint = await this.#identityEndpoint(service, deadline);
      const answer = await this.#validateOnce(
        endpoint,
        service.token,
        token,
        options,
        this.#options.includeCatalog,
        deadline,
      );
      if (answer === 'stale') {
        this.#serviceToken.invalidate(service.token);
        continue;
      }
      if (answer.kind === 'valid' && !this.#options.includeCatalog && needsCatalogForRules(answer.body)) {
        // Access rules are checked against the catalog, which ?nocatalog left out: fetch it for these tokens.
        const full = await this.#validateOnce(endpoint, service.token, token, options, true, deadline);
        if (full === 'stale') continue;
        return full;
      }
      return answer;
    }
    throw new KeystoneUnavailableError(
      'service_auth_rejected',
      'Keystone keeps rejecting the service token',
      {
        status: 401,
      },
    );
  }

  async close(): Promise<void> {
    await this.#options.dispatcher.close();
  }

  /**
   * Background polling: outside the circuit breaker (a failed poll must not turn requests away) and with the
   * service token's own re-authentication on 401, like validations.
   */
  async revocationEvents(since: string | undefined): Promise<RevocationFeedAnswer> {
    const deadline = performance.now() + this.#options.requestTimeoutMs;
    const authV3 = await this.#authV3Url(deadline);
    for (let attempt = 0; attempt < 2; attempt++) {
      const service = await this.#serviceToken.get(authV3, deadline);
      const endpoint = await this.#identityEndpoint(service, deadline);
      const url = new URL(`${endpoint}/OS-REVOKE/events`);
      if (since !== undefined) url.searchParams.set('since', since);
      const response = await this.#http.send({
        operation: 'revocation_events',
        method: 'GET',
        url,
        headers: { 'x-auth-token': service.token },
        deadline,
      });
      if (response.status === 401) {
        this.#serviceToken.invalidate(service.token);
        continue;
      }
      if (response.status === 200 && response.json !== undefined)
        return { kind: 'events', body: response.json };
      // Forbidden by policy, or the API is gone (Keystone calls it unused): the caller falls back to TTLs.
      if (response.status === 403 || response.status === 404 || response.status === 501) {
        return { kind: 'unsupported', status: response.status };
      }
      throw new KeystoneUnavailableError(
        'http_status',
        `Keystone revocation events answered HTTP ${response.status}`,
        { status: response.status },
      );
    }
    throw new KeystoneUnavailableError(
      'service_auth_rejected',
      'Keystone keeps rejecting the service token',
      {
        status: 401,
      },
    );
  }

  async #validateOnce(
    endpoint: string,
    serviceToken: string,
    subject: string,
    options: ValidateOptions,
    withCatalog: boolean,
    deadline: number,
  ): Promise<ValidationAnswer | 'stale'> {
    const url = new URL(`${endpoint}/auth/tokens`);
    if (!withCatalog) url.searchParams.set('nocatalog', '');
    if (options.allowExpired) url.searchParams.set('allow_expired', '1');
    // URLSearchParams renders a bare flag as `nocatalog=`; Keystone accepts both, keystonemiddleware sends `nocatalog`.
    url.search = url.search.replace('nocatalog=', 'nocatalog');
    const response = await this.#http.send({
      operation: 'validate',
      method: 'GET',
      url,
      headers: {
        'x-auth-token': serviceToken,
        [SUBJECT_TOKEN_HEADER]: subject,
        'openstack-identity-access-rules': '1',
      },
      deadline,
    });
    const { status } = response;
    if (status === 401) return 'stale';
    if (status === 404) return { kind: 'invalid' };
    if (status === 200 || status === 203) {
      if (response.json === undefined) {
        throw new KeystoneUnavailableError('bad_response', 'Keystone validation answer is not JSON', {
          status,
        });
      }
      return { kind: 'valid', body: response.json };
    }
    throw new KeystoneUnavailableError('http_status', `Keystone validation answered HTTP ${status}`, {
      status,
    });
  }

  async #authV3Url(deadline: number): Promise<string> {
    if (this.#authV3 !== undefined) return this.#authV3;
    // Concurrent first callers (a validation and the revocation poller) share one discovery.
    this.#authV3Pending ??= this.#discover(this.#options.authUrl, deadline).finally(() => {
      this.#authV3Pending = undefined;
    });
    this.#authV3 = await this.#authV3Pending;
    return this.#authV3;
  }

  async #identityEndpoint(service: ServiceToken, deadline: number): Promise<string> {
    if (this.#endpointFor?.token === service.token) return this.#endpointFor.url;
    const { interface: wanted, regionName, logger } = this.#options;
    const fromCatalog = findIdentityEndpoint(service.catalog, wanted, regionName);
    let url: string;
    if (fromCatalog === undefined) {
      url = await this.#authV3Url(deadline);
      if (!this.#warnedFallback) {
        this.#warnedFallback = true;
        logger.warn(
          { interface: wanted, regionName },
          'no identity endpoint in the catalog: validating at auth_url',
        );
      }
    } else {
      url = await this.#discover(fromCatalog, deadline);
    }
    this.#endpointFor = { token: service.token, url };
    return url;
  }

  async #discover(base: string, deadline: number): Promise<string> {
    const cleaned = trimSlash(base);
    if (isV3Url(cleaned)) return cleaned;
    if (this.#options.authVersion !== undefined) return `${cleaned}/v3`;
    const known = this.#discovered.get(cleaned);
    if (known !== undefined) return known;
    const response = await this.#http.send({
      operation: 'discovery',
      method: 'GET',
      url: new URL(cleaned),
      headers: {},
      deadline,
    });
    const found = response.status < 400 ? findV3InVersions(response.json, cleaned) : undefined;
    if (found === undefined) {
      throw new KeystoneUnavailableError('discovery', `no v3 identity API found at ${cleaned}`, {
        status: response.status,
      });
    }
    this.#discovered.set(cleaned, found);
    return found;
  }
}

function needsCatalogForRules(body: unknown): boolean {
  const token = (
    body as { token?: { application_credential?: { access_rules?: unknown }; catalog?: unknown } }
  )?.token;
  return token?.application_credential?.access_rules !== undefined && token.catalog === undefined;
}
