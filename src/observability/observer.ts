/**
 * Hooks the engine calls at the points worth measuring or logging. Types only: the core never imports
 * prom-client or pino; the sidecar wires these to its metrics and logger, embedders may pass their own.
 */

/** `introspect` and `jwks`: the external_oauth2_token filter's calls to its authorization server. */
export type KeystoneOperation =
  | 'discovery'
  | 'auth'
  | 'validate'
  | 'revocation_events'
  | 'introspect'
  | 'jwks';
/** Bounded: usable as a metric label. */
export type KeystoneOutcome =
  | 'ok'
  | 'invalid'
  | 'unauthorized'
  | 'forbidden'
  | 'http_error'
  | 'timeout'
  | 'connect_error'
  | 'tls_error'
  | 'bad_response';

export type CacheEvent =
  | 'hit'
  | 'miss'
  | 'coalesced'
  | 'expired'
  | 'stale'
  /** Served from memcached (the LRU had missed). */
  | 'shared_hit'
  /** A memcached entry that failed its MAC, did not decrypt or did not parse: treated as a miss. */
  | 'shared_rejected'
  /** Answered from the negative cache. */
  | 'negative_hit'
  /** An identity matching a known revocation event, refused. */
  | 'revoked'
  /** A cached identity older than token_revalidate_seconds sent to Keystone in the background. */
  | 'revalidate';
export type CircuitState = 'closed' | 'open' | 'half_open';

export interface AuthObserver {
  keystoneRequest?(operation: KeystoneOperation, outcome: KeystoneOutcome, durationSeconds: number): void;
  cache?(event: CacheEvent): void;
  serviceTokenRefresh?(outcome: 'ok' | 'error'): void;
  circuitState?(state: CircuitState): void;
  /** One poll of Keystone's revocation events: how many were new, how many cached identities they removed. */
  revocationPoll?(outcome: 'ok' | 'error' | 'unsupported', newEvents: number, evicted: number): void;
  /** One memcached operation of the shared cache tier. */
  memcached?(operation: MemcachedOperation, outcome: MemcachedOutcome, durationSeconds: number): void;
  /** A cluster worker asked its primary about a token its own L1 did not hold. */
  hostLookup?(outcome: HostLookupOutcome, durationSeconds: number): void;
}

/** `unanswered`: the primary did not answer in time, or is gone (the request gets 503). */
export type HostLookupOutcome = 'valid' | 'invalid' | 'unavailable' | 'unanswered';

export type MemcachedOperation = 'get' | 'set' | 'delete';
/** `skipped_down`: the server is marked down, answered at once without trying it. */
export type MemcachedOutcome = 'hit' | 'miss' | 'ok' | 'error' | 'timeout' | 'skipped_down';

/** The `msg` of the one access-log line per request (the logger writes only these lines together). */
export const ACCESS_LOG_MESSAGE = 'request';

/** The subset of pino's API the engine uses; pino loggers satisfy it. */
export interface Logger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const noop = (): void => {};
export const silentLogger: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });

/** The listeners that can serve TLS; a metric label. */
export type TlsListenerName = 'proxy' | 'admin' | 'forward_auth';
/**
 * Why a TLS handshake failed (bounded: a metric label). untrusted_certificate: a client certificate that does not
 * chain to client_cafile (or has expired); plain_http: an http request on the https port; aborted: the client
 * went away before finishing (a TCP probe, say).
 */
export type TlsHandshakeFailure =
  | 'no_certificate'
  | 'untrusted_certificate'
  | 'protocol_version'
  | 'plain_http'
  | 'aborted'
  | 'other';

/** Hooks of the TLS listeners (src/tls/listener-tls.ts). */
export interface TlsObserver {
  tlsHandshakeFailure?(listener: TlsListenerName, reason: TlsHandshakeFailure): void;
  /** A reload of the listener's certificate files (SIGHUP or a change seen on disk). */
  tlsReload?(listener: TlsListenerName, result: 'ok' | 'error'): void;
  /** The served certificate's notAfter, in Unix seconds, at start and after each reload. */
  tlsCertificateExpiry?(listener: TlsListenerName, notAfterSeconds: number): void;
}
