/**
 * The external_oauth2_token filter's validator: a token → RFC 7662 introspection at the authorization server (or,
 * with jwks_uri, local JWT verification) → its claims mapped to the identity, handed to the engine as a Keystone
 * token body. So the engine's cache (expiry re-checked on every hit), negative cache, single flight, the workers'
 * L1 and the breaker apply as they do to Keystone. Outcomes: valid, invalid (inactive, bad signature), or a thrown
 * KeystoneUnavailableError (server unreachable, timeouts, 5xx, our client credentials refused) → 503.
 */
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import type { ResolvedExtOAuth2Options } from '../config/ext-oauth2-options.js';
import { KeystoneUnavailableError } from '../errors.js';
import { CircuitBreaker } from '../keystone/breaker.js';
import type { TokenValidator, ValidateOptions, ValidationAnswer } from '../keystone/client.js';
import { KeystoneHttp } from '../keystone/http.js';
import { MalformedTokenBodyError } from '../keystone/token-info.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import { mapClaims } from './claims.js';
import { type ClientAuthentication, clientAuthenticationOf, introspectionRequest } from './client-auth.js';
import { LocalJwtVerifier, looksLikeJwt } from './jwks.js';

export interface IntrospectionClientOptions {
  readonly ext: ResolvedExtOAuth2Options;
  readonly dispatcher: Dispatcher;
  readonly userAgent: string;
  /** Wall clock in ms. */
  readonly now: () => number;
  readonly logger: Logger;
  readonly observer: AuthObserver;
}

const INVALID: ValidationAnswer = Object.freeze({ kind: 'invalid' });
/** What /readyz introspects: no server issues it, so the answer is `active: false`, and proves the round trip. */
const READINESS_PROBE_TOKEN = 'keystone-auth-proxy-readiness-probe';

export class IntrospectionClient implements TokenValidator {
  readonly #options: IntrospectionClientOptions;
  readonly #auth: ClientAuthentication;
  readonly #http: KeystoneHttp;
  readonly #breaker: CircuitBreaker;
  readonly #endpoint: URL;
  readonly #local: LocalJwtVerifier | undefined;
  #probe: Promise<boolean> | undefined;

  constructor(options: IntrospectionClientOptions) {
    this.#options = options;
    const { ext, dispatcher, observer, logger } = options;
    this.#auth = clientAuthenticationOf(ext);
    this.#endpoint = new URL(ext.introspectEndpoint);
    this.#http = new KeystoneHttp({
      dispatcher,
      maxConnectRetries: ext.httpRequestMaxRetries,
      retryDelayMs: 100,
      userAgent: options.userAgent,
      observer,
      now: () => performance.now(),
      retryBudgetPerSecond: ext.retryBudgetPerSecond,
    });
    this.#breaker = new CircuitBreaker({
      failureThreshold: ext.circuitBreakerFailureThreshold,
      openMs: ext.circuitBreakerOpenSeconds * 1000,
      now: () => performance.now(),
      onChange: (state) => {
        observer.circuitState?.(state);
        logger.warn({ state }, 'authorization server circuit breaker changed state');
      },
    });
    this.#local =
      ext.localJwt === undefined
        ? undefined
        : new LocalJwtVerifier({
            jwt: ext.localJwt,
            dispatcher,
            timeoutMs: ext.httpRequestTimeoutSeconds * 1000,
            now: options.now,
            observer,
          });
  }

  async validate(token: string, _options: ValidateOptions): Promise<ValidationAnswer> {
    return this.#breaker.guard(() => this.#validate(token), 'authorization server circuit breaker is open');
  }

  async #validate(token: string): Promise<ValidationAnswer> {
    if (this.#local !== undefined && looksLikeJwt(token)) {
      const verdict = await this.#local.verify(token);
      if (verdict.kind === 'invalid') {
        this.#options.logger.info({ problem: verdict.problem }, 'JWT access token refused');
        return INVALID;
      }
      return this.#identity(verdict.claims, 'jwt');
    }
    const claims = await this.#introspect(token);
    if (claims === undefined) return INVALID;
    return this.#identity(claims, 'introspection');
  }

  #identity(claims: unknown, method: 'introspection' | 'jwt'): ValidationAnswer {
    const mapped = mapClaims(claims, this.#options.ext.mapping, { method });
    if (!mapped.ok) {
      // The field and the rule, never the claim values (they may be personal data).
      throw new MalformedTokenBodyError(
        `claims do not give the identity: ${mapped.field} ${mapped.problem}`,
        'claims_unmapped',
      );
    }
    return { kind: 'valid', body: mapped.body };
  }

  /** The active token's claims, or undefined for an inactive one. */
  async #introspect(
    token: string,
    budgetMs = this.#options.ext.httpRequestTimeoutSeconds * 1000,
  ): Promise<Record<string, unknown> | undefined> {
    const deadline = performance.now() + budgetMs;
    const parts = await introspectionRequest(token, this.#auth, this.#options.now());
    const response = await this.#http.send({
      operation: 'introspect',
      method: 'POST',
      url: this.#endpoint,
      headers: parts.headers,
      body: parts.body,
      deadline,
    });
    if (response.status === 401 || response.status === 403 || response.status === 400) {
      // Our own client authentication was refused: every token would fail alike, so this is an outage.
      throw new KeystoneUnavailableError(
        'service_auth_rejected',
        `the authorization server refused the proxy's client authentication (${this.#auth.method}): HTTP ${response.status}`,
        { status: response.status },
      );
    }
    if (response.status !== 200) {
      throw new KeystoneUnavailableError('http_status', `introspection answered HTTP ${response.status}`, {
        status: response.status,
      });
    }
    const body = response.json;
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw new KeystoneUnavailableError('bad_response', 'introspection answer is not a JSON object');
    }
    const claims = body as Record<string, unknown>;
    // RFC 7662 §2.2: `active` is a boolean; keystonemiddleware reads any falsy value as inactive.
    return claims.active === true ? claims : undefined;
  }

  /**
   * Ready: the breaker is not open, and the server answers an introspection with the proxy's client
   * authentication now (a token that names no token: any answer will do, active or not). Probed on every call,
   * as for Keystone; concurrent calls share one probe; not counted by the breaker.
   */
  ready(): Promise<boolean> {
    if (this.#breaker.state === 'open') return Promise.resolve(false);
    this.#probe ??= this.#introspect(
      READINESS_PROBE_TOKEN,
      Math.min(this.#options.ext.httpRequestTimeoutSeconds * 1000, 2_000),
    )
      .then(
        () => true,
        () => false,
      )
      .finally(() => {
        this.#probe = undefined;
      });
    return this.#probe;
  }

  async close(): Promise<void> {
    await this.#options.dispatcher.close();
  }
}
