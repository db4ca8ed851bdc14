/**
 * `workers: N` (N > 1): the primary process forks N workers that share the proxied (and forward-auth) listening
 * ports through node:cluster; each worker has its own engine and token cache. The primary serves the admin
 * listener: /healthz, /readyz (its own Keystone probe), /metrics aggregated over the workers, and forward-auth
 * when that lives on the admin listener. SIGTERM drains every worker, then the primary exits.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import type { ProxyConfig } from '../config/proxy-config.js';
import { createAuthenticator } from '../http/authenticate.js';
import type { ProxyMetrics } from '../observability/metrics.js';
import type { Logger } from '../observability/observer.js';
import { createForwardAuthHandler } from './forward-auth.js';
import { type RunningProxy, startAdmin, startProxy } from './server.js';

/** Reads a file's text, or undefined when it does not exist (injected: tests describe a container's cgroup). */
export type ReadText = (path: string) => string | undefined;

/**
 * CPU cores this process may use by its cgroup's quota (a Kubernetes CPU limit), rounded up; undefined without
 * a quota. cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"), else v1 `cpu.cfs_quota_us` (-1: none).
 */
export function cgroupCpuLimit(read: ReadText): number | undefined {
  const cores = (quota: number, period: number): number | undefined =>
    Number.isFinite(quota) && Number.isFinite(period) && quota > 0 && period > 0
      ? Math.max(1, Math.ceil(quota / period))
      : undefined;
  const v2 = read('/sys/fs/cgroup/cpu.max')?.trim().split(/\s+/);
  if (v2 !== undefined) return v2[0] === 'max' ? undefined : cores(Number(v2[0]), Number(v2[1]));
  const quota =
    read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us') ?? read('/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us');
  const period =
    read('/sys/fs/cgroup/cpu/cpu.cfs_period_us') ?? read('/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us');
  return quota === undefined || period === undefined ? undefined : cores(Number(quota), Number(period));
}

/**
 * `workers: auto`: one per core the process can run on, capped by its cgroup CPU limit. Node's own count ignores
 * the limit on the Node versions supported here, so a sidecar limited to 1 CPU on a 64-core node would start 64
 * workers, each with its own cache and ~90 MB.
 */
export function autoWorkers(parallelism: number, read: ReadText): number {
  const limit = cgroupCpuLimit(read);
  return limit === undefined ? parallelism : Math.min(parallelism, limit);
}

const SHUTDOWN = 'keystone-auth-proxy:shutdown';
const STARTED = 'keystone-auth-proxy:started';

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

export interface RunningCluster {
  readonly url: string | undefined;
  readonly adminUrl: string;
  readonly forwardAuthUrl: string | undefined;
  readonly workers: number;
  shutdown(graceMs: number): Promise<{ unfinished: number }>;
}

/** In a worker: run the proxied listeners, report their URLs, drain when the primary says so. */
export async function runWorker(
  config: ProxyConfig,
  logger: Logger,
  metrics: ProxyMetrics | undefined,
): Promise<number> {
  if (metrics !== undefined) {
    // Constructing one installs the worker's answer to the primary's metric requests; setRegistries picks ours.
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([metrics.registry]);
  }
  const running: RunningProxy = await startProxy(config, { logger, metrics, adminListener: false });
  process.send?.({ type: STARTED, url: running.url, forwardAuthUrl: running.forwardAuthUrl });
  running.authenticator.warmUp().catch(() => {
    // the primary logs Keystone trouble; every request retries on demand
  });
  return new Promise((resolve) => {
    const drain = (graceMs: number): void => {
      running.shutdown(graceMs).then(
        ({ unfinished }) => resolve(unfinished === 0 ? 0 : 1),
        () => resolve(1),
      );
    };
    process.on('message', (message: { type?: string; graceMs?: number }) => {
      if (message?.type === SHUTDOWN) drain(message.graceMs ?? 25_000);
    });
    // The primary forwards signals as messages; a stray SIGTERM to the worker alone drains it as well.
    process.on('SIGTERM', () => drain(config.shutdown.grace_period_seconds * 1000));
    process.on('SIGINT', () => undefined);
  });
}

/** In the primary: fork the workers, keep them running, serve the admin listener. */
export async function startCluster(
  config: ProxyConfig,
  count: number,
  logger: Logger,
  /** The primary aggregates the workers' registries on /metrics. */
  metricsEnabled: boolean,
): Promise<RunningCluster> {
  let stopping = false;
  const aggregator = new AggregatorRegistry();
  const started = new Map<number, { url: string | undefined; forwardAuthUrl: string | undefined }>();
  let restarts = 0;

  const fork = (): Promise<{ url: string | undefined; forwardAuthUrl: string | undefined }> =>
    new Promise((resolve, reject) => {
      const worker: Worker = cluster.fork();
      const onMessage = (message: { type?: string; url?: string; forwardAuthUrl?: string }): void => {
        if (message?.type !== STARTED) return;
        const urls = { url: message.url, forwardAuthUrl: message.forwardAuthUrl };
        started.set(worker.id, urls);
        resolve(urls);
      };
      worker.on('message', onMessage);
      worker.once('exit', (code, signal) => {
        started.delete(worker.id);
        if (stopping) return;
        if (!started.has(worker.id) && restarts === 0 && code !== 0)
          reject(new Error(`worker exited (${code ?? signal})`));
        // A worker that dies is replaced, at most once a second, so a crash loop does not spin.
        restarts++;
        logger.error({ worker: worker.process.pid, code, signal }, 'worker exited: starting another');
        setTimeout(() => {
          if (!stopping) fork().catch(() => undefined);
        }, 1_000).unref();
      });
    });

  const first = await Promise.all(Array.from({ length: count }, fork));
  // The primary's own engine: the readiness probe, and forward-auth when it is served on the admin listener.
  const authenticator = createAuthenticator(config.keystone_authtoken, { logger });
  const forwardAuth =
    config.forward_auth.enabled && config.forward_auth.listen === undefined
      ? createForwardAuthHandler({ authenticator, path: config.forward_auth.path, logger })
      : undefined;
  const admin = await startAdmin(config, {
    logger,
    authenticator,
    forwardAuth,
    metricsText: metricsEnabled ? () => aggregator.clusterMetrics() : undefined,
    metricsContentType: aggregator.contentType,
  });

  return {
    url: first[0]?.url,
    forwardAuthUrl:
      config.forward_auth.listen === undefined ? admin.forwardAuthUrl : first[0]?.forwardAuthUrl,
    adminUrl: admin.url,
    workers: count,
    async shutdown(graceMs) {
      stopping = true;
      admin.draining();
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      const exits = workers.map(
        (worker) =>
          new Promise<number>((resolve) => {
            worker.once('exit', (code) => resolve(code ?? 1));
            worker.send({ type: SHUTDOWN, graceMs });
          }),
      );
      // Past the grace period plus a margin, a worker that still has not exited is killed.
      const deadline = setTimeout(() => {
        for (const worker of workers) worker.process.kill('SIGKILL');
      }, graceMs + 5_000);
      const codes = await Promise.all(exits);
      clearTimeout(deadline);
      await admin.close();
      await authenticator.close();
      return { unfinished: codes.filter((code) => code !== 0).length };
    },
  };
}
