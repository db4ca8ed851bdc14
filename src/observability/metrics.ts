/**
 * Every Prometheus metric the proxy exposes is defined here, on a registry of its own: embedding the package
 * must never add series to the host application's global prom-client register.
 * Label values only ever come from the fixed sets below, never from request data (tokens, users, paths).
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { InvalidTokenReason } from '../errors.js';
import type {
  AuthObserver,
  CacheEvent,
  CircuitState,
  HostLookupOutcome,
  KeystoneOperation,
  KeystoneOutcome,
  MemcachedOperation,
  MemcachedOutcome,
  TlsHandshakeFailure,
  TlsListenerName,
  TlsObserver,
} from './observer.js';

export type RequestDecision =
  | 'confirmed'
  | 'rejected'
  | 'unavailable'
  | 'delegated'
  | 'public'
  | 'bad_request'
  | 'admin';
export type UpstreamErrorReason =
  | 'connect_refused'
  | 'connect_timeout'
  | 'reset'
  | 'response_timeout'
  | 'other';

export interface MetricsSource {
  /** The host state's cache (one process, or a cluster's primary). */
  cacheEntries?(): number;
  cacheBytes?(): number;
  validationsInFlight?(): number;
  /** A cluster worker's own L1. */
  workerCacheEntries?(): number;
}

export interface ProxyMetrics extends Required<AuthObserver>, Required<TlsObserver> {
  readonly registry: Registry;
  readonly contentType: string;
  /** Increments the in-flight gauge; the returned function decrements it (idempotent). */
  requestStarted(): () => void;
  /** One finished client request: decision, HTTP method (normalised), status code, duration. */
  request(decision: RequestDecision, method: string, status: number, durationSeconds: number): void;
  /** Why a token was (not) accepted: 'confirmed' or an InvalidTokenReason, or 'keystone_unavailable'. */
  authDecision(result: string): void;
  upstreamError(reason: UpstreamErrorReason): void;
  /** Gauges read at scrape time (collect callbacks): cache entries/bytes, Keystone validations in flight. */
  track(source: MetricsSource): void;
  /** The exposition text. */
  scrape(): Promise<string>;
}

export interface MetricsOptions {
  /** Namespace of every metric except the Node process ones, e.g. `keystone_auth_proxy`. */
  prefix: string;
  /** Reported as the `version` label of `<prefix>_build_info`. */
  version: string;
  /** Node's default process metrics (unprefixed, standard names); default true. */
  collectProcessMetrics?: boolean;
  /** Defaults to a fresh Registry; pass one to merge with an embedder's own (names must not clash). */
  registry?: Registry;
  /**
   * `worker`: a cluster worker, whose /metrics the primary adds to its own: the host state's metrics (Keystone,
   * cache size, breaker, memcached, revocation, service token) are left to the primary. Default `process`.
   */
  role?: 'process' | 'worker';
  /** Reported as `<prefix>_auth_filter_info{filter}`: which keystonemiddleware filter decides. */
  filter?: string;
}

