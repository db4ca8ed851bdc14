/**
 * The framework-free engine: build once from options (validated, Keystone client, cache), then per request
 * `authenticate({method, path, headers})` → forward with these identity headers, or answer with this response.
 * Adapters and the proxy only translate this outcome to their request and response objects.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import { Agent, type Dispatcher } from 'undici';
import {
  type Decision,
  decide,
  decideCachedUser,
  type RequestFacts,
  type TokenVerdict,
} from '../auth/decision.js';
import { MemcachedStore } from '../auth/memcached.js';
import { RevocationIndex } from '../auth/revocation.js';
import { RevocationPoller } from '../auth/revocation-poller.js';
import { type SharedStore, SharedTokenCache } from '../auth/shared-cache.js';
import { TokenCache } from '../auth/token-cache.js';
import { TokenChecker } from '../auth/token-checker.js';
import {
  type AuthOptionsInput,
  type ResolvedAuthOptions,
  resolveAuthOptions,
} from '../config/auth-options.js';
import type { InvalidTokenReason, KeystoneUnavailableError } from '../errors.js';
import { type HeaderPair, identityHeaders } from '../identity/headers.js';
import { KeystoneClient, type TokenValidator } from '../keystone/client.js';
import type { ServiceCredentials } from '../keystone/service-token.js';
import type { TokenInfo } from '../keystone/token-info.js';
import { type AuthObserver, type Logger, silentLogger } from '../observability/observer.js';
import { USER_AGENT } from '../version.js';
import {
  type PreparedResponse,
  unauthorizedResponse,
  unavailableResponse,
  wwwAuthenticateValue,
} from './responses.js';

export interface AuthDependencies {
  /** Replaces Keystone entirely (see the `./testing` fixture). */
  readonly validator?: TokenValidator;
  /** undici dispatcher for Keystone; default: a keep-alive Agent with the TLS and timeout options. */
  readonly dispatcher?: Dispatcher;
  /** Wall clock in ms. */
  readonly now?: () => number;
  readonly logger?: Logger;
  readonly observer?: AuthObserver;
  /** Key of the token hash used for cache keys and log fingerprints; random per process by default. */
  readonly cacheHashKey?: Buffer;
  /** Replaces the memcached store built from `memcached_servers` (the shared tier's keys and crypto stay). */
  readonly sharedStore?: SharedStore;
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
  readonly cache: TokenCache;
  /** Revocation polling (OS-REVOKE); `undefined` when off or the validator cannot list events. */
  readonly revocation: RevocationPoller | undefined;
  authenticate(request: RequestFacts): Promise<AuthOutcome>;
  /** Keystone validations under way. */
  inflight(): number;
  /** Service token held and Keystone reachable (always true for an injected validator without `ready`). */
  ready(): Promise<boolean>;
  /** Obtain the service token and find the identity endpoint now rather than on the first request. */
  warmUp(): Promise<void>;
  close(): Promise<void>;
}

function serviceCredentials(options: ResolvedAuthOptions): ServiceCredentials {
  const o = options.credentials;
  const userDomainId =
    o.user_domain_id ?? (o.user_domain_name === undefined ? o.default_domain_id : undefined);
  const userDomainName =
    o.user_domain_name ?? (userDomainId === undefined ? o.default_domain_name : undefined);
  if (options.authType === 'v3applicationcredential') {
    return {
      type: 'v3applicationcredential',
      id: o.application_credential_id,
      name: o.application_credential_name,
      secret: o.application_credential_secret ?? '',
      userId: o.user_id,
      username: o.username,
      userDomainId,
      userDomainName,
    };
  }
  const projectDomainId =
    o.project_domain_id ?? (o.project_domain_name === undefined ? o.default_domain_id : undefined);
  const projectDomainName =
    o.project_domain_name ?? (projectDomainId === undefined ? o.default_domain_name : undefined);
  return {
    type: 'password',
    userId: o.user_id,
    username: o.username,
    userDomainId,
    userDomainName,
    password: o.password ?? '',
    projectId: o.project_id,
    projectName: o.project_name,
    projectDomainId,
    projectDomainName,
    domainId: o.domain_id,
    domainName: o.domain_name,
    systemScope: o.system_scope,
  };
}

function defaultDispatcher(options: ResolvedAuthOptions): Dispatcher {
  const { tls } = options;
  return new Agent({
    connections: 64,
    keepAliveTimeout: 30_000,
    connect: {
      timeout: Math.ceil(options.httpConnectTimeoutSeconds * 1000),
      rejectUnauthorized: !tls.insecure,
      ...(tls.cafile === undefined ? {} : { ca: readFileSync(tls.cafile) }),
      ...(tls.certfile === undefined ? {} : { cert: readFileSync(tls.certfile) }),
      ...(tls.keyfile === undefined ? {} : { key: readFileSync(tls.keyfile) }),
    },
  });
}

