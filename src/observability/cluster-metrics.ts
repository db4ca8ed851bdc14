/**
 * /metrics of a cluster: the primary asks every worker for its registry (as JSON, over the worker's IPC channel)
 * and adds them to its own. Request metrics come from the workers; the host state's (Keystone, cache, breaker,
 * revocation) from the primary alone, so each is counted once for the host.
 */
import { AggregatorRegistry, type Registry } from 'prom-client';
import { isHostMessage, isWorkerMessage, type StateLink } from '../state/protocol.js';

type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** In a worker: answer the primary's metric requests from this registry. */
export function answerMetricsRequests(link: StateLink, registry: Registry): () => void {
  return link.onMessage((message) => {
    if (!isHostMessage(message, 'metrics')) return;
    const { id } = message;
    registry.getMetricsAsJSON().then(
      (json) => link.send({ kap: 'metrics', id, json }),
      () => link.send({ kap: 'metrics', id, json: [] }),
    );
  });
}

/** In the primary: its own registry plus every worker's that answers within `timeoutMs`, as exposition text. */
export async function clusterMetrics(
  own: Registry,
  workers: Iterable<StateLink>,
  timeoutMs = 2_000,
): Promise<string> {
  let next = 1;
  const ask = (link: StateLink): Promise<MetricsJson | undefined> =>
    new Promise((resolve) => {
      const id = next++;
      const done = (json: MetricsJson | undefined): void => {
        clearTimeout(timer);
        stop();
        resolve(json);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      const stop = link.onMessage((message) => {
        if (isWorkerMessage(message, 'metrics') && message.id === id) done(message.json as MetricsJson);
      });
      if (!link.send({ kap: 'metrics', id })) done(undefined);
    });
  const answers = await Promise.all([...workers].map(ask));
  const all = [await own.getMetricsAsJSON(), ...answers.filter((json) => json !== undefined)];
  return AggregatorRegistry.aggregate(all).metrics();
}