// Records keyed by the unions make the compiler reject a union member that is missing here.
const KEYSTONE_OPERATIONS: Record<KeystoneOperation, true> = {
  discovery: true,
  auth: true,
  validate: true,
  revocation_events: true,
  introspect: true,
  jwks: true,
};
const KEYSTONE_OUTCOMES: Record<KeystoneOutcome, true> = {
  ok: true,
  invalid: true,
  unauthorized: true,
  forbidden: true,
  http_error: true,
  timeout: true,
  connect_error: true,
  tls_error: true,
  bad_response: true,
};
const CACHE_EVENTS: Record<CacheEvent, true> = {
  hit: true,
  miss: true,
  coalesced: true,
  expired: true,
  stale: true,
  shared_hit: true,
  shared_rejected: true,
  negative_hit: true,
  revoked: true,
  revalidate: true,
};
const MEMCACHED_OPERATIONS: Record<MemcachedOperation, true> = { get: true, set: true, delete: true };
const MEMCACHED_OUTCOMES: Record<MemcachedOutcome, true> = {
  hit: true,
  miss: true,
  ok: true,
  error: true,
  timeout: true,
  skipped_down: true,
};
const REVOCATION_POLL_OUTCOMES: Record<'ok' | 'error' | 'unsupported', true> = {
  ok: true,
  error: true,
  unsupported: true,
};
const HOST_LOOKUP_OUTCOMES: Record<HostLookupOutcome, true> = {
  valid: true,
  invalid: true,
  unavailable: true,
  unanswered: true,
};
const TLS_LISTENERS: Record<TlsListenerName, true> = { proxy: true, admin: true, forward_auth: true };
const TLS_HANDSHAKE_FAILURES: Record<TlsHandshakeFailure, true> = {
  no_certificate: true,
  untrusted_certificate: true,
  protocol_version: true,
  plain_http: true,
  aborted: true,
  other: true,
};
const TLS_RELOAD_RESULTS: Record<'ok' | 'error', true> = { ok: true, error: true };
const CIRCUIT_STATES: Record<CircuitState, true> = { closed: true, open: true, half_open: true };
const UPSTREAM_ERROR_REASONS: Record<UpstreamErrorReason, true> = {
  connect_refused: true,
  connect_timeout: true,
  reset: true,
  response_timeout: true,
  other: true,
};
const INVALID_TOKEN_REASONS: Record<InvalidTokenReason, true> = {
  missing: true,
  not_found: true,
  expired: true,
  revoked: true,
  malformed_body: true,
  claims_unmapped: true,
  access_rule_denied: true,
  bind_rejected: true,
  certificate_missing: true,
  certificate_mismatch: true,
  service_token_invalid: true,
  service_token_roles: true,
  keystone_unavailable: true,
};
const SERVICE_TOKEN_OUTCOMES: Record<'ok' | 'error', true> = { ok: true, error: true };
const DECISIONS: Record<RequestDecision, true> = {
  confirmed: true,
  rejected: true,
  unavailable: true,
  delegated: true,
  public: true,
  bad_request: true,
  admin: true,
};

/** authDecision() takes any string (callers forward reasons as-is); unknown ones count as 'other'. */
const AUTH_RESULTS: Record<string, true> = { confirmed: true, ...INVALID_TOKEN_REASONS };
const METHODS: Record<string, true> = {
  GET: true,
  HEAD: true,
  POST: true,
  PUT: true,
  PATCH: true,
  DELETE: true,
  OPTIONS: true,
};

/** From a cache hit (sub-millisecond) to a slow upstream; the last bucket matches common proxy timeouts. */
const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Keystone calls always cross the network, so the sub-millisecond buckets would stay empty. */
/** memcached answers in well under a millisecond on a LAN; the top buckets are the operation deadline. */
const MEMCACHED_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1];
/** A worker → primary round trip is tens of microseconds; the top buckets are the primary asking Keystone. */
const HOST_LOOKUP_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1, 5];
const KEYSTONE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

function keysOf<K extends string>(record: Record<K, true>): K[] {
  return Object.keys(record) as K[];
}

/**
 * Label values only from a fixed set: typed callers never miss, but plain-JS embedders can pass anything.
 * Methods are matched case-sensitively, as HTTP defines them (Node always hands them over upper-case).
 */
function bounded(record: Record<string, true>, value: string): string {
  return Object.hasOwn(record, value) ? value : 'other';
}

function codeClass(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599
    ? `${Math.floor(status / 100)}xx`
    : 'other';
}

/** prom-client throws on NaN/Infinity; a bad clock reading must not break the request that reports it. */
function seconds(value: number): number | undefined {
  return Number.isFinite(value) ? Math.max(0, value) : undefined;
}

