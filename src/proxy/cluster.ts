/**
 * `workers: N` (N > 1): one host, one identity state. The primary owns the state (token cache, in-flight
 * validations, negative and stale entries, the Keystone client and its breaker, revocation polling) and serves
 * the admin listener; N workers share the proxied (and forward-auth) ports through node:cluster, each with a
 * small L1 of the identities it served, asking the primary on an L1 miss (README "One host, one state").
 * A worker that dies is replaced; the state survives it. SIGTERM drains every worker, then the primary exits.
 */
import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { type ResolvedAuthOptions, resolveAuthOptions } from '../config/auth-options.js';
import { authInputOf, type ProxyConfig } from '../config/proxy-config.js';
import { type Authenticator, createEngine } from '../http/authenticate.js';
import { answerMetricsRequests, clusterMetrics } from '../observability/cluster-metrics.js';
import type { ProxyMetrics } from '../observability/metrics.js';
import type { Logger } from '../observability/observer.js';
import { assembleHostState } from '../state/assemble.js';
import { createHostService, type HostService } from '../state/host-service.js';
import type { HostIdentityState } from '../state/host-state.js';
import { ipcLink, type StateLink } from '../state/protocol.js';
import { WorkerIdentityState } from '../state/worker-state.js';
import { createForwardAuthHandler } from './forward-auth.js';
import { type RunningProxy, startAdmin, startProxy, trackHostState } from './server.js';

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
 * workers.
 */
export function autoWorkers(parallelism: number, read: ReadText): number {
  const limit = cgroupCpuLimit(read);
  return limit === undefined ? parallelism : Math.min(parallelism, limit);
}

const SHUTDOWN = 'keystone-auth-proxy:shutdown';
const STARTED = 'keystone-auth-proxy:started';
/** The primary got SIGHUP: re-read the TLS files of the worker's listeners. */
const RELOAD_TLS = 'keystone-auth-proxy:reload-tls';
/** A worker that dies is replaced at most this often, so a crash loop does not spin. */
const RESTART_DELAY_MS = 1_000;

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

export interface RunningCluster {
  readonly url: string | undefined;
  readonly adminUrl: string;
  readonly forwardAuthUrl: string | undefined;
  readonly workers: number;
  /** Reloads the admin listener's TLS files and tells every worker to reload its own; false when admin's failed. */
  reloadTls(): boolean;
  shutdown(graceMs: number): Promise<{ unfinished: number }>;
}

/** In a worker: connect to the host state, run the proxied listeners, drain when the primary says so. */
export async function runWorker(
  config: ProxyConfig,
  logger: Logger,
  metrics: ProxyMetrics | undefined,
): Promise<number> {
  const link = ipcLink(process);
  const options = resolveAuthOptions(authInputOf(config));
  const state = await WorkerIdentityState.connect({
    link,
    ttlSeconds: options.tokenCacheTimeSeconds,
    maxEntries: config.worker_cache_max_entries,
    maxBytes: options.tokenCacheMaxBytes,
    revalidateAfterMs: options.tokenRevalidateSeconds * 1000,
    answerTimeoutMs: answerTimeoutMs(options),
    now: Date.now,
    observer: metrics ?? {},
    logger,
  });
  if (metrics !== undefined) {
    answerMetricsRequests(link, metrics.registry);
    metrics.track({ workerCacheEntries: () => state.stats().entries });
  }
  const authenticator = createEngine(options, state, logger);
  const running: RunningProxy = await startProxy(config, {
    logger,
    metrics,
    adminListener: false,
    authenticator,
  });
  process.send?.({ type: STARTED, url: running.url, forwardAuthUrl: running.forwardAuthUrl });
  return new Promise((resolve) => {
    const drain = (graceMs: number): void => {
      running.shutdown(graceMs).then(
        ({ unfinished }) => resolve(unfinished === 0 ? 0 : 1),
        () => resolve(1),
      );
    };
    process.on('message', (message: { type?: string; graceMs?: number }) => {
      if (message?.type === SHUTDOWN) drain(message.graceMs ?? 25_000);
      else if (message?.type === RELOAD_TLS) running.reloadTls();
    });
    // SIGHUP to the whole process group reaches the workers too: reload, never die of it.
    process.on('SIGHUP', () => running.reloadTls());
    // The primary forwards signals as messages; a stray SIGTERM to the worker alone drains it as well.
    process.on('SIGTERM', () => drain(config.shutdown.grace_period_seconds * 1000));
    process.on('SIGINT', () => undefined);
  });
}

/**
 * A worker waits for the primary at most the primary's own validation budget (memcached, then Keystone with
 * its retries) and a second more, then answers 503.
 */
function answerTimeoutMs(options: ResolvedAuthOptions): number {
  const memcachedMs = options.memcached === undefined ? 0 : options.memcached.socketTimeoutSeconds * 1000;
  return options.httpRequestTimeoutSeconds * 1000 + memcachedMs + 1_000;
}