/**
 * Identities whose forwarded headers are kept built: the busy ones. Small on purpose: headers of an identity that
 * falls out of a large set have lived long enough to reach V8's old space, and a cache filling with new
 * identities leaves them there as holes between the cached tokens (100k cached tokens: 1,024 here gave +158 MB
 * RSS, 64 gives +103 MB; `npm run bench:memory`). Rebuilding them costs about 1.4 µs (`node bench/micro.mjs`).
 */
const HEADER_CACHE_ENTRIES = 64;

function sharedTier(
  options: ResolvedAuthOptions,
  deps: AuthDependencies,
  now: () => number,
  logger: Logger,
  observer: AuthObserver,
): SharedTokenCache | undefined {
  const memcached = options.memcached;
  if (memcached === undefined || options.tokenCacheTimeSeconds <= 0) return undefined;
  if (memcached.securityStrategy === 'None') {
    logger.warn(
      { servers: memcached.servers },
      'memcache_security_strategy is None: whoever reaches memcached can read cached identities and forge them; use ENCRYPT',
    );
  } else if (
    memcached.securityStrategy === 'MAC' &&
    memcached.securityStrategyText.toLowerCase() === 'encrypt'
  ) {
    logger.warn(
      { strategy: memcached.securityStrategyText },
      'memcache_security_strategy must read ENCRYPT exactly to encrypt (as in keystonemiddleware): entries are only signed',
    );
  }
  const store =
    deps.sharedStore ??
    new MemcachedStore({
      servers: memcached.servers,
      socketTimeoutMs: memcached.socketTimeoutSeconds * 1000,
      deadRetryMs: memcached.deadRetrySeconds * 1000,
      now,
      logger,
      onOperation: (operation, outcome, seconds) => observer.memcached?.(operation, outcome, seconds),
    });
  return new SharedTokenCache({
    store,
    strategy: memcached.securityStrategy,
    strategyText: memcached.securityStrategyText,
    secretKey: memcached.secretKey,
    now,
    logger,
    onRejected: () => observer.cache?.('shared_rejected'),
  });
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

export function createAuthenticator(input: AuthOptionsInput, deps: AuthDependencies = {}): Authenticator {
  const options = resolveAuthOptions(input, { credentialsOptional: deps.validator !== undefined });
  const logger = deps.logger ?? silentLogger;
  const observer = deps.observer ?? {};
  const now = deps.now ?? Date.now;

  const wwwAuthenticateUri = options.wwwAuthenticateUri ?? options.authUrl ?? '';
  if (options.wwwAuthenticateUri === undefined) {
    logger.warn(
      { fallback: wwwAuthenticateUri },
      'www_authenticate_uri is not set: 401 answers point at auth_url',
    );
  }
  if (!options.serviceTokenRolesRequired) {
    logger.warn(
      {},
      'service_token_roles_required is false: any valid token is accepted as a service token and bypasses access rules',
    );
  }
  if (options.ignored.length > 0) {
    logger.warn({ options: options.ignored }, 'keystonemiddleware options ignored by this engine');
  }

  const validator =
    deps.validator ??
    new KeystoneClient({
      authUrl: options.authUrl ?? '',
      authVersion: options.authVersion,
      interface: options.interface,
      regionName: options.regionName,
      credentials: serviceCredentials(options),
      includeCatalog: options.includeServiceCatalog,
      dispatcher: deps.dispatcher ?? defaultDispatcher(options),
      requestTimeoutMs: options.httpRequestTimeoutSeconds * 1000,
      maxConnectRetries: options.httpRequestMaxRetries,
      retryDelayMs: 100,
      retryBudgetPerSecond: options.retryBudgetPerSecond,
      breakerFailureThreshold: options.circuitBreakerFailureThreshold,
      breakerOpenMs: options.circuitBreakerOpenSeconds * 1000,
      userAgent: USER_AGENT,
      now,
      logger,
      observer,
    });
  const cache = new TokenCache({
    ttlSeconds: options.tokenCacheTimeSeconds,
    maxEntries: options.tokenCacheMaxEntries,
    maxBytes: options.tokenCacheMaxBytes,
    now,
    hashKey: deps.cacheHashKey,
    staleSeconds: options.staleIfErrorSeconds,
    negativeSeconds: options.negativeCacheSeconds,
  });
  const shared = sharedTier(options, deps, now, logger, observer);
  const index = new RevocationIndex();
  const revocation =
    options.revocationPollIntervalSeconds > 0 && validator.revocationEvents !== undefined
      ? new RevocationPoller({
          fetchEvents: validator.revocationEvents.bind(validator),
          index,
          intervalMs: options.revocationPollIntervalSeconds * 1000,
          retentionMs:
            (Math.max(0, options.tokenCacheTimeSeconds) +
              options.staleIfErrorSeconds +
              options.httpRequestTimeoutSeconds +
              2 * options.revocationPollIntervalSeconds +
              60) *
            1000,
          unsupportedRetryMs: Math.max(300, options.revocationPollIntervalSeconds) * 1000,
          now,
          onNewEvents: () => {
            const { evicted, sharedKeys } = cache.sweep((info) => index.isRevoked(info));
            for (const key of sharedKeys) shared?.delete(key);
            return evicted;
          },
          logger,
          observer,
        })
      : undefined;
  const checker = new TokenChecker({
    validator,
    cache,
    shared,
    cacheTimeMs: Math.max(0, options.tokenCacheTimeSeconds) * 1000,
    revalidateAfterMs: options.tokenRevalidateSeconds * 1000,
    isRevoked: revocation === undefined ? undefined : (info) => index.isRevoked(info),
    renderCatalog: options.includeServiceCatalog,
    now,
    observer,
    logger,
  });
  revocation?.start();
  const policy = {
    delayAuthDecision: options.delayAuthDecision,
    serviceTokenRoles: options.serviceTokenRoles,
    serviceTokenRolesRequired: options.serviceTokenRolesRequired,
    serviceType: options.serviceType,
    enforceTokenBind: options.enforceTokenBind,
  };
  let warnedRoleBypass = false;
  const onServiceRoleBypass = (): void => {
    if (warnedRoleBypass) return;
    warnedRoleBypass = true;
    logger.warn({ roles: options.serviceTokenRoles }, 'accepted a service token without a service role');
  };
  const unauthorized = unauthorizedResponse(wwwAuthenticateUri);

  // Bounded, not one per cached identity: the built headers cost about 1.9 KB an identity (190 MB for 100k
  // cached tokens), while the gain (under 5 % of a cached request) only matters for identities in use.
  const confirmedOnly = new LRUCache<TokenInfo, { headers: readonly HeaderPair[]; context: AuthContext }>({
    max: HEADER_CACHE_ENTRIES,
  });
  const toOutcome = (decision: Decision, facts: OutcomeFacts): AuthOutcome => {
    switch (decision.action) {
      case 'reject':
        return {
          cache: facts.cache,
          authSeconds: facts.authSeconds,
          action: 'respond',
          response: unauthorized,
          reason: decision.reason,
        };
      case 'unavailable':
        return {
          cache: facts.cache,
          authSeconds: facts.authSeconds,
          action: 'respond',
          response: unavailableResponse(decision.error.retryAfterSeconds),
          reason: 'keystone_unavailable',
          error: decision.error,
        };
      case 'forward': {
        const { user, service } = decision;
        // The common case (a confirmed user token alone) gives the same headers for every request of that
        // identity: build them once per cached identity.
        if (service === undefined && user.status === 'Confirmed' && user.info !== undefined) {
          let built = confirmedOnly.get(user.info);
          if (built === undefined) {
            built = {
              headers: Object.freeze(
                identityHeaders({
                  userStatus: 'Confirmed',
                  user: user.info,
                  includeServiceCatalog: options.includeServiceCatalog,
                }),
              ),
              context: contextOf(user, undefined),
            };
            confirmedOnly.set(user.info, built);
          }
          // Spelled out rather than spread: one object shape for every forwarded outcome, no clone per request.
          return {
            cache: facts.cache,
            authSeconds: facts.authSeconds,
            action: 'forward',
            headers: built.headers,
            context: built.context,
          };
        }
        const headers = identityHeaders({
          userStatus: user.status,
          serviceStatus: service?.status,
          user: user.info,
          service: service?.info,
          includeServiceCatalog: options.includeServiceCatalog,
        });
        return {
          cache: facts.cache,
          authSeconds: facts.authSeconds,
          action: 'forward',
          headers,
          context: contextOf(user, service),
        };
      }
    }
  };

  const lookupCached = (token: string): TokenInfo | undefined => checker.checkCached(token);
  const authenticateFully = async (request: RequestFacts, started: number): Promise<AuthOutcome> => {
    let lookups = 0;
    let hits = 0;
    const check = async (token: string, allowExpired: boolean) => {
      lookups++;
      const result = await checker.check(token, allowExpired);
      if (result.status === 'valid' && result.source === 'cache') hits++;
      return result;
    };
    const decision = await decide(request, policy, check, onServiceRoleBypass);
    const cache: CacheUse = lookups === 0 ? 'none' : hits === lookups ? 'hit' : 'miss';
    return toOutcome(decision, { cache, authSeconds: (performance.now() - started) / 1000 });
  };

  return {
    options,
    wwwAuthenticate: wwwAuthenticateValue(wwwAuthenticateUri),
    cache,
    revocation,
    authenticate(request) {
      const started = performance.now();
      // A cached user token alone (the bulk of the traffic): decided without a single await.
      const cached = decideCachedUser(request, policy, lookupCached);
      if (cached !== undefined) {
        return Promise.resolve(
          toOutcome(cached, { cache: 'hit', authSeconds: (performance.now() - started) / 1000 }),
        );
      }
      return authenticateFully(request, started);
    },
    inflight: () => checker.inflight,
    ready: async () => (validator.ready === undefined ? true : validator.ready()),
    async warmUp() {
      if (validator instanceof KeystoneClient) await validator.warmUp();
    },
    async close() {
      revocation?.stop();
      cache.clear();
      await Promise.all([validator.close?.(), shared?.close()]);
    },
  };
}
