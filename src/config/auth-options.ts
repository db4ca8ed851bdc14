/**
 * The engine's options, under keystonemiddleware's `[keystone_authtoken]` names so an operator can paste that
 * section. One schema: it validates, converts oslo-style strings, documents (see `describeAuthOptions`) and types.
 * Options we add name their unit. Validated once at creation; every problem is reported at once.
 */
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import type { MemcacheSecurityStrategy } from '../state/memcache-crypt.js';
import {
  EXT_OAUTH2_SECTION,
  type ExtOAuth2OptionsInput,
  type ResolvedExtOAuth2Options,
  resolveExtOAuth2Options,
} from './ext-oauth2-options.js';
import {
  bool,
  count,
  list,
  numberLike,
  positiveSeconds,
  seconds,
  securityStrategy,
  text,
  toIssues,
  url,
} from './option-types.js';

/** oslo.config refuses to start with TLS or SASL it cannot honour; so do we (memjs here speaks neither). */
const unsupportedWhenTrue = (feature: string) =>
  bool.refine((value) => !value, { message: `${feature} is not supported by this engine` });

const INTERFACES = {
  public: 'public',
  publicurl: 'public',
  internal: 'internal',
  internalurl: 'internal',
  admin: 'admin',
  adminurl: 'admin',
} as const;

/** keystonemiddleware options that belong to features this engine does not have (yet): accepted, warned. */
export const IGNORED_KSM_OPTIONS: readonly string[] = [
  // A pipelined connection per server has no pool to size, wait for or expire (see memcache_pool_maxsize).
  'memcache_pool_unused_timeout',
  'memcache_pool_conn_get_timeout',
  'memcache_use_advanced_pool',
  'memcache_tls_cafile',
  'memcache_tls_certfile',
  'memcache_tls_keyfile',
  'memcache_tls_allowed_ciphers',
  'memcache_username',
  'memcache_password',
  'cache',
  'auth_section',
  'log_name',
];

/**
 * keystonemiddleware's paste filters this engine can act as. Not a `[keystone_authtoken]` option there (it is the
 * filter's name in the paste pipeline); here an option of the engine, and the sidecar YAML's top-level `filter`.
 */
export const FILTERS = ['auth_token', 'oauth2_token', 'oauth2_mtls_token', 'external_oauth2_token'] as const;
export type FilterName = (typeof FILTERS)[number];

export const filterSchema = z
  .enum(FILTERS)
  .default('auth_token')
  .describe(
    "Which keystonemiddleware filter to act as: auth_token (X-Auth-Token, X-Service-Token), oauth2_token (Keystone's OAuth2 client-credentials tokens, or any Keystone token, from Authorization: Bearer), oauth2_mtls_token (the same, bound to the client's TLS certificate) or external_oauth2_token (Bearer tokens of an external OAuth 2.0 authorization server, by RFC 7662 introspection; options in ext_oauth2_auth).",
  );

