/**
 * Two ends of an in-memory pipe standing for node:cluster's IPC channel between a worker and its primary:
 * messages are structured-cloned (as with `serialization: 'advanced'`) and delivered asynchronously, in order.
 */
import type { StateLink } from '../../src/state/protocol.js';

export interface LinkPair {
  readonly worker: StateLink;
  readonly host: StateLink;
  /** Messages each side sent so far. */
  readonly sent: { readonly worker: unknown[]; readonly host: unknown[] };
  /** From now on, messages to the host are dropped (a primary that no longer answers). */
  muteHost(): void;
  /** Both ends refuse to send (the channel closed). */
  close(): void;
}

export function linkPair(): LinkPair {
  const listeners = { worker: new Set<(m: unknown) => void>(), host: new Set<(m: unknown) => void>() };
  const sent = { worker: [] as unknown[], host: [] as unknown[] };
  let hostMuted = false;
  let closed = false;
  const end = (from: 'worker' | 'host', to: 'worker' | 'host'): StateLink => ({
    send(message) {
      if (closed) return false;
      sent[from].push(message);
      if (to === 'host' && hostMuted) return true;
      const copy = structuredClone(message);
      setImmediate(() => {
        for (const listener of listeners[to]) listener(copy);
      });
      return true;
    },
    onMessage(listener) {
      listeners[from].add(listener);
      return () => listeners[from].delete(listener);
    },
  });
  return {
    worker: end('worker', 'host'),
    host: end('host', 'worker'),
    sent,
    muteHost: () => {
      hostMuted = true;
    },
    close: () => {
      closed = true;
    },
  };
}
