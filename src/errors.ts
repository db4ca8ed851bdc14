/**
 * Every error this package throws carries a stable `code`, an HTTP `status` and the response `headers`, so
 * Express's finalhandler and Koa's ctx.onerror render it without glue. Match on `err.code`, never on messages.
 * Messages never contain token material.
 */
export type KsAuthErrorCode =
  | 'ERR_KSAUTH_CONFIG'
  | 'ERR_KSAUTH_INVALID_TOKEN'
  | 'ERR_KSAUTH_KEYSTONE_UNAVAILABLE'
  | 'ERR_KSAUTH_UPSTREAM';

export class KsAuthError extends Error {
  readonly code: KsAuthErrorCode;
  readonly status: number;
  readonly statusCode: number;
  readonly headers: Readonly<Record<string, string>>;
  /** Koa and http-errors read this: the message is safe to show to the client. */
  readonly expose: boolean;

  constructor(
    code: KsAuthErrorCode,
    status: number,
    message: string,
    options: { headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.statusCode = status;
    this.headers = Object.freeze({ ...(options.headers ?? {}) });
    this.expose = status < 500 || status === 503;
  }
}

export interface ConfigIssue {
  /** Dotted path of the offending option, e.g. `keystone_authtoken.token_cache_time`. */
  readonly path: string;
  readonly message: string;
}

/** Raised once at creation with every problem found, never per request. */
export class ConfigError extends KsAuthError {
  readonly issues: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[], context = 'invalid configuration') {
    const lines = issues.map((issue) => `  - ${issue.path || '(root)'}: ${issue.message}`);
    super('ERR_KSAUTH_CONFIG', 500, `${context} (${issues.length} problem(s)):\n${lines.join('\n')}`);
    this.issues = Object.freeze([...issues]);
  }
}

/** Why a token was not accepted; used for logs and metrics, never shown to the client. */
export type InvalidTokenReason =
  | 'missing'
  | 'not_found'
  | 'expired'
  | 'revoked'
  | 'malformed_body'
  /** external_oauth2_token: the token is active but its claims do not give the identity (403). */
  | 'claims_unmapped'
  | 'access_rule_denied'
  | 'bind_rejected'
  /** oauth2_mtls_token, external_oauth2_token with thumbprint_verify: no client certificate on the request. */
  | 'certificate_missing'
  /** … a certificate, not the one the token is bound to (or a token bound to none). */
  | 'certificate_mismatch'
  | 'service_token_invalid'
  | 'service_token_roles'
  | 'keystone_unavailable';

export class InvalidTokenError extends KsAuthError {
  readonly reason: InvalidTokenReason;

  constructor(reason: InvalidTokenReason, headers: Record<string, string> = {}) {
    super('ERR_KSAUTH_INVALID_TOKEN', 401, 'The request you have made requires authentication.', { headers });
    this.reason = reason;
  }
}

/** Why Keystone could not give an answer; bounded set, usable as a metric label. */
export type UnavailableReason =
  | 'timeout'
  | 'connect'
  | 'tls'
  | 'http_status'
  | 'service_auth_rejected'
  | 'bad_response'
  | 'discovery'
  | 'circuit_open'
  | 'retry_budget';

export class KeystoneUnavailableError extends KsAuthError {
  readonly reason: UnavailableReason;
  /** Keystone's HTTP status when it answered with one. */
  readonly keystoneStatus: number | undefined;
  /** When a retry may succeed (an open circuit breaker knows); undefined: the default. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    reason: UnavailableReason,
    message: string,
    options: { status?: number; cause?: unknown; retryAfterSeconds?: number } = {},
  ) {
    super('ERR_KSAUTH_KEYSTONE_UNAVAILABLE', 503, message, { cause: options.cause });
    this.reason = reason;
    this.keystoneStatus = options.status;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export class UpstreamError extends KsAuthError {
  constructor(status: 502 | 504, message: string, cause?: unknown) {
    super('ERR_KSAUTH_UPSTREAM', status, message, { cause });
  }
}

export type AnyKsAuthError = ConfigError | InvalidTokenError | KeystoneUnavailableError | UpstreamError;
