/**
 * The framework-free engine. Built once from options; then per request `authenticate({method, path, headers})`
 * → forward with these identity headers, or answer with this response. The identity state it asks (cache, Keystone,
 * revocation) is assembled elsewhere (src/state) and may live in another process: a cluster worker asks its primary.
 * Adapters and the proxy only translate the outcome to their request and response objects.
 */
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { PresentedCertificate } from '../auth/certificate-binding.js';
import {
  type Decision,
  type DecisionPolicy,
  decide,
  decideCachedUser,
  type RequestFacts,
  type TokenVerdict,
} from '../auth/decision.js';
import { forwardedCertificate } from '../auth/forwarded-certificate.js';
import {
  type AuthOptionsInput,
  type ResolvedAuthOptions,
  resolveAuthOptions,
} from '../config/auth-options.js';
import type { InvalidTokenReason, KeystoneUnavailableError } from '../errors.js';
import { type HeaderPair, identityHeaders } from '../identity/headers.js';
import type { TokenInfo } from '../keystone/token-info.js';
import { type Logger, silentLogger } from '../observability/observer.js';
import { assembleHostState, type StateDependencies } from '../state/assemble.js';
import { HostIdentityState } from '../state/host-state.js';
import type { IdentityState } from '../state/identity-state.js';
import type { RevocationPoller } from '../state/revocation-poller.js';
import {
  externalResponses,
  externalUnavailableResponse,
  type PreparedResponse,
  unauthorizedResponse,
  unavailableResponse,
  wwwAuthenticateValue,
} from './responses.js';

export interface AuthDependencies extends StateDependencies {
  /**
   * The identity state to ask instead of assembling one from the options: a cluster worker's link to its
   * primary, or a state shared by several engines of one process.
   */
  readonly identityState?: IdentityState | undefined;
}

/** What the application behind the engine learns about the caller. */
export interface AuthContext {
  readonly userStatus: 'Confirmed' | 'Invalid';
  /** Present only when the request carried X-Service-Token. */
  readonly serviceStatus: 'Confirmed' | 'Invalid' | undefined;
  readonly user: TokenInfo | undefined;
  readonly service: TokenInfo | undefined;
  /** Why the user (or service) token was not confirmed; for logs, never for the client. */
  readonly reason: InvalidTokenReason | undefined;
}

/** Whether the tokens of a request were all served from the cache. */
export type CacheUse = 'hit' | 'miss' | 'none';

interface OutcomeFacts {
  readonly cache: CacheUse;
  /** Time spent deciding, Keystone calls included. */
  readonly authSeconds: number;
}

export type AuthOutcome =
  | (OutcomeFacts & {
      readonly action: 'forward';
      readonly headers: readonly HeaderPair[];
      readonly context: AuthContext;
    })
  | (OutcomeFacts & {
      readonly action: 'respond';
      readonly response: PreparedResponse;
      readonly reason: InvalidTokenReason | 'keystone_unavailable';
      readonly error?: KeystoneUnavailableError;
    });