export function createMetrics(options: MetricsOptions): ProxyMetrics {
  const registry = options.registry ?? new Registry();
  const registers = [registry];
  // A cluster worker holds no host state: the primary alone exports it, so /metrics counts it once per host.
  const hostRegisters = options.role === 'worker' ? [] : [registry];
  const name = (suffix: string): string => `${options.prefix}_${suffix}`;
  const sources: MetricsSource[] = [];
  const sum = (read: (source: MetricsSource) => number | undefined): number =>
    sources.reduce((total, source) => total + (read(source) ?? 0), 0);

  const requests = new Counter({
    name: name('http_requests_total'),
    help: 'Client requests handled, by auth decision, normalised HTTP method and status class.',
    labelNames: ['decision', 'method', 'code_class'] as const,
    registers,
  });
  const requestDuration = new Histogram({
    name: name('http_request_duration_seconds'),
    help: 'Time from receiving a client request to finishing its response, in seconds.',
    labelNames: ['decision', 'code_class'] as const,
    buckets: REQUEST_BUCKETS,
    registers,
  });
  const requestsInFlight = new Gauge({
    name: name('http_requests_in_flight'),
    help: 'Client requests currently being handled.',
    registers,
  });
  const authDecisions = new Counter({
    name: name('auth_decisions_total'),
    help: 'Token checks, by result: confirmed, or why the token was not accepted.',
    labelNames: ['result'] as const,
    registers,
  });
  const keystoneRequests = new Counter({
    name: name('keystone_requests_total'),
    help: 'Requests sent to Keystone, by operation and outcome.',
    labelNames: ['operation', 'outcome'] as const,
    registers: hostRegisters,
  });
  const keystoneDuration = new Histogram({
    name: name('keystone_request_duration_seconds'),
    help: 'Duration of requests to Keystone, in seconds.',
    labelNames: ['operation'] as const,
    buckets: KEYSTONE_BUCKETS,
    registers: hostRegisters,
  });
  const cacheRequests = new Counter({
    name: name('token_cache_requests_total'),
    help: 'Token cache lookups, by result.',
    labelNames: ['result'] as const,
    registers,
  });
  new Gauge({
    name: name('token_cache_entries'),
    help: 'Tokens currently held in the validation cache.',
    registers: hostRegisters,
    collect() {
      this.set(sum((source) => source.cacheEntries?.()));
    },
  });
  new Gauge({
    name: name('token_cache_bytes'),
    help: 'Approximate size of the token validation cache, in bytes.',
    registers: hostRegisters,
    collect() {
      this.set(sum((source) => source.cacheBytes?.()));
    },
  });
  new Gauge({
    name: name('keystone_validations_in_flight'),
    help: 'Token validations currently waiting for Keystone.',
    registers: hostRegisters,
    collect() {
      this.set(sum((source) => source.validationsInFlight?.()));
    },
  });
  new Gauge({
    name: name('worker_cache_entries'),
    help: "Identities held in the cluster workers' own caches (L1, copies of the host cache), summed over the workers; 0 with workers: 1.",
    registers,
    collect() {
      this.set(sum((source) => source.workerCacheEntries?.()));
    },
  });
  const hostLookups = new Histogram({
    name: name('host_lookup_duration_seconds'),
    help: 'Questions of a cluster worker to its primary about a token its L1 did not hold, by outcome, in seconds (Keystone calls the primary made included); none with workers: 1.',
    labelNames: ['outcome'] as const,
    buckets: HOST_LOOKUP_BUCKETS,
    registers,
  });
  const memcachedOps = new Counter({
    name: name('memcached_operations_total'),
    help: 'Operations of the shared (memcached) cache tier, by operation and outcome; skipped_down: server marked down.',
    labelNames: ['operation', 'outcome'] as const,
    registers: hostRegisters,
  });
  const memcachedDuration = new Histogram({
    name: name('memcached_operation_duration_seconds'),
    help: 'Duration of memcached operations, in seconds (bounded by memcache_pool_socket_timeout).',
    labelNames: ['operation'] as const,
    buckets: MEMCACHED_BUCKETS,
    registers: hostRegisters,
  });
  const revocationPolls = new Counter({
    name: name('revocation_polls_total'),
    help: 'Polls of Keystone revocation events, by outcome; unsupported: Keystone refused the API (TTL-only).',
    labelNames: ['outcome'] as const,
    registers: hostRegisters,
  });
  const revocationEvents = new Counter({
    name: name('revocation_events_total'),
    help: 'New revocation events received from Keystone.',
    registers: hostRegisters,
  });
  const revocationEvictions = new Counter({
    name: name('revocation_evictions_total'),
    help: 'Cached identities dropped because a revocation event matched them.',
    registers: hostRegisters,
  });
  const revocationLastSuccess = new Gauge({
    name: name('revocation_last_success_timestamp_seconds'),
    help: 'Unix time of the last successful revocation poll; 0 before the first.',
    registers: hostRegisters,
    aggregator: 'max',
  });
  const upstreamErrors = new Counter({
    name: name('upstream_errors_total'),
    help: 'Requests that could not be forwarded to, or answered by, the upstream, by reason.',
    labelNames: ['reason'] as const,
    registers,
  });
  const serviceTokenRefreshes = new Counter({
    name: name('service_token_refreshes_total'),
    help: "Attempts to obtain the proxy's own Keystone token, by outcome.",
    labelNames: ['outcome'] as const,
    registers: hostRegisters,
  });
  const tlsHandshakeFailures = new Counter({
    name: name('tls_handshake_failures_total'),
    help: 'TLS handshakes a listener refused or that did not finish, by listener and reason (no_certificate: client_auth require and none shown).',
    labelNames: ['listener', 'reason'] as const,
    registers,
  });
  const tlsReloads = new Counter({
    name: name('tls_reloads_total'),
    help: "Reloads of a listener's certificate files (SIGHUP or a change on disk), by result; error: the previous certificate is still served.",
    labelNames: ['listener', 'result'] as const,
    registers,
  });
  const tlsExpiry = new Gauge({
    name: name('tls_certificate_expiry_timestamp_seconds'),
    help: "Unix time at which the certificate a listener serves expires (with workers: the soonest of the workers').",
    labelNames: ['listener'] as const,
    registers,
    // With workers, each serves the proxied port with its own copy: the soonest expiry is the one to alert on.
    aggregator: 'min',
  });
  const tlsListenersSeen = new Set<string>();
  const circuit = new Gauge({
    name: name('keystone_circuit_state'),
    help: 'State of the circuit breaker around Keystone: 1 for the current state, 0 for the others (with workers: how many are in each state).',
    labelNames: ['state'] as const,
    registers: hostRegisters,
  });
  const setCircuit = (state: CircuitState): void => {
    for (const known of keysOf(CIRCUIT_STATES)) circuit.set({ state: known }, known === state ? 1 : 0);
  };
  setCircuit('closed');
  new Gauge({
    name: name('build_info'),
    help: 'Always 1; the labels carry the proxy version and the Node.js version.',
    labelNames: ['version', 'node_version'] as const,
    registers,
    // With workers, /metrics adds the workers up: every worker runs the same build.
    aggregator: 'first',
  }).set({ version: options.version, node_version: process.version }, 1);
  if (options.filter !== undefined) {
    new Gauge({
      name: name('auth_filter_info'),
      help: 'Always 1; the filter label names the keystonemiddleware filter the proxy acts as (the filter key).',
      labelNames: ['filter'] as const,
      registers,
      aggregator: 'first',
    }).set({ filter: options.filter }, 1);
  }

  // Export zero for every series known in advance, so dashboards and rate() see them before the first event.
  for (const result of [...Object.keys(AUTH_RESULTS), 'other']) authDecisions.inc({ result }, 0);
  for (const operation of keysOf(KEYSTONE_OPERATIONS)) {
    keystoneDuration.zero({ operation });
    for (const outcome of keysOf(KEYSTONE_OUTCOMES)) keystoneRequests.inc({ operation, outcome }, 0);
  }
  for (const result of keysOf(CACHE_EVENTS)) cacheRequests.inc({ result }, 0);
  for (const reason of keysOf(UPSTREAM_ERROR_REASONS)) upstreamErrors.inc({ reason }, 0);
  for (const outcome of keysOf(SERVICE_TOKEN_OUTCOMES)) serviceTokenRefreshes.inc({ outcome }, 0);
  for (const outcome of keysOf(REVOCATION_POLL_OUTCOMES)) revocationPolls.inc({ outcome }, 0);
  for (const outcome of keysOf(HOST_LOOKUP_OUTCOMES)) hostLookups.zero({ outcome });
  revocationLastSuccess.set(0);

  if (options.collectProcessMetrics !== false) collectDefaultMetrics({ register: registry });

  return {
    registry,
    contentType: registry.contentType,
    requestStarted: () => {
      requestsInFlight.inc();
      let done = false;
      return () => {
        if (done) return;
        done = true;
        requestsInFlight.dec();
      };
    },
    request: (requestDecision, method, status, durationSeconds) => {
      const decision = bounded(DECISIONS, requestDecision);
      const code_class = codeClass(status);
      requests.inc({ decision, method: bounded(METHODS, method), code_class });
      const duration = seconds(durationSeconds);
      if (duration !== undefined) requestDuration.observe({ decision, code_class }, duration);
    },
    authDecision: (result) => {
      authDecisions.inc({ result: bounded(AUTH_RESULTS, result) });
    },
    upstreamError: (reason) => {
      upstreamErrors.inc({ reason: bounded(UPSTREAM_ERROR_REASONS, reason) });
    },
    keystoneRequest: (operation, outcome, durationSeconds) => {
      const op = bounded(KEYSTONE_OPERATIONS, operation);
      keystoneRequests.inc({ operation: op, outcome: bounded(KEYSTONE_OUTCOMES, outcome) });
      const duration = seconds(durationSeconds);
      if (duration !== undefined) keystoneDuration.observe({ operation: op }, duration);
    },
    cache: (event) => {
      cacheRequests.inc({ result: bounded(CACHE_EVENTS, event) });
    },
    memcached: (operation, outcome, durationSeconds) => {
      const op = bounded(MEMCACHED_OPERATIONS, operation);
      memcachedOps.inc({ operation: op, outcome: bounded(MEMCACHED_OUTCOMES, outcome) });
      const duration = seconds(durationSeconds);
      if (duration !== undefined) memcachedDuration.observe({ operation: op }, duration);
    },
    revocationPoll: (outcome, newEvents, evicted) => {
      revocationPolls.inc({ outcome: bounded(REVOCATION_POLL_OUTCOMES, outcome) });
      if (newEvents > 0) revocationEvents.inc(newEvents);
      if (evicted > 0) revocationEvictions.inc(evicted);
      if (outcome === 'ok') revocationLastSuccess.set(Date.now() / 1000);
    },
    hostLookup: (outcome, durationSeconds) => {
      const duration = seconds(durationSeconds);
      if (duration !== undefined) {
        hostLookups.observe({ outcome: bounded(HOST_LOOKUP_OUTCOMES, outcome) }, duration);
      }
    },
    circuitState: (state) => setCircuit(state in CIRCUIT_STATES ? state : 'closed'),
    serviceTokenRefresh: (outcome) => {
      serviceTokenRefreshes.inc({ outcome: bounded(SERVICE_TOKEN_OUTCOMES, outcome) });
    },
    tlsHandshakeFailure: (listener, reason) => {
      tlsHandshakeFailures.inc({
        listener: bounded(TLS_LISTENERS, listener),
        reason: bounded(TLS_HANDSHAKE_FAILURES, reason),
      });
    },
    tlsReload: (listener, result) => {
      tlsReloads.inc({
        listener: bounded(TLS_LISTENERS, listener),
        result: bounded(TLS_RELOAD_RESULTS, result),
      });
    },
    tlsCertificateExpiry: (name, notAfterSeconds) => {
      const listener = bounded(TLS_LISTENERS, name);
      if (Number.isFinite(notAfterSeconds)) tlsExpiry.set({ listener }, notAfterSeconds);
      // The first report of a TLS listener: export its zero series, so that rate() sees them before an event.
      if (tlsListenersSeen.has(listener)) return;
      tlsListenersSeen.add(listener);
      for (const reason of keysOf(TLS_HANDSHAKE_FAILURES)) tlsHandshakeFailures.inc({ listener, reason }, 0);
      for (const result of keysOf(TLS_RELOAD_RESULTS)) tlsReloads.inc({ listener, result }, 0);
    },
    track: (source) => {
      sources.push(source);
    },
    scrape: () => registry.metrics(),
  };
}
