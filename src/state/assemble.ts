/**
 * Assembly: the resolved `keystone_authtoken` options → the host's identity state (Keystone client, token cache,
 * memcached tier, revocation poller, checker). Runs once per host at start-up; nothing here is on a request's path.
 */
import { readFileSync } from 'node:fs';
import { Agent, type Dispatcher } from 'undici';
import type { ResolvedAuthOptions } from '../config/auth-options.js';
import { KeystoneClient, type TokenValidator } from '../keystone/client.js';
import type { ServiceCredentials } from '../keystone/service-token.js';
import { IntrospectionClient } from '../oauth2/introspection-client.js';
import { type AuthObserver, type Logger, silentLogger } from '../observability/observer.js';
import { USER_AGENT } from '../version.js';
import { HostIdentityState, StateChanges } from './host-state.js';
import { MemcachedStore } from './memcached.js';
import { RevocationIndex } from './revocation.js';
import { RevocationPoller, type RevocationPollerOptions } from './revocation-poller.js';
import { type SharedStore, SharedTokenCache } from './shared-cache.js';
import { TokenCache } from './token-cache.js';
import { TokenChecker } from './token-checker.js';

export interface StateDependencies {
  /** Replaces Keystone entirely (see the `./testing` fixture). */
  readonly validator?: TokenValidator | undefined;
  /** undici dispatcher for Keystone; default: a keep-alive Agent with the TLS and timeout options. */
  readonly dispatcher?: Dispatcher | undefined;
  /** Wall clock in ms. */
  readonly now?: (() => number) | undefined;
  readonly logger?: Logger | undefined;
  readonly observer?: AuthObserver | undefined;
  /** Key of the token hash used for cache keys and log fingerprints; random per host by default. */
  readonly cacheHashKey?: Buffer | undefined;
  /** Replaces the memcached store built from `memcached_servers` (the shared tier's keys and crypto stay). */
  readonly sharedStore?: SharedStore | undefined;
}

/** Builds the host's identity state and starts its revocation polling. Logs the options' warnings once. */
export function assembleHostState(
  options: ResolvedAuthOptions,
  deps: StateDependencies = {},
): HostIdentityState {
  const logger = deps.logger ?? silentLogger;
  const observer = deps.observer ?? {};
  const now = deps.now ?? Date.now;
  warnAboutOptions(options, logger);

  const validator = deps.validator ?? validatorFor(options, deps.dispatcher, now, logger, observer);
  const cache = new TokenCache({
    ttlSeconds: options.tokenCacheTimeSeconds,
    maxEntries: options.tokenCacheMaxEntries,
    maxBytes: options.tokenCacheMaxBytes,
    now,
    hashKey: deps.cacheHashKey,
    staleSeconds: options.staleIfErrorSeconds,
    negativeSeconds: options.negativeCacheSeconds,
  });
  const shared = sharedTier(options, deps.sharedStore, now, logger, observer);
  const changes = new StateChanges();
  const index = new RevocationIndex();
  const revocation = revocationPoller(options, validator, {
    index,
    now,
    logger,
    observer,
    onNewEvents: (events) => {
      const { evicted, sharedKeys } = cache.sweep((info) => index.isRevoked(info));
      for (const key of sharedKeys) shared?.delete(key);
      changes.revoked(events);
      return evicted;
    },
  });
  const checker = new TokenChecker({
    validator,
    cache,
    shared,
    cacheTimeMs: Math.max(0, options.tokenCacheTimeSeconds) * 1000,
    revalidateAfterMs: options.tokenRevalidateSeconds * 1000,
    isRevoked: revocation === undefined ? undefined : (info) => index.isRevoked(info),
    renderCatalog: options.includeServiceCatalog,
    onForget: (key) => changes.forget([key]),
    now,
    observer,
    logger,
  });
  revocation?.start();
  return new HostIdentityState({ validator, cache, shared, checker, revocation, changes });
}

/** Said once per host at start-up (a cluster's workers stay quiet: the primary assembled the state). */
function warnAboutOptions(options: ResolvedAuthOptions, logger: Logger): void {
  if (options.externalOAuth2 !== undefined) {
    if (options.ignored.length > 0) {
      logger.warn({ options: options.ignored }, 'keystonemiddleware options ignored by this engine');
    }
    return;
  }
  if (options.wwwAuthenticateUri === undefined) {
    logger.warn(
      { fallback: options.authUrl ?? '' },
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
}

/** Keystone for the Keystone filters; the external authorization server for external_oauth2_token. */
function validatorFor(
  options: ResolvedAuthOptions,
  dispatcher: Dispatcher | undefined,
  now: () => number,
  logger: Logger,
  observer: AuthObserver,
): TokenValidator {
  const ext = options.externalOAuth2;
  if (ext === undefined) return keystoneClientFor(options, dispatcher, now, logger, observer);
  return new IntrospectionClient({
    ext,
    dispatcher: dispatcher ?? defaultDispatcher(options),
    userAgent: USER_AGENT,
    now,
    logger,
    observer,
  });
}

function keystoneClientFor(
  options: ResolvedAuthOptions,
  dispatcher: Dispatcher | undefined,
  now: () => number,
  logger: Logger,
  observer: AuthObserver,
): KeystoneClient {
  return new KeystoneClient({
    authUrl: options.authUrl ?? '',
    authVersion: options.authVersion,
    interface: options.interface,
    regionName: options.regionName,
    credentials: serviceCredentials(options),
    includeCatalog: options.includeServiceCatalog,
    dispatcher: dispatcher ?? defaultDispatcher(options),
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
}

/** The proxy's own credentials, with keystoneauth's default-domain fallbacks. */
export function serviceCredentials(options: ResolvedAuthOptions): ServiceCredentials {
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

function sharedTier(
  options: ResolvedAuthOptions,
  sharedStore: SharedStore | undefined,
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
    sharedStore ??
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

function revocationPoller(
  options: ResolvedAuthOptions,
  validator: TokenValidator,
  wiring: Pick<RevocationPollerOptions, 'index' | 'now' | 'logger' | 'observer' | 'onNewEvents'>,
): RevocationPoller | undefined {
  const interval = options.revocationPollIntervalSeconds;
  if (interval <= 0 || validator.revocationEvents === undefined) return undefined;
  return new RevocationPoller({
    ...wiring,
    fetchEvents: validator.revocationEvents.bind(validator),
    intervalMs: interval * 1000,
    // Past this, every cache entry written before an event has expired (cache time, stale window, the
    // validation's own budget), with two intervals and a minute of margin.
    retentionMs:
      (Math.max(0, options.tokenCacheTimeSeconds) +
        options.staleIfErrorSeconds +
        options.httpRequestTimeoutSeconds +
        2 * interval +
        60) *
      1000,
    unsupportedRetryMs: Math.max(300, interval) * 1000,
  });
}