export const authOptionsSchema = z
  .object({
    filter: filterSchema,
    // Checked by its own schema (src/config/ext-oauth2-options.ts), and only when the filter is external; typed
    // here for embedders.
    ext_oauth2_auth: z.custom<ExtOAuth2OptionsInput>(() => true).optional(),
    www_authenticate_uri: url
      .optional()
      .describe(
        'Value of `WWW-Authenticate: Keystone uri="…"` on 401 answers. Default: auth_url (with a warning).',
      ),
    auth_uri: url.optional().describe('Deprecated name of www_authenticate_uri.'),
    auth_url: url.optional().describe("Keystone URL for the proxy's own credentials, with or without /v3."),
    auth_type: z
      .enum(['password', 'v3password', 'v3applicationcredential'])
      .default('password')
      .describe('How the proxy authenticates itself: password or v3applicationcredential.'),
    auth_version: z.string().optional().describe('When set, skip version discovery and speak v3.'),
    username: text
      .optional()
      .describe('Service user name (password auth; also the app credential owner by name).'),
    user_id: text.optional().describe('Service user id, instead of username + user domain.'),
    password: z.string().optional().describe('Service user password.'),
    user_domain_name: text.optional().describe('Domain of username.'),
    user_domain_id: text.optional().describe('Domain id of username.'),
    project_name: text
      .optional()
      .describe('Project the service token is scoped to (it needs the service role there).'),
    project_id: text.optional().describe('Project id, instead of project_name + project domain.'),
    project_domain_name: text.optional().describe('Domain of project_name.'),
    project_domain_id: text.optional().describe('Domain id of project_name.'),
    domain_name: text.optional().describe('Domain scope for the service token, instead of a project.'),
    domain_id: text.optional().describe('Domain id scope for the service token.'),
    system_scope: z.literal('all').optional().describe('System scope (`all`) for the service token.'),
    default_domain_name: text
      .optional()
      .describe('Domain name used for the user and project when theirs is unset.'),
    default_domain_id: text
      .optional()
      .describe('Domain id used for the user and project when theirs is unset.'),
    application_credential_id: text
      .optional()
      .describe('Application credential id (v3applicationcredential).'),
    application_credential_name: text
      .optional()
      .describe('Application credential name, with username or user_id.'),
    application_credential_secret: z.string().optional().describe('Application credential secret.'),
    interface: z
      .string()
      .default('internal')
      .refine((s) => s.toLowerCase() in INTERFACES, { message: 'must be public, internal or admin' })
      .transform((s) => INTERFACES[s.toLowerCase() as keyof typeof INTERFACES])
      .describe('Interface of the identity endpoint taken from the catalog.'),
    region_name: text.optional().describe('Region of the identity endpoint taken from the catalog.'),
    delay_auth_decision: bool
      .default(false)
      .describe('Never reject: forward with X-Identity-Status: Invalid and let the service decide.'),
    include_service_catalog: bool
      .default(true)
      .describe('Set X-Service-Catalog; when false, validate with ?nocatalog.'),
    service_token_roles: list.default(['service']).describe('A service token needs one of these roles.'),
    service_token_roles_required: bool
      .default(true)
      .describe('Reject a service token without one of service_token_roles.'),
    service_type: text.optional().describe("This service's catalog type; needed to enforce access rules."),
    token_cache_time: seconds
      .default(300)
      .describe('Seconds a validated token is cached (never past its expiry); 0 or -1 disables the cache.'),
    enforce_token_bind: z
      .string()
      .default('permissive')
      .describe('disabled, permissive, strict, required, or a bind type name.'),
    http_connect_timeout: positiveSeconds.default(2).describe('Seconds to open a connection to Keystone.'),
    http_request_max_retries: count
      .default(3)
      .describe('Retries of a Keystone request after a connection failure, within the time budget.'),
    cafile: text.optional().describe("PEM CA bundle for Keystone's TLS certificate."),
    certfile: text.optional().describe('PEM client certificate for Keystone.'),
    keyfile: text.optional().describe('PEM client key for Keystone.'),
    insecure: bool.default(false).describe("Do not verify Keystone's TLS certificate."),
    http_request_timeout_seconds: positiveSeconds
      .default(5)
      .describe('Budget for one validation, service authentication and retries included.'),
    token_cache_max_entries: count
      .default(10_000)
      .describe('Most identities kept in the token cache (allow_expired answers: an eighth more, apart).'),
    circuit_breaker_failure_threshold: count
      .default(5)
      .describe('Consecutive Keystone failures after which uncached tokens get 503 at once; 0 disables.'),
    circuit_breaker_open_seconds: positiveSeconds
      .default(5)
      .describe('How long the breaker stays open before one probe request is let through.'),
    retry_budget_per_second: count
      .default(10)
      .describe('Most connection retries to Keystone per second, across all requests.'),
    stale_if_error_seconds: seconds
      .default(0)
      .describe(
        'While Keystone is unavailable, serve a cached identity this long past its cache time; 0: off.',
      ),
    token_cache_max_bytes: count
      .default(64 * 1024 * 1024)
      .describe('Most bytes (estimated) the token cache may hold.'),
    memcached_servers: list
      .optional()
      .describe(
        'host:port of memcached servers shared by replicas (second cache tier); unset: in-process only.',
      ),
    memcache_servers: list.optional().describe('Deprecated name of memcached_servers.'),
    memcache_security_strategy: securityStrategy
      .default('None')
      .describe('None, MAC (entries signed) or ENCRYPT (signed and AES-encrypted), as keystonemiddleware.'),
    memcache_secret_key: z
      .string()
      .optional()
      .describe('Secret the per-token memcached keys are derived from; required with MAC or ENCRYPT.'),
    memcache_pool_socket_timeout: positiveSeconds
      .default(0.5)
      .describe('Deadline of one memcached operation; past it the request goes on to Keystone.'),
    memcache_pool_dead_retry: seconds
      .default(30)
      .describe('Seconds a failed memcached server is skipped (answered as a miss at once) before a retry.'),
    memcache_pool_maxsize: numberLike
      .pipe(z.number().int({ message: 'must be a whole number' }).min(1))
      .default(10)
      .describe('Upper bound of connections per memcached server; requests are pipelined on one.'),
    memcache_tls_enabled: unsupportedWhenTrue('memcached TLS').default(false).describe('Must stay false.'),
    memcache_sasl_enabled: unsupportedWhenTrue('memcached SASL').default(false).describe('Must stay false.'),
    revocation_poll_interval_seconds: seconds
      .default(10)
      .describe(
        'Poll Keystone revocation events (OS-REVOKE) this often and drop revoked identities from both cache tiers; 0: off.',
      ),
    token_revalidate_seconds: seconds
      .default(0)
      .describe(
        'Re-validate in the background (request not held) an identity confirmed longer ago than this: catches role changes, which make no revocation event; 0: off.',
      ),
    negative_cache_seconds: seconds
      .default(0)
      .describe(
        'Answer a token Keystone called invalid with 401 for this long without asking again (never for allow_expired); 0: off.',
      ),
    client_certificate_header: text
      .optional()
      .describe(
        "oauth2_mtls_token behind an ingress that terminates TLS: the header carrying the verified client certificate (URL-encoded PEM, or base64 DER). Trusted as is: set it only when every request comes through an ingress that overwrites it. Default: the certificate of the proxy's own TLS listener.",
      ),
    ...Object.fromEntries(IGNORED_KSM_OPTIONS.map((name) => [name, z.unknown().optional()])),
  })
  .strict();

