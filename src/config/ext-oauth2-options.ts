/**
 * The `ext_oauth2_auth` section: keystonemiddleware's external_oauth2_token options under their names (an
 * operator pastes the `[ext_oauth2_auth]` group), plus ours, which name their unit. Only read when `filter` is
 * `external_oauth2_token`; then it is required, and every problem is reported at once with its path.
 */
import { accessSync, constants } from 'node:fs';
import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';
import { bool, count, list, positiveSeconds, seconds, securityStrategy, text, url } from './option-types.js';

export const EXT_OAUTH2_SECTION = 'ext_oauth2_auth';

export const AUTH_METHODS = [
  'client_secret_basic',
  'client_secret_post',
  'tls_client_auth',
  'private_key_jwt',
  'client_secret_jwt',
] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

export const CHALLENGES = ['keystonemiddleware', 'rfc6750'] as const;
export type Challenge = (typeof CHALLENGES)[number];

/** keystonemiddleware options of this group that have no effect here: accepted, warned about once. */
export const IGNORED_EXT_OPTIONS: readonly string[] = [
  // A pipelined connection per server has no pool to size, wait for or expire (as for keystone_authtoken).
  'memcache_pool_maxsize',
  'memcache_pool_unused_timeout',
  'memcache_pool_conn_get_timeout',
  'memcache_use_advanced_pool',
  // keystoneauth's common options, registered in the group by keystonemiddleware; nothing here reads them.
  'auth_type',
  'auth_section',
];

const IGNORED_POOL =
  'Accepted for keystonemiddleware files; ignored (warned): one pipelined connection per server.';

/** A claim path: keys joined by dots (`project.domain.id`); no empty segment. */
const claimPath = z
  .string()
  .min(1, { message: 'must not be empty' })
  .refine((s) => s.split('.').every((part) => part.length > 0), {
    message: 'must be claim names joined by dots, with no empty name',
  });