export interface Authenticator {
  readonly options: ResolvedAuthOptions;
  /** The `WWW-Authenticate` value for 401 answers, ours and the application's. */
  readonly wwwAuthenticate: string;
  /** Where identities come from: this process's state, or (in a cluster worker) the primary's. */
  readonly state: IdentityState;
  /** Revocation polling (OS-REVOKE) of this process's state; `undefined` when off, or when the state is elsewhere. */
  readonly revocation: RevocationPoller | undefined;
  authenticate(request: RequestFacts): Promise<AuthOutcome>;
  /** Lookups under way (Keystone or memcached; for a worker, questions to the primary). */
  inflight(): number;
  /** Service token held and Keystone reachable (always true for an injected validator without `ready`). */
  ready(): Promise<boolean>;
  /** Obtain the service token and find the identity endpoint now rather than on the first request. */
  warmUp(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Identities whose forwarded headers are kept built: the busy ones. Small on purpose: headers of an identity that
 * falls out of a large set have lived long enough to reach V8's old space, and a cache filling with new
 * identities leaves them there as holes between the cached tokens (100k cached tokens: 1,024 here gave +158 MB
 * RSS, 64 gives +103 MB; `npm run bench:memory`). Rebuilding them costs about 1.4 µs (`node bench/micro.mjs`).
 */
const HEADER_CACHE_ENTRIES = 64;

/** Options, then the identity state (assembled here unless given), then the per-request engine on top. */
export function createAuthenticator(input: AuthOptionsInput, deps: AuthDependencies = {}): Authenticator {
  const options = resolveAuthOptions(input, { credentialsOptional: deps.validator !== undefined });
  const state = deps.identityState ?? assembleHostState(options, deps);
  return createEngine(options, state, deps.logger ?? silentLogger);
}

/** The per-request engine over an identity state; nothing here builds clients or caches. */
export function createEngine(
  options: ResolvedAuthOptions,
  state: IdentityState,
  logger: Logger = silentLogger,
): Authenticator {
  const wwwAuthenticateUri = options.wwwAuthenticateUri ?? options.authUrl ?? '';
  const ext = options.externalOAuth2;
  const policy: DecisionPolicy = {
    filter: options.filter,
    delayAuthDecision: options.delayAuthDecision,
    serviceTokenRoles: options.serviceTokenRoles,
    serviceTokenRolesRequired: options.serviceTokenRolesRequired,
    serviceType: options.serviceType,
    enforceTokenBind: options.enforceTokenBind,
    thumbprintVerify: ext?.thumbprintVerify === true,
  };
  const answers = answersFor(options, wwwAuthenticateUri);
  const outcomes = new OutcomeBuilder({
    includeCatalog: options.includeServiceCatalog,
    // X-Identity-Status: auth_token and external_oauth2_token set it, the Keystone OAuth2 filters do not.
    identityStatus: options.filter === 'auth_token' || options.filter === 'external_oauth2_token',
    flavor: ext === undefined ? 'keystone' : 'external',
    answers,
  });
  const onServiceRoleBypass = onceWarning(
    logger,
    { roles: options.serviceTokenRoles },
    'accepted a service token without a service role',
  );
  const lookupCached = (token: string): TokenInfo | undefined => state.checkCached(token);
  const withForwardedCertificate = forwardedCertificateReader(options);

  /** Every other case: service tokens, misses, allow_expired, delay_auth_decision on a failure. */
  const authenticateFully = async (request: RequestFacts, started: number): Promise<AuthOutcome> => {
    let lookups = 0;
    let hits = 0;
    const check = async (token: string, allowExpired: boolean) => {
      lookups++;
      const result = await state.check(token, allowExpired);
      if (result.status === 'valid' && result.source === 'cache') hits++;
      return result;
    };
    const decision = await decide(request, policy, check, onServiceRoleBypass);
    const cache: CacheUse = lookups === 0 ? 'none' : hits === lookups ? 'hit' : 'miss';
    return outcomes.of(decision, { cache, authSeconds: (performance.now() - started) / 1000 });
  };

  return {
    options,
    wwwAuthenticate: answers.challenge,
    state,
    revocation: state instanceof HostIdentityState ? state.revocation : undefined,
    authenticate(facts) {
      const started = performance.now();
      const request = withForwardedCertificate(facts);
      // A cached user token alone (the bulk of the traffic): decided without a single await.
      const cached = decideCachedUser(request, policy, lookupCached);
      if (cached !== undefined) {
        return Promise.resolve(
          outcomes.of(cached, { cache: 'hit', authSeconds: (performance.now() - started) / 1000 }),
        );
      }
      return authenticateFully(request, started);
    },
    inflight: () => state.stats().inflight,
    ready: () => state.ready(),
    warmUp: () => state.warmUp(),
    close: () => state.close(),
  };
}

/**
 * oauth2_mtls_token (or external_oauth2_token with thumbprint_verify) behind a TLS-terminating ingress: the
 * certificate comes from its header instead of the listener. Parsed once per distinct value (a client keeps its
 * certificate for many requests).
 */
function forwardedCertificateReader(options: ResolvedAuthOptions): (request: RequestFacts) => RequestFacts {
  const header = options.clientCertificateHeader;
  const binds = options.filter === 'oauth2_mtls_token' || options.externalOAuth2?.thumbprintVerify === true;
  if (header === undefined || !binds) return (request) => request;
  const parsed = new LRUCache<string, { certificate: PresentedCertificate | undefined }>({ max: 256 });
  return (request) => {
    const value = request.headers[header];
    const text = typeof value === 'string' ? value : undefined;
    let entry = text === undefined ? undefined : parsed.get(text);
    if (entry === undefined) {
      entry = { certificate: forwardedCertificate(text) };
      if (text !== undefined) parsed.set(text, entry);
    }
    return {
      method: request.method,
      path: request.path,
      headers: request.headers,
      clientCertificate: entry.certificate,
    };
  };
}

/** The filter's own answers: keystonemiddleware's auth_token ones, or external_oauth2_token's. */
interface FilterAnswers {
  readonly unauthorized: (reason: InvalidTokenReason) => PreparedResponse;
  readonly forbidden: PreparedResponse;
  readonly unavailable: (retryAfterSeconds: number | undefined) => PreparedResponse;
  readonly challenge: string;
}

function answersFor(options: ResolvedAuthOptions, wwwAuthenticateUri: string): FilterAnswers {
  const ext = options.externalOAuth2;
  if (ext === undefined) {
    const unauthorized = unauthorizedResponse(wwwAuthenticateUri);
    return {
      unauthorized: () => unauthorized,
      // Not reached: only the external filter maps claims.
      forbidden: unauthorized,
      unavailable: unavailableResponse,
      challenge: wwwAuthenticateValue(wwwAuthenticateUri),
    };
  }
  const responses = externalResponses(ext.audience, ext.challenge);
  return {
    unauthorized: (reason) => (reason === 'missing' ? responses.missing : responses.invalid),
    forbidden: responses.forbidden,
    unavailable: externalUnavailableResponse,
    challenge: responses.challenge,
  };
}

function onceWarning(logger: Logger, fields: object, message: string): () => void {
  let warned = false;
  return () => {
    if (warned) return;
    warned = true;
    logger.warn(fields, message);
  };
}

function contextOf(user: TokenVerdict, service: TokenVerdict | undefined): AuthContext {
  return Object.freeze({
    userStatus: user.status,
    serviceStatus: service?.status,
    user: user.status === 'Confirmed' ? user.info : undefined,
    service: service?.status === 'Confirmed' ? service.info : undefined,
    reason:
      user.status === 'Invalid' ? user.reason : service?.status === 'Invalid' ? service.reason : undefined,
  });
}

interface OutcomeOptions {
  readonly includeCatalog: boolean;
  readonly identityStatus: boolean;
  readonly flavor: 'keystone' | 'external';
  readonly answers: FilterAnswers;
}

/** Decision → outcome. Every outcome is spelled out (no spread): one object shape, no clone per request. */
class OutcomeBuilder {
  readonly #includeCatalog: boolean;
  /** X-Identity-Status: auth_token and external_oauth2_token set it, oauth2_token and oauth2_mtls_token do not. */
  readonly #identityStatus: boolean;
  readonly #flavor: 'keystone' | 'external';
  readonly #answers: FilterAnswers;
  /**
   * Bounded, not one per cached identity: the built headers cost about 1.9 KB an identity (190 MB for 100k
   * cached tokens), while the gain (under 5 % of a cached request) only matters for identities in use.
   */
  readonly #confirmedOnly = new LRUCache<TokenInfo, { headers: readonly HeaderPair[]; context: AuthContext }>(
    {
      max: HEADER_CACHE_ENTRIES,
    },
  );

  constructor(options: OutcomeOptions) {
    this.#includeCatalog = options.includeCatalog;
    this.#identityStatus = options.identityStatus;
    this.#flavor = options.flavor;
    this.#answers = options.answers;
  }

  of(decision: Decision, facts: OutcomeFacts): AuthOutcome {
    switch (decision.action) {
      case 'reject':
        return {
          cache: facts.cache,
          authSeconds: facts.authSeconds,
          action: 'respond',
          response:
            decision.reason === 'claims_unmapped'
              ? this.#answers.forbidden
              : this.#answers.unauthorized(decision.reason),
          reason: decision.reason,
        };
      case 'unavailable':
        return {
          cache: facts.cache,
          authSeconds: facts.authSeconds,
          action: 'respond',
          response: this.#answers.unavailable(decision.error.retryAfterSeconds),
          reason: 'keystone_unavailable',
          error: decision.error,
        };
      case 'forward':
        return this.#forward(decision.user, decision.service, facts);
    }
  }

  #forward(user: TokenVerdict, service: TokenVerdict | undefined, facts: OutcomeFacts): AuthOutcome {
    const built =
      service === undefined && user.status === 'Confirmed' && user.info !== undefined
        ? this.#confirmedHeaders(user, user.info)
        : {
            headers: identityHeaders({
              userStatus: user.status,
              serviceStatus: service?.status,
              user: user.info,
              service: service?.info,
              includeServiceCatalog: this.#includeCatalog,
              identityStatus: this.#identityStatus,
              flavor: this.#flavor,
            }),
            context: contextOf(user, service),
          };
    return {
      cache: facts.cache,
      authSeconds: facts.authSeconds,
      action: 'forward',
      headers: built.headers,
      context: built.context,
    };
  }

  /** The common case (a confirmed user token alone) gives the same headers for every request of that identity. */
  #confirmedHeaders(user: TokenVerdict, info: TokenInfo) {
    let built = this.#confirmedOnly.get(info);
    if (built === undefined) {
      built = {
        headers: Object.freeze(
          identityHeaders({
            userStatus: 'Confirmed',
            user: info,
            includeServiceCatalog: this.#includeCatalog,
            identityStatus: this.#identityStatus,
            flavor: this.#flavor,
          }),
        ),
        context: contextOf(user, undefined),
      };
      this.#confirmedOnly.set(info, built);
    }
    return built;
  }
}