export type AuthOptionsInput = z.input<typeof authOptionsSchema>;
type Parsed = z.output<typeof authOptionsSchema>;

export type BindMode = 'disabled' | 'permissive' | 'strict' | 'required' | { readonly name: string };

export interface ResolvedAuthOptions {
  readonly filter: FilterName;
  /** Lower-case name of the ingress header with the client certificate (oauth2_mtls_token). */
  readonly clientCertificateHeader: string | undefined;
  readonly wwwAuthenticateUri: string | undefined;
  readonly authUrl: string | undefined;
  readonly authType: 'password' | 'v3applicationcredential';
  readonly authVersion: string | undefined;
  readonly credentials: Parsed;
  readonly interface: 'public' | 'internal' | 'admin';
  readonly regionName: string | undefined;
  readonly delayAuthDecision: boolean;
  readonly includeServiceCatalog: boolean;
  readonly serviceTokenRoles: readonly string[];
  readonly serviceTokenRolesRequired: boolean;
  readonly serviceType: string | undefined;
  readonly tokenCacheTimeSeconds: number;
  readonly tokenCacheMaxEntries: number;
  readonly tokenCacheMaxBytes: number;
  readonly circuitBreakerFailureThreshold: number;
  readonly circuitBreakerOpenSeconds: number;
  readonly retryBudgetPerSecond: number;
  readonly staleIfErrorSeconds: number;
  /** Second cache tier; `undefined` when no memcached server is configured. */
  readonly memcached: MemcachedOptions | undefined;
  readonly revocationPollIntervalSeconds: number;
  readonly tokenRevalidateSeconds: number;
  readonly negativeCacheSeconds: number;
  readonly enforceTokenBind: BindMode;
  readonly httpConnectTimeoutSeconds: number;
  readonly httpRequestMaxRetries: number;
  readonly httpRequestTimeoutSeconds: number;
  readonly tls: {
    readonly cafile: string | undefined;
    readonly certfile: string | undefined;
    readonly keyfile: string | undefined;
    readonly insecure: boolean;
  };
  /** keystonemiddleware options given but not used by this engine. */
  readonly ignored: readonly string[];
  /** external_oauth2_token's `ext_oauth2_auth` section; undefined for the Keystone filters. */
  readonly externalOAuth2: ResolvedExtOAuth2Options | undefined;
}

