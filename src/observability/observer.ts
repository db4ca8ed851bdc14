/**
 * Hooks the engine calls at the points worth measuring or logging. Types only: the core never imports
 * prom-client or pino; the sidecar wires these to its metrics and logger, embedders may pass their own.
 */

export type KeystoneOperation = 'discovery' | 'auth' | 'validate';
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

export type CacheEvent = 'hit' | 'miss' | 'coalesced' | 'expired' | 'stale';
export type CircuitState = 'closed' | 'open' | 'half_open';

export interface AuthObserver {
  keystoneRequest?(operation: KeystoneOperation, outcome: KeystoneOutcome, durationSeconds: number): void;
  cache?(event: CacheEvent): void;
  serviceTokenRefresh?(outcome: 'ok' | 'error'): void;
  circuitState?(state: CircuitState): void;
}

/** The subset of pino's API the engine uses; pino loggers satisfy it. */
export interface Logger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const noop = (): void => {};
export const silentLogger: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });
