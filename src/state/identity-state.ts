/**
 * The identity state a host keeps: validated identities (cache, memcached tier, negative and stale entries),
 * validations in flight, the Keystone client with its circuit breaker, and revocation polling. The engine asks it
 * about tokens and never knows where it lives: in this process (`HostIdentityState`, one process or a cluster's
 * primary) or behind the primary (`WorkerIdentityState`, a cluster worker with its own small L1).
 */
import type { TokenCheck } from '../auth/decision.js';
import type { TokenInfo } from '../keystone/token-info.js';

/** Read at scrape time. */
export interface StateStats {
  /** Identities held (the host cache, or a worker's L1). */
  readonly entries: number;
  readonly bytes: number;
  /** Lookups under way: Keystone or memcached for the host, questions to the primary for a worker. */
  readonly inflight: number;
}

export interface IdentityState {
  /**
   * A cached identity for a request without allow_expired, answered synchronously (no promise: the bulk of the
   * traffic); `undefined` for anything else, which `check` then handles in full.
   */
  checkCached(token: string): TokenInfo | undefined;
  check(token: string, allowExpired: boolean): Promise<TokenCheck>;
  /** The service token is held and Keystone answers now. */
  ready(): Promise<boolean>;
  /** Obtain the service token and find the identity endpoint before the first request. */
  warmUp(): Promise<void>;
  stats(): StateStats;
  close(): Promise<void>;
}
