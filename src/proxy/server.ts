/**
 * The sidecar's listeners: the proxied one (src/proxy/pipeline.ts: strip → public route? → authenticate →
 * inject → forward), a forward-auth one when configured, the admin one (src/proxy/admin.ts) unless a cluster
 * primary serves it, and the graceful drain of all of them.
 */
import type { RequestListener, ServerOptions } from 'node:http';
import { authInputOf, type ProxyConfig } from '../config/proxy-config.js';
import type { TlsOptions } from '../config/tls-options.js';
import { type AuthDependencies, type Authenticator, createAuthenticator } from '../http/authenticate.js';
import { requestPath, sendPrepared } from '../http/node-request.js';
import { errorResponse } from '../http/responses.js';
import type { ProxyMetrics } from '../observability/metrics.js';
import type { Logger, TlsListenerName, TlsObserver } from '../observability/observer.js';
import type { IdentityState } from '../state/identity-state.js';
import { createListenerTls, type ListenerTls } from '../tls/listener-tls.js';
import { type RunningAdmin, startAdmin } from './admin.js';
import { createForwardAuthHandler, type ForwardAuthHandler } from './forward-auth.js';
import { createForwarder, type Forwarder } from './forwarder.js';
import {
  answerClientError,
  closeServer,
  createListenerServer,
  InFlight,
  type ListenerServer,
  listen,
  onIdle,
  reasonOf,
  refuseConnect,
} from './listeners.js';
import { createPipeline } from './pipeline.js';

export { startAdmin } from './admin.js';

export interface ProxyDependencies extends Omit<AuthDependencies, 'logger' | 'observer'> {
  readonly logger: Logger;
  readonly metrics?: ProxyMetrics | undefined;
  /** false in a cluster worker: the primary serves the admin listener. */
  readonly adminListener?: boolean;
  /** The engine to use (a cluster worker's, on the primary's state); default: one built from the config. */
  readonly authenticator?: Authenticator | undefined;
}

export interface RunningProxy {
  /** Base URL of the proxied listener, when there is one. */
  readonly url: string | undefined;
  /** undefined in a cluster worker. */
  readonly adminUrl: string | undefined;
  /** Base URL of the forward-auth endpoint, when enabled. */
  readonly forwardAuthUrl: string | undefined;
  readonly authenticator: Authenticator;
  /** Requests being served on the proxied and forward-auth listeners. */
  inFlight(): number;
  /** Re-reads the certificate files of every TLS listener (SIGHUP); false when one was refused. */
  reloadTls(): boolean;
  /** Stop accepting, let in-flight requests finish for up to `graceMs`, then close everything. */
  shutdown(graceMs: number): Promise<{ unfinished: number }>;
}

/** The host state's gauges (cache size, validations in flight), read at scrape time. */
export function trackHostState(metrics: ProxyMetrics, state: IdentityState): void {
  metrics.track({
    cacheEntries: () => state.stats().entries,
    cacheBytes: () => state.stats().bytes,
    validationsInFlight: () => state.stats().inflight,
  });
}

export async function startProxy(config: ProxyConfig, deps: ProxyDependencies): Promise<RunningProxy> {
  const { logger, metrics } = deps;
  let draining = false;
  const inFlight = new InFlight();
  const authenticator = deps.authenticator ?? ownAuthenticator(config, deps);
  const forwarder = forwarderFor(config, authenticator, () => draining);
  const forwardAuth = config.forward_auth.enabled
    ? createForwardAuthHandler({ authenticator, path: config.forward_auth.path, logger, metrics })
    : undefined;

  const tlsOf = listenerTlsFactory(logger, metrics);
  const proxied =
    config.listen !== undefined && forwarder !== undefined
      ? await startProxied(config, config.listen, tlsOf('proxy', 'listen.tls', config.listen.tls), {
          authenticator,
          forwarder,
          logger,
          metrics,
          inFlight,
          draining: () => draining,
        })
      : undefined;
  const ownForwardAuth =
    forwardAuth !== undefined && config.forward_auth.listen !== undefined
      ? await startForwardAuth(
          config,
          config.forward_auth.listen,
          tlsOf('forward_auth', 'forward_auth.listen.tls', config.forward_auth.listen.tls),
          forwardAuth,
          inFlight,
        )
      : undefined;
  const admin: RunningAdmin | undefined =
    deps.adminListener === false
      ? undefined
      : await startAdmin(config, {
          logger,
          authenticator,
          forwardAuth: config.forward_auth.listen === undefined ? forwardAuth : undefined,
          metricsText: metrics === undefined ? undefined : () => metrics.scrape(),
          metricsContentType: metrics?.contentType,
          track: (res) => inFlight.track(res),
          tlsObserver: metrics,
        });
  const ownTls = [proxied?.tls, ownForwardAuth?.tls].filter((tls): tls is ListenerTls => tls !== undefined);

  return {
    url: proxied?.url,
    adminUrl: admin?.url,
    forwardAuthUrl: admin?.forwardAuthUrl ?? ownForwardAuth?.url,
    authenticator,
    inFlight: () => inFlight.count,
    reloadTls() {
      // Every listener is tried, even after one failed.
      const results = [...ownTls.map((tls) => tls.reload('signal')), admin?.reloadTls() ?? true];
      return results.every(Boolean);
    },
    async shutdown(graceMs) {
      draining = true;
      for (const tls of ownTls) tls.close();
      admin?.draining();
      const servers = [proxied?.server, ownForwardAuth?.server];
      const closing = servers.map(closeServer);
      for (const server of servers) server?.closeIdleConnections();
      await inFlight.settled(graceMs);
      const unfinished = inFlight.count;
      for (const server of servers) server?.closeAllConnections();
      await Promise.all(closing);
      await admin?.close();
      forwarder?.close();
      await authenticator.close();
      return { unfinished };
    },
  };
}