export const extOAuth2OptionsSchema = z
  .object({
    introspect_endpoint: url.describe("The authorization server's RFC 7662 token introspection endpoint."),
    audience: text.describe(
      'The authorization server (its token endpoint URL): `aud` of JWT client assertions and the uri of the 401 challenge.',
    ),
    auth_method: z
      .enum(AUTH_METHODS)
      .default('client_secret_basic')
      .describe(
        'How the proxy authenticates to the introspection endpoint: client_secret_basic, client_secret_post, tls_client_auth, private_key_jwt, client_secret_jwt.',
      ),
    client_id: text.describe('The client id of the proxy at the authorization server.'),
    client_secret: z
      .string()
      .min(1, { message: 'must not be empty' })
      .optional()
      .describe('Its secret (client_secret_basic, client_secret_post, client_secret_jwt: the HMAC key).'),
    thumbprint_verify: bool
      .default(false)
      .describe(
        "Require the request's TLS client certificate to match the token's `cnf.x5t#S256` (RFC 8705 certificate-bound tokens).",
      ),
    client_certificate_header: text
      .optional()
      .describe(
        "thumbprint_verify behind an ingress that terminates TLS: the header carrying the verified client certificate (URL-encoded PEM, or base64 DER), as for oauth2_mtls_token. Trusted as is. Default: the proxy's own TLS listener.",
      ),
    jwt_key_file: text.optional().describe('PEM private key signing the client assertion (private_key_jwt).'),
    jwt_algorithm: text
      .optional()
      .describe(
        'Signing algorithm of the client assertion. Default: HS256 (client_secret_jwt), RS256 (private_key_jwt).',
      ),
    jwt_bearer_time_out: positiveSeconds
      .default(3600)
      .describe('Seconds a client assertion is valid (its `exp` is `iat` plus this).'),
    certfile: text
      .optional()
      .describe('PEM client certificate towards the authorization server (tls_client_auth).'),
    keyfile: text.optional().describe('PEM key of certfile.'),
    cafile: text.optional().describe("PEM CA bundle for the authorization server's TLS certificate."),
    insecure: bool.default(false).describe("Do not verify the authorization server's TLS certificate."),
    http_connect_timeout: positiveSeconds
      .default(2)
      .describe('Seconds to open a connection to the authorization server.'),
    mapping_project_id: claimPath.optional().describe('Claim holding the project id (project scope).'),
    mapping_project_name: claimPath.optional().describe('Claim holding the project name.'),
    mapping_project_domain_id: claimPath
      .optional()
      .describe("Claim holding the project's domain id (the domain id in domain scope)."),
    mapping_project_domain_name: claimPath
      .optional()
      .describe("Claim holding the project's domain name (the domain name in domain scope)."),
    mapping_user_id: claimPath.default('client_id').describe('Claim holding the user id.'),
    mapping_user_name: claimPath.default('username').describe('Claim holding the user name.'),
    mapping_user_domain_id: claimPath.describe("Claim holding the user's domain id."),
    mapping_user_domain_name: claimPath.describe("Claim holding the user's domain name."),
    mapping_roles: claimPath.describe(
      'Claim holding the role names: a comma-separated string (or a JSON array).',
    ),
    mapping_system_scope: claimPath
      .optional()
      .describe('Claim that is the boolean true for a system-scoped token.'),
    mapping_expires_at: claimPath
      .optional()
      .describe('Claim holding the expiry (epoch seconds). Default: the RFC 7662 `exp` claim.'),
    token_cache_time: seconds
      .default(300)
      .describe(
        'Seconds an introspection answer is cached (never past the token expiry); 0 or -1: no cache.',
      ),
    www_authenticate_challenge: z
      .enum(CHALLENGES)
      .default('keystonemiddleware')
      .describe(
        'keystonemiddleware: `WWW-Authenticate: Authorization OAuth 2.0 uri="<audience>"`; rfc6750: `Bearer realm="<audience>"` with error="invalid_token" when a token was sent.',
      ),
    jwks_uri: url
      .optional()
      .describe(
        'Verify JWT access tokens locally against this JWKS (no introspection round trip); other tokens are introspected.',
      ),
    jwt_issuer: text
      .optional()
      .describe('Required `iss` of locally verified JWT access tokens (needed with jwks_uri).'),
    jwt_audiences: list
      .optional()
      .describe('Accepted `aud` values of locally verified JWT access tokens; unset: `aud` not checked.'),
    jwt_access_token_algorithms: list
      .default(['RS256', 'PS256', 'ES256', 'EdDSA'])
      .describe('Signature algorithms accepted on locally verified JWT access tokens.'),
    jwks_cache_seconds: positiveSeconds
      .default(300)
      .describe(
        'How long the fetched JWKS is used before it is fetched again (an unknown `kid` refetches sooner).',
      ),
    jwt_clock_tolerance_seconds: seconds
      .pipe(z.number().min(0, { message: 'must be 0 or more (seconds)' }))
      .default(0)
      .describe('Clock skew allowed on `exp`/`nbf` of locally verified JWT access tokens.'),
    http_request_timeout_seconds: positiveSeconds
      .default(5)
      .describe('Budget for one introspection (or JWKS fetch), retries included.'),
    http_request_max_retries: count
      .default(3)
      .describe(
        'Retries of a request to the authorization server after a connection failure, within the budget.',
      ),
    retry_budget_per_second: count
      .default(10)
      .describe('Most connection retries to the authorization server per second, across all requests.'),
    circuit_breaker_failure_threshold: count
      .default(5)
      .describe(
        'Consecutive authorization server failures after which uncached tokens get 503 at once; 0 disables.',
      ),
    circuit_breaker_open_seconds: positiveSeconds
      .default(5)
      .describe('How long the breaker stays open before one probe request is let through.'),
    negative_cache_seconds: seconds
      .optional()
      .describe('Seconds an inactive token is answered 401 without asking again. Default: token_cache_time.'),
    stale_if_error_seconds: seconds
      .default(0)
      .describe(
        'While the authorization server is unreachable, serve a cached identity this long past its cache time.',
      ),
    token_cache_max_entries: count.default(10_000).describe('Most identities kept in the token cache.'),
    token_cache_max_bytes: count
      .default(64 * 1024 * 1024)
      .describe('Most bytes (estimated) the token cache may hold.'),
    // Accepted for keystonemiddleware's files; the values are checked as there, then ignored.
    memcached_servers: list
      .optional()
      .describe(
        'host:port of memcached servers shared by replicas (second cache tier, the mapped identity); unset: in-process only.',
      ),
    memcache_security_strategy: securityStrategy
      .default('None')
      .describe('None, MAC (entries signed) or ENCRYPT (signed and AES-encrypted), as keystonemiddleware.'),
    memcache_secret_key: z
      .string()
      .optional()
      .describe('Secret the per-token memcached keys are derived from; required with MAC or ENCRYPT.'),
    memcache_pool_dead_retry: seconds
      .default(30)
      .describe('Seconds a failed memcached server is skipped before a retry.'),
    memcache_pool_maxsize: count.optional().describe(IGNORED_POOL),
    memcache_pool_socket_timeout: positiveSeconds
      .default(0.5)
      .describe(
        'Deadline of one memcached operation; past it the request goes on to the authorization server.',
      ),
    memcache_pool_unused_timeout: seconds.optional().describe(IGNORED_POOL),
    memcache_pool_conn_get_timeout: seconds.optional().describe(IGNORED_POOL),
    memcache_use_advanced_pool: bool.optional().describe(IGNORED_POOL),
    auth_type: z
      .string()
      .optional()
      .describe("keystoneauth's, registered in the group by keystonemiddleware: ignored (warned)."),
    auth_section: z
      .string()
      .optional()
      .describe("keystoneauth's, registered in the group by keystonemiddleware: ignored (warned)."),
  })
  .strict();