/** In the primary: the host state, the workers asking it, the admin listener. */
export async function startCluster(
  config: ProxyConfig,
  count: number,
  logger: Logger,
  metrics: ProxyMetrics | undefined,
): Promise<RunningCluster> {
  // Structured clone on the channel: identities cross it as they are (undefined fields kept, no JSON round trip).
  cluster.setupPrimary({ serialization: 'advanced' });
  const options = resolveAuthOptions(authInputOf(config));
  const hashKey = randomBytes(32);
  const state = assembleHostState(options, { logger, observer: metrics ?? {}, cacheHashKey: hashKey });
  if (metrics !== undefined) trackHostState(metrics, state);
  const pool = new WorkerPool(createHostService(state, hashKey, logger), logger);
  let first: WorkerUrls[];
  try {
    first = await Promise.all(Array.from({ length: count }, () => pool.fork(true)));
  } catch (error) {
    pool.stopping = true;
    await state.close();
    throw error;
  }
  // The primary's own engine, on the host state: the readiness probe, and forward-auth on the admin listener.
  const authenticator = createEngine(options, state, logger);
  warmUpInBackground(state, logger);
  const admin = await startAdmin(config, {
    logger,
    authenticator,
    forwardAuth: primaryForwardAuth(config, authenticator, logger, metrics),
    metricsText: metrics === undefined ? undefined : () => clusterMetrics(metrics.registry, pool.links()),
    metricsContentType: metrics?.contentType,
    tlsObserver: metrics,
  });

  return {
    url: first[0]?.url,
    forwardAuthUrl:
      config.forward_auth.listen === undefined ? admin.forwardAuthUrl : first[0]?.forwardAuthUrl,
    adminUrl: admin.url,
    workers: count,
    reloadTls() {
      pool.broadcast({ type: RELOAD_TLS });
      return admin.reloadTls();
    },
    async shutdown(graceMs) {
      admin.draining();
      const codes = await pool.drain(graceMs);
      await admin.close();
      await state.close();
      return { unfinished: codes.filter((code) => code !== 0).length };
    },
  };
}

function primaryForwardAuth(
  config: ProxyConfig,
  authenticator: Authenticator,
  logger: Logger,
  metrics: ProxyMetrics | undefined,
) {
  return config.forward_auth.enabled && config.forward_auth.listen === undefined
    ? createForwardAuthHandler({ authenticator, path: config.forward_auth.path, logger, metrics })
    : undefined;
}

export function warmUpInBackground(state: Pick<HostIdentityState, 'warmUp'>, logger: Logger): void {
  state.warmUp().catch((error: unknown) => {
    logger.warn(
      { err: { message: (error as Error).message } },
      'Keystone not reachable yet; will retry on demand',
    );
  });
}

interface WorkerUrls {
  readonly url: string | undefined;
  readonly forwardAuthUrl: string | undefined;
}

/** The workers: forked, attached to the host state, replaced when they die, drained on shutdown. */
class WorkerPool {
  readonly #service: HostService;
  readonly #logger: Logger;
  readonly #links = new Map<Worker, StateLink>();
  stopping = false;

  constructor(service: HostService, logger: Logger) {
    this.#service = service;
    this.#logger = logger;
  }

  links(): Iterable<StateLink> {
    return this.#links.values();
  }

  /** A control message to every live worker (node:cluster's channel, beside the state protocol's). */
  broadcast(message: { readonly type: string }): void {
    for (const worker of this.#links.keys()) {
      if (worker.isConnected()) worker.send(message);
    }
  }

  /**
   * Resolves with the worker's listener URLs once it serves. One of the first workers dying before it serves
   * fails the start (a bad port, say); a replacement that does is replaced in turn.
   */
  fork(initial = false): Promise<WorkerUrls> {
    return new Promise((resolve, reject) => {
      const worker = cluster.fork();
      const link = ipcLink(worker);
      this.#links.set(worker, link);
      const detach = this.#service.attach(link);
      let serving = false;
      worker.on('message', (message: { type?: string; url?: string; forwardAuthUrl?: string }) => {
        if (message?.type !== STARTED) return;
        serving = true;
        resolve({ url: message.url, forwardAuthUrl: message.forwardAuthUrl });
      });
      worker.once('exit', (code, signal) => {
        detach();
        this.#links.delete(worker);
        if (this.stopping) return;
        if (!serving && initial) {
          reject(new Error(`worker exited before serving (${code ?? signal})`));
          return;
        }
        this.#logger.error({ worker: worker.process.pid, code, signal }, 'worker exited: starting another');
        setTimeout(() => {
          if (!this.stopping) this.fork().catch(() => undefined);
        }, RESTART_DELAY_MS).unref();
      });
    });
  }

  /** Tells every worker to drain; past the grace period plus a margin, one that has not exited is killed. */
  async drain(graceMs: number): Promise<number[]> {
    this.stopping = true;
    const workers = [...this.#links.keys()];
    const exits = workers.map(
      (worker) =>
        new Promise<number>((resolve) => {
          worker.once('exit', (code) => resolve(code ?? 1));
          worker.send({ type: SHUTDOWN, graceMs });
        }),
    );
    const deadline = setTimeout(() => {
      for (const worker of workers) worker.process.kill('SIGKILL');
    }, graceMs + 5_000);
    const codes = await Promise.all(exits);
    clearTimeout(deadline);
    return codes;
  }
}