export interface MemcachedOptions {
  readonly servers: readonly string[];
  readonly securityStrategy: MemcacheSecurityStrategy;
  /** The strategy as configured: part of the key derivation, so it must match keystonemiddleware's. */
  readonly securityStrategyText: string;
  readonly secretKey: string | undefined;
  readonly socketTimeoutSeconds: number;
  readonly deadRetrySeconds: number;
}

export interface ResolveContext {
  /** Prefix for issue paths, e.g. `keystone_authtoken`. */
  readonly pathPrefix?: string;
  /** A validator was injected (testing fixture): Keystone credentials are not needed. */
  readonly credentialsOptional?: boolean;
}

const DEFAULT_MEMCACHED_PORT = 11211;

/**
 * Host and port of one `memcached_servers` entry, in python-memcached's forms: host, host:port, inet:host:port,
 * [v6]:port, inet6:[v6]:port (port 11211 when left out). Unix sockets are not supported here.
 */
export function parseMemcachedServer(spec: string): { host: string; port: number } {
  const match =
    /^(?:inet6:)?\[([^[\]]+)\](?::(\d+))?$/.exec(spec) ?? /^(?:inet:)?([^\s:[\]]+)(?::(\d+))?$/.exec(spec);
  const port = match?.[2] === undefined ? DEFAULT_MEMCACHED_PORT : Number(match[2]);
  if (!match?.[1] || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TypeError(`memcached server "${spec}" is not host:port, [ipv6]:port or inet6:[ipv6]:port`);
  }
  return { host: match[1], port };
}

/** The memcached options, as both sections name them. */
type MemcacheFields = {
  readonly memcached_servers?: readonly string[] | undefined;
  readonly memcache_servers?: readonly string[] | undefined;
  readonly memcache_security_strategy: string;
  readonly memcache_secret_key?: string | undefined;
  readonly memcache_pool_socket_timeout: number;
  readonly memcache_pool_dead_retry: number;
};

function memcacheIssues(o: MemcacheFields): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  if (
    o.memcache_security_strategy.toLowerCase() !== 'none' &&
    (o.memcache_secret_key === undefined || o.memcache_secret_key.length === 0)
  ) {
    issues.push({
      path: 'memcache_secret_key',
      message: 'is required when memcache_security_strategy is MAC or ENCRYPT',
    });
  }
  for (const server of o.memcached_servers ?? o.memcache_servers ?? []) {
    try {
      parseMemcachedServer(server);
    } catch (error) {
      issues.push({ path: 'memcached_servers', message: (error as Error).message });
    }
  }
  return issues;
}

function crossFieldIssues(o: Parsed, credentialsOptional: boolean): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  if (credentialsOptional) return issues;
  if (o.auth_url === undefined) issues.push({ path: 'auth_url', message: 'is required' });
  if (o.auth_type === 'v3applicationcredential') {
    if (o.application_credential_secret === undefined) {
      issues.push({
        path: 'application_credential_secret',
        message: 'is required for v3applicationcredential',
      });
    }
    if (o.application_credential_id === undefined) {
      if (o.application_credential_name === undefined) {
        issues.push({
          path: 'application_credential_id',
          message: 'application_credential_id or application_credential_name is required',
        });
      } else if (o.user_id === undefined && o.username === undefined) {
        issues.push({
          path: 'username',
          message: 'user_id or username is required with application_credential_name',
        });
      }
    }
    return issues;
  }
  if (o.password === undefined)
    issues.push({ path: 'password', message: 'is required for auth_type password' });
  if (o.user_id === undefined && o.username === undefined) {
    issues.push({ path: 'username', message: 'username or user_id is required' });
  }
  if (
    o.user_id === undefined &&
    o.username !== undefined &&
    o.user_domain_id === undefined &&
    o.user_domain_name === undefined &&
    o.default_domain_id === undefined &&
    o.default_domain_name === undefined
  ) {
    issues.push({
      path: 'user_domain_name',
      message: 'user_domain_name or user_domain_id is required with username',
    });
  }
  if (
    o.project_id === undefined &&
    o.project_name !== undefined &&
    o.project_domain_id === undefined &&
    o.project_domain_name === undefined &&
    o.default_domain_id === undefined &&
    o.default_domain_name === undefined
  ) {
    issues.push({
      path: 'project_domain_name',
      message: 'project_domain_name or project_domain_id is required with project_name',
    });
  }
  if ((o.certfile === undefined) !== (o.keyfile === undefined)) {
    issues.push({ path: 'keyfile', message: 'certfile and keyfile go together' });
  }
  return issues;
}