export type ExtOAuth2OptionsInput = z.input<typeof extOAuth2OptionsSchema>;
type Parsed = z.output<typeof extOAuth2OptionsSchema>;

/** Claim paths of the identity, each split into its keys. */
export interface ClaimMapping {
  readonly projectId: readonly string[] | undefined;
  readonly projectName: readonly string[] | undefined;
  readonly projectDomainId: readonly string[] | undefined;
  readonly projectDomainName: readonly string[] | undefined;
  readonly userId: readonly string[];
  readonly userName: readonly string[];
  readonly userDomainId: readonly string[];
  readonly userDomainName: readonly string[];
  readonly roles: readonly string[];
  readonly systemScope: readonly string[] | undefined;
  readonly expiresAt: readonly string[] | undefined;
}

export interface LocalJwtOptions {
  readonly jwksUri: string;
  readonly issuer: string;
  readonly audiences: readonly string[] | undefined;
  readonly algorithms: readonly string[];
  readonly cacheSeconds: number;
  readonly clockToleranceSeconds: number;
}

export interface ResolvedExtOAuth2Options {
  readonly introspectEndpoint: string;
  readonly audience: string;
  readonly authMethod: AuthMethod;
  readonly clientId: string;
  readonly clientSecret: string | undefined;
  readonly thumbprintVerify: boolean;
  /** Lower-cased; undefined: the certificate of the connection. */
  readonly clientCertificateHeader: string | undefined;
  readonly jwtKeyFile: string | undefined;
  readonly jwtAlgorithm: string;
  readonly jwtBearerTimeOutSeconds: number;
  readonly tls: {
    readonly cafile: string | undefined;
    readonly certfile: string | undefined;
    readonly keyfile: string | undefined;
    readonly insecure: boolean;
  };
  readonly httpConnectTimeoutSeconds: number;
  readonly mapping: ClaimMapping;
  readonly challenge: Challenge;
  /** Local verification of JWT access tokens; undefined: every token is introspected. */
  readonly localJwt: LocalJwtOptions | undefined;
  readonly tokenCacheTimeSeconds: number;
  readonly negativeCacheSeconds: number;
  readonly staleIfErrorSeconds: number;
  readonly tokenCacheMaxEntries: number;
  readonly tokenCacheMaxBytes: number;
  readonly httpRequestTimeoutSeconds: number;
  readonly httpRequestMaxRetries: number;
  readonly retryBudgetPerSecond: number;
  readonly circuitBreakerFailureThreshold: number;
  readonly circuitBreakerOpenSeconds: number;
  /** The memcached tier's options, as keystone_authtoken names them (validated like those). */
  readonly memcache: {
    readonly memcached_servers: readonly string[] | undefined;
    readonly memcache_security_strategy: string;
    readonly memcache_secret_key: string | undefined;
    readonly memcache_pool_socket_timeout: number;
    readonly memcache_pool_dead_retry: number;
  };
  /** Options of keystonemiddleware's group given but without effect here. */
  readonly ignored: readonly string[];
}

