/**
 * What a cluster worker and its primary say to each other about identities, over node:cluster's IPC channel (a
 * pipe inside the host: the raw token a worker asks about crosses it, and is never written anywhere). Every message
 * carries `kap` so that it cannot be mistaken for node:cluster's own or another library's.
 *
 *   worker → primary   hello                      the cache hash key, please (answered by `init`)
 *                      check {id, token, allowExpired}   answered by `answer {id}`
 *                      ready {id}                 answered by `ready {id, ready}`
 *   primary → worker   forget {keys}              drop these identities (re-validated, found invalid)
 *                      revoked {events}           new revocation events: drop what they match
 *                      metrics {id} / metrics {id, json}   (src/observability/cluster-metrics.ts)
 * One channel per worker carries answers and pushes in the order they were sent: an answer the primary gave
 * before a revocation reaches the worker before that revocation does.
 */
import type { TokenCheck, TokenSource } from '../auth/decision.js';
import { type InvalidTokenReason, KeystoneUnavailableError, type UnavailableReason } from '../errors.js';
import type { TokenInfo } from '../keystone/token-info.js';
import type { RevocationEvent } from './revocation.js';

export type WorkerMessage =
  | { readonly kap: 'hello' }
  | { readonly kap: 'check'; readonly id: number; readonly token: string; readonly allowExpired: boolean }
  | { readonly kap: 'ready'; readonly id: number }
  /** The worker's registry, as prom-client's getMetricsAsJSON() gives it. */
  | { readonly kap: 'metrics'; readonly id: number; readonly json: unknown };

/** A TokenCheck as it crosses the channel: an error is sent as its fields. */
export type WireCheck =
  | { readonly status: 'valid'; readonly info: TokenInfo; readonly source: TokenSource }
  | { readonly status: 'invalid'; readonly reason: InvalidTokenReason }
  | {
      readonly status: 'unavailable';
      readonly reason: UnavailableReason;
      readonly message: string;
      readonly keystoneStatus: number | undefined;
      readonly retryAfterSeconds: number | undefined;
    };

export type HostMessage =
  | { readonly kap: 'init'; readonly hashKey: string }
  | {
      readonly kap: 'answer';
      readonly id: number;
      readonly check: WireCheck;
      /** Until when (wall-clock ms) the worker may serve its copy; absent: do not keep one. */
      readonly freshUntilMs: number | undefined;
      /** When Keystone confirmed the identity (for token_revalidate_seconds). */
      readonly validatedAtMs: number | undefined;
    }
  | { readonly kap: 'ready'; readonly id: number; readonly ready: boolean }
  | { readonly kap: 'forget'; readonly keys: readonly string[] }
  | { readonly kap: 'revoked'; readonly events: readonly RevocationEvent[] }
  | { readonly kap: 'metrics'; readonly id: number };

/** One end of the pipe between a worker and its primary: node:cluster's channel, or a pair in tests. */
export interface StateLink {
  /** false: the other end is gone. */
  send(message: unknown): boolean;
  /** Returns a function that removes the listener. */
  onMessage(listener: (message: unknown) => void): () => void;
}

/** Anything with node's IPC surface: a cluster `Worker` in the primary, `process` in a worker. */
export interface IpcEndpoint {
  send?(message: unknown): boolean;
  on(event: 'message', listener: (message: unknown) => void): unknown;
  off(event: 'message', listener: (message: unknown) => void): unknown;
  readonly connected?: boolean;
}

export function ipcLink(endpoint: IpcEndpoint): StateLink {
  return {
    send(message) {
      if (endpoint.send === undefined || endpoint.connected === false) return false;
      try {
        // false only means the channel's backlog is long: the message is queued all the same.
        endpoint.send(message);
        return true;
      } catch {
        // The channel closed under us (the other process is exiting).
        return false;
      }
    },
    onMessage(listener) {
      endpoint.on('message', listener);
      return () => endpoint.off('message', listener);
    },
  };
}

/** A message from a worker, of this kind (the primary's side). */
export function isWorkerMessage<K extends WorkerMessage['kap']>(
  message: unknown,
  kap: K,
): message is Extract<WorkerMessage, { kap: K }> {
  return kindOf(message) === kap;
}

/** A message from the primary, of this kind (a worker's side). */
export function isHostMessage<K extends HostMessage['kap']>(
  message: unknown,
  kap: K,
): message is Extract<HostMessage, { kap: K }> {
  return kindOf(message) === kap;
}

function kindOf(message: unknown): unknown {
  return typeof message === 'object' && message !== null ? (message as { kap?: unknown }).kap : undefined;
}

export function toWire(check: TokenCheck): WireCheck {
  if (check.status !== 'unavailable') return check;
  const { reason, message, keystoneStatus, retryAfterSeconds } = check.error;
  return { status: 'unavailable', reason, message, keystoneStatus, retryAfterSeconds };
}

export function fromWire(check: WireCheck): TokenCheck {
  if (check.status !== 'unavailable') return check;
  return {
    status: 'unavailable',
    error: new KeystoneUnavailableError(check.reason, check.message, {
      ...(check.keystoneStatus === undefined ? {} : { status: check.keystoneStatus }),
      ...(check.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: check.retryAfterSeconds }),
    }),
  };
}