function bindMode(value: string): BindMode {
  const lower = value.toLowerCase();
  if (lower === 'disabled' || lower === 'permissive' || lower === 'strict' || lower === 'required')
    return lower;
  return { name: value };
}

function memcachedOptions(o: MemcacheFields): MemcachedOptions | undefined {
  const servers = o.memcached_servers ?? o.memcache_servers ?? [];
  if (servers.length === 0) return undefined;
  const lower = o.memcache_security_strategy.toLowerCase();
  return Object.freeze({
    servers: Object.freeze([...servers]),
    // keystonemiddleware encrypts only when the option reads `ENCRYPT` exactly; other spellings only sign.
    securityStrategy:
      lower === 'none' ? 'None' : o.memcache_security_strategy === 'ENCRYPT' ? 'ENCRYPT' : 'MAC',
    securityStrategyText: o.memcache_security_strategy,
    secretKey: o.memcache_secret_key,
    socketTimeoutSeconds: o.memcache_pool_socket_timeout,
    deadRetrySeconds: Math.max(0, o.memcache_pool_dead_retry),
  });
}

/** Validates raw options; throws one ConfigError listing every problem. */
export function resolveAuthOptions(input: unknown, context: ResolveContext = {}): ResolvedAuthOptions {
  const prefix = context.pathPrefix ?? '';
  const parsed = authOptionsSchema.safeParse(input ?? {});
  if (!parsed.success) throw new ConfigError(toIssues(parsed.error, prefix));
  const o = parsed.data;
  const external = o.filter === 'external_oauth2_token';
  // The external filter never talks to Keystone: no service credentials to check.
  const cross = [
    ...memcacheIssues(o),
    ...crossFieldIssues(o, external || context.credentialsOptional === true),
  ];
  const issues: ConfigIssue[] = cross.map((issue) => ({
    ...issue,
    path: prefix ? `${prefix}.${issue.path}` : issue.path,
  }));
  // The section sits beside keystone_authtoken in the sidecar's file: its paths are not under the prefix.
  const ext = external ? resolveExtOAuth2Options(o.ext_oauth2_auth, EXT_OAUTH2_SECTION) : undefined;
  if (ext !== undefined) issues.push(...ext.issues);
  if (ext?.options !== undefined) {
    for (const issue of memcacheIssues(ext.options.memcache)) {
      issues.push({ ...issue, path: `${EXT_OAUTH2_SECTION}.${issue.path}` });
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);
  const record = input as Record<string, unknown>;
  const keystone: ResolvedAuthOptions = Object.freeze({
    filter: o.filter,
    clientCertificateHeader: o.client_certificate_header?.toLowerCase(),
    wwwAuthenticateUri: o.www_authenticate_uri ?? o.auth_uri,
    authUrl: o.auth_url,
    authType: o.auth_type === 'v3applicationcredential' ? 'v3applicationcredential' : 'password',
    authVersion: o.auth_version,
    credentials: o,
    interface: o.interface,
    regionName: o.region_name,
    delayAuthDecision: o.delay_auth_decision,
    includeServiceCatalog: o.include_service_catalog,
    serviceTokenRoles: Object.freeze([...o.service_token_roles]),
    serviceTokenRolesRequired: o.service_token_roles_required,
    serviceType: o.service_type,
    tokenCacheTimeSeconds: o.token_cache_time,
    tokenCacheMaxEntries: o.token_cache_max_entries,
    tokenCacheMaxBytes: o.token_cache_max_bytes,
    circuitBreakerFailureThreshold: o.circuit_breaker_failure_threshold,
    circuitBreakerOpenSeconds: o.circuit_breaker_open_seconds,
    retryBudgetPerSecond: o.retry_budget_per_second,
    staleIfErrorSeconds: Math.max(0, o.stale_if_error_seconds),
    memcached: memcachedOptions(o),
    revocationPollIntervalSeconds: Math.max(0, o.revocation_poll_interval_seconds),
    tokenRevalidateSeconds: Math.max(0, o.token_revalidate_seconds),
    negativeCacheSeconds: Math.max(0, o.negative_cache_seconds),
    enforceTokenBind: bindMode(o.enforce_token_bind),
    httpConnectTimeoutSeconds: o.http_connect_timeout,
    httpRequestMaxRetries: o.http_request_max_retries,
    httpRequestTimeoutSeconds: o.http_request_timeout_seconds,
    tls: Object.freeze({ cafile: o.cafile, certfile: o.certfile, keyfile: o.keyfile, insecure: o.insecure }),
    ignored: Object.freeze(IGNORED_KSM_OPTIONS.filter((name) => record?.[name] !== undefined)),
    externalOAuth2: undefined,
  });
  return ext?.options === undefined ? keystone : externalEngineOptions(keystone, ext.options);
}

/**
 * The engine's options for external_oauth2_token: the cache, breaker and HTTP budgets of `ext_oauth2_auth`; what
 * only Keystone has (service token, catalog, revocation events, bind, delay_auth_decision) off.
 */
function externalEngineOptions(
  base: ResolvedAuthOptions,
  ext: ResolvedExtOAuth2Options,
): ResolvedAuthOptions {
  return Object.freeze({
    ...base,
    wwwAuthenticateUri: ext.audience,
    clientCertificateHeader: ext.clientCertificateHeader,
    delayAuthDecision: false,
    includeServiceCatalog: false,
    serviceType: undefined,
    tokenCacheTimeSeconds: ext.tokenCacheTimeSeconds,
    tokenCacheMaxEntries: ext.tokenCacheMaxEntries,
    tokenCacheMaxBytes: ext.tokenCacheMaxBytes,
    circuitBreakerFailureThreshold: ext.circuitBreakerFailureThreshold,
    circuitBreakerOpenSeconds: ext.circuitBreakerOpenSeconds,
    retryBudgetPerSecond: ext.retryBudgetPerSecond,
    staleIfErrorSeconds: ext.staleIfErrorSeconds,
    memcached: memcachedOptions(ext.memcache),
    revocationPollIntervalSeconds: 0,
    tokenRevalidateSeconds: 0,
    negativeCacheSeconds: ext.negativeCacheSeconds,
    enforceTokenBind: 'disabled',
    httpConnectTimeoutSeconds: ext.httpConnectTimeoutSeconds,
    httpRequestMaxRetries: ext.httpRequestMaxRetries,
    httpRequestTimeoutSeconds: ext.httpRequestTimeoutSeconds,
    tls: ext.tls,
    ignored: Object.freeze(ext.ignored.map((name) => `${EXT_OAUTH2_SECTION}.${name}`)),
    externalOAuth2: ext,
  });
}

export interface OptionDoc {
  readonly name: string;
  readonly default: string;
  readonly description: string;
}

/** One row per option, for the README reference table. */
export function describeAuthOptions(): OptionDoc[] {
  const defaults = authOptionsSchema.parse({});
  return Object.entries(authOptionsSchema.shape)
    .filter(
      ([name]) => !IGNORED_KSM_OPTIONS.includes(name) && name !== 'filter' && name !== 'ext_oauth2_auth',
    )
    .map(([name, schema]) => {
      const value = (defaults as Record<string, unknown>)[name];
      return {
        name,
        default: value === undefined ? '' : JSON.stringify(value),
        description: (schema as z.ZodType).description ?? '',
      };
    });
}