const split = (path: string | undefined): readonly string[] | undefined =>
  path === undefined ? undefined : Object.freeze(path.split('.'));

function readable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** Rules across options, and files that must be readable at start rather than on the first request. */
export function extCrossIssues(o: Parsed): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const needsSecret =
    o.auth_method === 'client_secret_basic' ||
    o.auth_method === 'client_secret_post' ||
    o.auth_method === 'client_secret_jwt';
  if (needsSecret && o.client_secret === undefined) {
    issues.push({ path: 'client_secret', message: `is required with auth_method ${o.auth_method}` });
  }
  if (o.auth_method === 'private_key_jwt' && o.jwt_key_file === undefined) {
    issues.push({ path: 'jwt_key_file', message: 'is required with auth_method private_key_jwt' });
  }
  if (o.auth_method === 'tls_client_auth' && (o.certfile === undefined || o.keyfile === undefined)) {
    issues.push({
      path: 'certfile',
      message: 'certfile and keyfile are required with auth_method tls_client_auth',
    });
  } else if ((o.certfile === undefined) !== (o.keyfile === undefined)) {
    issues.push({ path: 'keyfile', message: 'certfile and keyfile go together' });
  }
  if (o.jwks_uri !== undefined && o.jwt_issuer === undefined) {
    issues.push({
      path: 'jwt_issuer',
      message: 'is required with jwks_uri (the issuer of the JWT access tokens)',
    });
  }
  for (const key of ['jwt_key_file', 'certfile', 'keyfile', 'cafile'] as const) {
    const file = o[key];
    if (file !== undefined && !readable(file)) issues.push({ path: key, message: `cannot read ${file}` });
  }
  return issues;
}