/** One process, one engine: its state assembled here, its gauges on this process's metrics. */
function ownAuthenticator(config: ProxyConfig, deps: ProxyDependencies): Authenticator {
  const authenticator = createAuthenticator(authInputOf(config), {
    ...deps,
    observer: deps.metrics ?? {},
  });
  if (deps.metrics !== undefined) trackHostState(deps.metrics, authenticator.state);
  return authenticator;
}

function forwarderFor(
  config: ProxyConfig,
  authenticator: Authenticator,
  draining: () => boolean,
): Forwarder | undefined {
  const upstream = config.upstream;
  if (upstream === undefined) return undefined;
  return createForwarder({
    target: new URL(upstream.url),
    connectTimeoutMs: upstream.connect_timeout_seconds * 1000,
    responseTimeoutMs: upstream.response_timeout_seconds * 1000,
    insecure: upstream.insecure,
    wwwAuthenticate: authenticator.wwwAuthenticate,
    draining,
    maxBodyBytes: config.limits.max_body_bytes,
  });
}

function serverOptions(config: ProxyConfig): ServerOptions {
  return {
    maxHeaderSize: config.limits.max_header_bytes,
    headersTimeout: config.limits.headers_timeout_seconds * 1000,
    // Node checks the head deadline only this often (30 s by default): check often enough to keep it.
    connectionsCheckingInterval: Math.min(
      1_000,
      Math.max(100, (config.limits.headers_timeout_seconds * 1000) / 4),
    ),
    // Uploads of images may take long; a whole-request deadline would cut them. Idle sockets are closed instead.
    requestTimeout: 0,
  };
}

/** The TLS of a listener that has `tls` configured, undefined for a plain http one. */
type TlsFactory = (
  listener: TlsListenerName,
  path: string,
  tls: TlsOptions | undefined,
) => ListenerTls | undefined;

export function listenerTlsFactory(logger: Logger, observer: TlsObserver | undefined): TlsFactory {
  return (listener, path, tls) =>
    tls === undefined ? undefined : createListenerTls({ listener, tls, path, logger, observer });
}

interface Listening {
  readonly server: ListenerServer;
  readonly url: string;
  readonly tls: ListenerTls | undefined;
}

async function startProxied(
  config: ProxyConfig,
  where: { readonly host: string; readonly port: number },
  tls: ListenerTls | undefined,
  parts: {
    readonly authenticator: Authenticator;
    readonly forwarder: Forwarder;
    readonly logger: Logger;
    readonly metrics: ProxyMetrics | undefined;
    readonly inFlight: InFlight;
    readonly draining: () => boolean;
  },
): Promise<Listening> {
  const pipeline = createPipeline({ config, ...parts });
  const handle: RequestListener = (req, res) => {
    parts.inFlight.track(res);
    pipeline.handle(req, res);
  };
  const server = createListenerServer(serverOptions(config), handle, tls);
  server.keepAliveTimeout = 5_000;
  server.setTimeout(config.limits.idle_timeout_seconds * 1000, onIdle);
  server.on('connect', refuseConnect);
  server.on('upgrade', pipeline.handleUpgrade);
  // Node would answer `Expect: 100-continue` before authentication and invite a rejected upload: decide first.
  server.on('checkContinue', handle);
  server.on('clientError', answerClientError);
  return { server, url: await listen(server, where.host, where.port), tls };
}

async function startForwardAuth(
  config: ProxyConfig,
  where: { readonly host: string; readonly port: number },
  tls: ListenerTls | undefined,
  forwardAuth: ForwardAuthHandler,
  inFlight: InFlight,
): Promise<Listening> {
  const notFound = errorResponse(404, reasonOf(404), 'No such endpoint.');
  const handle: RequestListener = (req, res) => {
    inFlight.track(res);
    if (forwardAuth.matches(requestPath(req.url))) forwardAuth.handle(req, res);
    else sendPrepared(req, res, notFound);
  };
  const server = createListenerServer(serverOptions(config), handle, tls);
  server.on('clientError', answerClientError);
  const base = await listen(server, where.host, where.port);
  return { server, url: `${base}${config.forward_auth.path}`, tls };
}
