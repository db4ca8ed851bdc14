/**
 * The primary's side of the host state: answers its workers' questions from the one host state (so N workers
 * asking about one new token cost one validation) and pushes what their L1 copies must learn: identities to
 * forget, and new revocation events.
 */
import type { Logger } from '../observability/observer.js';
import type { HostIdentityState } from './host-state.js';
import { type HostMessage, isWorkerMessage, type StateLink, toWire, type WorkerMessage } from './protocol.js';

export interface HostService {
  /** Serves one worker's channel until the returned function is called (the worker exited). */
  attach(link: StateLink): () => void;
  /** Workers attached now. */
  readonly size: number;
}

export function createHostService(state: HostIdentityState, hashKey: Buffer, logger: Logger): HostService {
  const links = new Set<StateLink>();
  const broadcast = (message: HostMessage): void => {
    for (const link of links) link.send(message);
  };
  state.subscribe({
    forget: (keys) => broadcast({ kap: 'forget', keys }),
    revoked: (events) => broadcast({ kap: 'revoked', events }),
  });

  const answerCheck = (link: StateLink, message: Extract<WorkerMessage, { kap: 'check' }>): void => {
    const { id, token, allowExpired } = message;
    state.check(token, allowExpired).then(
      (check) => {
        // The worker may keep a copy exactly as long as the host's cache entry lives (none: not cached here).
        const entry = check.status === 'valid' ? state.entryOf(state.keyOf(token), allowExpired) : undefined;
        link.send({
          kap: 'answer',
          id,
          check: toWire(check),
          freshUntilMs: entry?.freshUntil,
          validatedAtMs: entry?.validatedAtMs,
        } satisfies HostMessage);
      },
      (error: unknown) => {
        // check() turns every Keystone failure into an answer: this is a bug, and the worker answers 503.
        logger.error({ err: { message: (error as Error).message } }, 'identity state lookup failed');
      },
    );
  };

  return {
    attach(link) {
      links.add(link);
      const stop = link.onMessage((message) => {
        if (isWorkerMessage(message, 'check')) answerCheck(link, message);
        else if (isWorkerMessage(message, 'hello'))
          link.send({ kap: 'init', hashKey: hashKey.toString('hex') });
        else if (isWorkerMessage(message, 'ready')) {
          const { id } = message;
          state.ready().then(
            (ready) => link.send({ kap: 'ready', id, ready }),
            () => link.send({ kap: 'ready', id, ready: false }),
          );
        }
      });
      return () => {
        links.delete(link);
        stop();
      };
    },
    get size() {
      return links.size;
    },
  };
}