/** Parses and checks the section; issues carry paths under `prefix` (`ext_oauth2_auth.client_id`). */
export function resolveExtOAuth2Options(
  input: unknown,
  prefix = EXT_OAUTH2_SECTION,
): { options: ResolvedExtOAuth2Options; issues: [] } | { options: undefined; issues: ConfigIssue[] } {
  const at = (path: string): string => (prefix ? `${prefix}.${path}` : path);
  if (input === undefined || input === null) {
    return {
      options: undefined,
      issues: [
        { path: prefix || EXT_OAUTH2_SECTION, message: 'is required when filter is external_oauth2_token' },
      ],
    };
  }
  const parsed = extOAuth2OptionsSchema.safeParse(input);
  if (!parsed.success) {
    return {
      options: undefined,
      issues: parsed.error.issues.flatMap((issue) =>
        issue.code === 'unrecognized_keys'
          ? issue.keys.map((key) => ({ path: at([...issue.path, key].join('.')), message: 'unknown option' }))
          : [{ path: at(issue.path.map(String).join('.')), message: issue.message }],
      ),
    };
  }
  const o = parsed.data;
  const cross = extCrossIssues(o);
  if (cross.length > 0) {
    return { options: undefined, issues: cross.map((issue) => ({ ...issue, path: at(issue.path) })) };
  }
  const record = input as Record<string, unknown>;
  const options: ResolvedExtOAuth2Options = Object.freeze({
    introspectEndpoint: o.introspect_endpoint,
    audience: o.audience,
    authMethod: o.auth_method,
    clientId: o.client_id,
    clientSecret: o.client_secret,
    thumbprintVerify: o.thumbprint_verify,
    clientCertificateHeader: o.client_certificate_header?.toLowerCase(),
    jwtKeyFile: o.jwt_key_file,
    jwtAlgorithm: o.jwt_algorithm ?? (o.auth_method === 'private_key_jwt' ? 'RS256' : 'HS256'),
    jwtBearerTimeOutSeconds: o.jwt_bearer_time_out,
    tls: Object.freeze({ cafile: o.cafile, certfile: o.certfile, keyfile: o.keyfile, insecure: o.insecure }),
    httpConnectTimeoutSeconds: o.http_connect_timeout,
    mapping: Object.freeze({
      projectId: split(o.mapping_project_id),
      projectName: split(o.mapping_project_name),
      projectDomainId: split(o.mapping_project_domain_id),
      projectDomainName: split(o.mapping_project_domain_name),
      userId: split(o.mapping_user_id) as readonly string[],
      userName: split(o.mapping_user_name) as readonly string[],
      userDomainId: split(o.mapping_user_domain_id) as readonly string[],
      userDomainName: split(o.mapping_user_domain_name) as readonly string[],
      roles: split(o.mapping_roles) as readonly string[],
      systemScope: split(o.mapping_system_scope),
      expiresAt: split(o.mapping_expires_at),
    }),
    challenge: o.www_authenticate_challenge,
    localJwt:
      o.jwks_uri === undefined
        ? undefined
        : Object.freeze({
            jwksUri: o.jwks_uri,
            issuer: o.jwt_issuer as string,
            audiences: o.jwt_audiences === undefined ? undefined : Object.freeze([...o.jwt_audiences]),
            algorithms: Object.freeze([...o.jwt_access_token_algorithms]),
            cacheSeconds: o.jwks_cache_seconds,
            clockToleranceSeconds: o.jwt_clock_tolerance_seconds,
          }),
    tokenCacheTimeSeconds: o.token_cache_time,
    // keystonemiddleware caches an inactive answer like an active one, token_cache_time long.
    negativeCacheSeconds: Math.max(0, o.negative_cache_seconds ?? o.token_cache_time),
    staleIfErrorSeconds: Math.max(0, o.stale_if_error_seconds),
    tokenCacheMaxEntries: o.token_cache_max_entries,
    tokenCacheMaxBytes: o.token_cache_max_bytes,
    httpRequestTimeoutSeconds: o.http_request_timeout_seconds,
    httpRequestMaxRetries: o.http_request_max_retries,
    retryBudgetPerSecond: o.retry_budget_per_second,
    circuitBreakerFailureThreshold: o.circuit_breaker_failure_threshold,
    circuitBreakerOpenSeconds: o.circuit_breaker_open_seconds,
    memcache: Object.freeze({
      memcached_servers:
        o.memcached_servers === undefined ? undefined : Object.freeze([...o.memcached_servers]),
      memcache_security_strategy: o.memcache_security_strategy,
      memcache_secret_key: o.memcache_secret_key,
      memcache_pool_socket_timeout: o.memcache_pool_socket_timeout,
      memcache_pool_dead_retry: o.memcache_pool_dead_retry,
    }),
    ignored: Object.freeze(IGNORED_EXT_OPTIONS.filter((name) => record[name] !== undefined)),
  });
  return { options, issues: [] };
}
