/**
 * The sidecar: a proxied listener (strip → public route? → authenticate → inject → forward), an admin listener
 * (/healthz, /readyz, /metrics, and forward-auth unless it has a listener of its own), graceful shutdown.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { ProxyConfig } from '../config/proxy-config.js';
import {
  type AuthDependencies,
  type Authenticator,
  type AuthOutcome,
  createAuthenticator,
} from '../http/authenticate.js';
import {
  injectIdentity,
  requestFacts,
  requestPath,
  sendPrepared,
  stripRequestIdentity,
} from '../http/node-request.js';
import { errorResponse, type PreparedResponse, rawResponse } from '../http/responses.js';
import { REQUEST_ID_HEADER } from '../identity/headers.js';
import type { ProxyMetrics, RequestDecision } from '../observability/metrics.js';
import type { Logger } from '../observability/observer.js';
import { createForwardAuthHandler, type ForwardAuthHandler } from './forward-auth.js';
import { createForwarder, type Forwarder, removeHopByHop, type UpstreamFailure } from './forwarder.js';
import { requestIdOf } from './request-id.js';
import { createRouteMatcher } from './routes.js';

export interface ProxyDependencies extends Omit<AuthDependencies, 'logger' | 'observer'> {
  readonly logger: Logger;
  readonly metrics?: ProxyMetrics | undefined;
  /** false in a cluster worker: the primary serves the admin listener. */
  readonly adminListener?: boolean;
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
  /** Stop accepting, let in-flight requests finish for up to `graceMs`, then close everything. */
  shutdown(graceMs: number): Promise<{ unfinished: number }>;
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  408: 'Request Timeout',
  413: 'Content Too Large',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

const UPSTREAM_MESSAGES: Record<UpstreamFailure, string> = {
  connect_refused: 'The service behind the proxy refused the connection.',
  connect_timeout: 'The service behind the proxy did not accept the connection in time.',
  reset: 'The service behind the proxy closed the connection.',
  response_timeout: 'The service behind the proxy did not answer in time.',
  other: 'The service behind the proxy could not be reached.',
};

function listen(server: Server, host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address() as AddressInfo;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      resolve(`http://${shown}:${address.port}`);
    });
  });
}

/**
 * Runs `done` once the exchange is over: when the response closes, or when its connection does (a pipelined
 * request whose connection closed before its turn never gets a response 'close').
 */
function onceOver(res: ServerResponse, done: () => void): void {
  let over = false;
  const socket = res.req.socket;
  const finish = (): void => {
    if (over) return;
    over = true;
    socket.off('close', finish);
    done();
  };
  res.once('close', finish);
  socket.once('close', finish);
}

/**
 * The idle deadline is for silent clients: a request whose body has arrived and whose answer the upstream is
 * still preparing is governed by upstream.response_timeout_seconds instead.
 */
function onIdle(socket: Socket): void {
  const res = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
  if (res !== undefined && res !== null && !res.headersSent && res.req.complete) return;
  socket.destroy();
}

/** Malformed requests, oversized heads and slow clients get a JSON answer too, never a bare close. */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  const current = (socket as Duplex & { _httpMessage?: ServerResponse })._httpMessage;
  // Never write an answer into a response that has begun (a pipelined garbage request behind a streaming one).
  if (!socket.writable || (socket as Socket).writableEnded || current?.headersSent === true) {
    socket.destroy();
    return;
  }
  const status =
    error.code === 'HPE_HEADER_OVERFLOW' ? 431 : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const message =
    status === 431
      ? 'The request headers are too large.'
      : status === 408
        ? 'The request took too long to arrive.'
        : 'The request could not be parsed.';
  socket.end(
    rawResponse(errorResponse(status, REASONS[status] ?? 'Error', message), REASONS[status] ?? 'Error'),
  );
}

export async function startProxy(config: ProxyConfig, deps: ProxyDependencies): Promise<RunningProxy> {
  const { logger, metrics } = deps;
  const authenticator = createAuthenticator(config.keystone_authtoken, {
    ...deps,
    logger,
    observer: metrics ?? {},
  });
  metrics?.track({
    cacheEntries: () => authenticator.state.stats().entries,
    cacheBytes: () => authenticator.state.stats().bytes,
    validationsInFlight: () => authenticator.inflight(),
  });
  const isPublic = createRouteMatcher(config.public_routes);
  const upstream = config.upstream;
  const forwarder: Forwarder | undefined =
    upstream === undefined
      ? undefined
      : createForwarder({
          target: new URL(upstream.url),
          connectTimeoutMs: upstream.connect_timeout_seconds * 1000,
          responseTimeoutMs: upstream.response_timeout_seconds * 1000,
          insecure: upstream.insecure,
          wwwAuthenticate: authenticator.wwwAuthenticate,
          draining: () => draining,
          maxBodyBytes: config.limits.max_body_bytes,
        });

  let draining = false;
  let inFlight = 0;
  const idle: (() => void)[] = [];
  const track = (res: ServerResponse): void => {
    inFlight++;
    onceOver(res, () => {
      inFlight--;
      if (inFlight === 0) for (const wake of idle.splice(0)) wake();
    });
  };

  /** Metrics and the one access-log line, when the exchange is over (finished or cut). */
  const observe = (
    req: IncomingMessage,
    res: ServerResponse,
    requestId: string,
    state: { decision: RequestDecision; outcome?: AuthOutcome; upstreamFailure?: UpstreamFailure },
  ): void => {
    const started = performance.now();
    const done = metrics?.requestStarted();
    onceOver(res, () => {
      done?.();
      const seconds = (performance.now() - started) / 1000;
      const status = res.headersSent ? res.statusCode : 0;
      metrics?.request(state.decision, req.method ?? 'GET', status, seconds);
      const context = state.outcome?.action === 'forward' ? state.outcome.context : undefined;
      const line = {
        requestId,
        method: req.method,
        path: requestPath(req.url),
        status,
        durationMs: Math.round(seconds * 100_000) / 100,
        decision: state.decision,
        userId: context?.user?.userId,
        projectId: context?.user?.projectId,
        reason: state.outcome?.action === 'respond' ? state.outcome.reason : context?.reason,
        cache: state.outcome?.cache,
        authMs:
          state.outcome === undefined ? undefined : Math.round(state.outcome.authSeconds * 100_000) / 100,
        upstreamError: state.upstreamFailure,
        completed: res.writableFinished,
      };
      if (status >= 500 || !res.writableFinished) logger.warn(line, 'request');
      else logger.info(line, 'request');
    });
  };

  const respond = (req: IncomingMessage, res: ServerResponse, response: PreparedResponse): void => {
    if (draining) res.setHeader('Connection', 'close');
    sendPrepared(req, res, response);
  };

  const forward = (
    req: IncomingMessage,
    res: ServerResponse,
    state: { decision: RequestDecision; upstreamFailure?: UpstreamFailure },
  ): void => {
    if (draining) res.setHeader('Connection', 'close');
    if (req.headers.expect !== undefined && /100-continue/i.test(String(req.headers.expect))) {
      // Invite the body only now that the request is allowed; the upstream gets it without waiting.
      delete req.headers.expect;
      res.writeContinue();
    }
    forwarder?.web(req, res, (failure, status) => {
      if (status === 413) {
        res.setHeader('Connection', 'close');
        respond(
          req,
          res,
          errorResponse(413, 'Content Too Large', `The request body exceeds ${maxBody} bytes.`),
        );
        return;
      }
      state.upstreamFailure = failure;
      metrics?.upstreamError(failure);
      respond(req, res, errorResponse(status, REASONS[status] ?? 'Error', UPSTREAM_MESSAGES[failure]));
    });
  };

  /** limits.max_body_bytes: a declared Content-Length over it is refused before anything else (the forwarder
   * counts bodies without a length as they stream). */
  const maxBody = config.limits.max_body_bytes;
  const tooLarge = (req: IncomingMessage, res: ServerResponse): boolean => {
    if (maxBody <= 0 || Number(req.headers['content-length'] ?? 0) <= maxBody) return false;
    res.setHeader('Connection', 'close');
    respond(req, res, errorResponse(413, 'Content Too Large', `The request body exceeds ${maxBody} bytes.`));
    return true;
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    track(res);
    const requestId = requestIdOf(req.headers[REQUEST_ID_HEADER.toLowerCase()]);
    res.setHeader(REQUEST_ID_HEADER, requestId);
    const state: { decision: RequestDecision; outcome?: AuthOutcome; upstreamFailure?: UpstreamFailure } = {
      decision: 'bad_request',
    };
    observe(req, res, requestId, state);
    // Strip first, on every path, before anything can look at the request.
    stripRequestIdentity(req);
    removeHopByHop(req.headers as Record<string, unknown>);
    req.headers[REQUEST_ID_HEADER.toLowerCase()] = requestId;
    // Only origin-form targets: an absolute URL must never choose where the request goes.
    if (!req.url?.startsWith('/')) {
      respond(req, res, errorResponse(400, 'Bad Request', 'The request target must be a path.'));
      return;
    }
    if (tooLarge(req, res)) return;
    const coding = req.headers['transfer-encoding'];
    if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
      // Node's parser removes only the chunked framing: a body in another transfer coding (`gzip, chunked`)
      // would reach the upstream still coded, with nothing saying so (RFC 9112 §6.1: 501).
      res.setHeader('Connection', 'close');
      respond(
        req,
        res,
        errorResponse(501, 'Not Implemented', 'Only the chunked transfer coding is supported.'),
      );
      return;
    }
    const path = requestPath(req.url);
    if (isPublic(req.method ?? 'GET', path)) {
      state.decision = 'public';
      forward(req, res, state);
      return;
    }
    authenticator
      .authenticate(requestFacts(req, path))
      .then((outcome) => {
        state.outcome = outcome;
        metrics?.authDecision(
          outcome.action === 'respond' ? outcome.reason : (outcome.context.reason ?? 'confirmed'),
        );
        if (outcome.action === 'respond') {
          state.decision = outcome.response.status === 503 ? 'unavailable' : 'rejected';
          respond(req, res, outcome.response);
          return;
        }
        state.decision = outcome.context.userStatus === 'Confirmed' ? 'confirmed' : 'delegated';
        injectIdentity(req, outcome.headers);
        forward(req, res, state);
      })
      .catch((error: unknown) => {
        logger.error({ requestId, err: { message: (error as Error).message } }, 'request failed');
        if (!res.headersSent)
          respond(req, res, errorResponse(503, 'Service Unavailable', 'Authentication failed.'));
        else res.destroy();
      });
  };

  const handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const requestId = requestIdOf(req.headers[REQUEST_ID_HEADER.toLowerCase()]);
    stripRequestIdentity(req);
    removeHopByHop(req.headers as Record<string, unknown>, true);
    req.headers[REQUEST_ID_HEADER.toLowerCase()] = requestId;
    socket.on('error', () => socket.destroy());
    const reject = (response: PreparedResponse): void => {
      socket.end(rawResponse(response, REASONS[response.status] ?? 'Error'));
    };
    if (draining || !req.url?.startsWith('/')) {
      reject(errorResponse(400, 'Bad Request', 'The request target must be a path.'));
      return;
    }
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || req.method !== 'GET') {
      reject(errorResponse(400, 'Bad Request', 'Only WebSocket upgrades (GET) are forwarded.'));
      return;
    }
    const path = requestPath(req.url);
    const proceed = (): void => {
      forwarder?.ws(req, socket, head, (failure) => {
        metrics?.upstreamError(failure);
        logger.warn({ requestId, path, upstreamError: failure }, 'websocket upgrade failed');
      });
    };
    if (isPublic(req.method ?? 'GET', path)) {
      proceed();
      return;
    }
    authenticator.authenticate(requestFacts(req, path)).then(
      (outcome) => {
        logger.info(
          {
            requestId,
            path,
            upgrade: true,
            status: outcome.action === 'respond' ? outcome.response.status : 101,
            userId: outcome.action === 'forward' ? outcome.context.user?.userId : undefined,
          },
          'request',
        );
        if (outcome.action === 'respond') {
          reject(outcome.response);
          return;
        }
        injectIdentity(req, outcome.headers);
        proceed();
      },
      () => reject(errorResponse(503, 'Service Unavailable', 'Authentication failed.')),
    );
  };

  const serverOptions = {
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

  const forwardAuth = config.forward_auth.enabled
    ? createForwardAuthHandler({ authenticator, path: config.forward_auth.path, logger, metrics })
    : undefined;

  let proxyServer: Server | undefined;
  let url: string | undefined;
  if (config.listen !== undefined && forwarder !== undefined) {
    proxyServer = createServer(serverOptions, handle);
    proxyServer.keepAliveTimeout = 5_000;
    proxyServer.setTimeout(config.limits.idle_timeout_seconds * 1000, onIdle);
    // CONNECT would make this an open proxy: refuse it with an answer, not a bare close.
    proxyServer.on('connect', (_req: IncomingMessage, socket: Duplex) => {
      socket.on('error', () => socket.destroy());
      socket.end(
        rawResponse(
          errorResponse(405, 'Method Not Allowed', 'CONNECT is not supported.'),
          'Method Not Allowed',
        ),
      );
    });
    proxyServer.on('upgrade', handleUpgrade);
    // Node would answer `Expect: 100-continue` before authentication and invite a rejected upload: decide first.
    proxyServer.on('checkContinue', handle);
    proxyServer.on('clientError', answerClientError);
    url = await listen(proxyServer, config.listen.host, config.listen.port);
  }

  let forwardAuthServer: Server | undefined;
  let forwardAuthUrl: string | undefined;
  if (forwardAuth !== undefined && config.forward_auth.listen !== undefined) {
    forwardAuthServer = createServer(serverOptions, (req, res) => {
      track(res);
      if (forwardAuth.matches(requestPath(req.url))) forwardAuth.handle(req, res);
      else respond(req, res, errorResponse(404, 'Not Found', 'No such endpoint.'));
    });
    forwardAuthServer.on('clientError', answerClientError);
    const base = await listen(
      forwardAuthServer,
      config.forward_auth.listen.host,
      config.forward_auth.listen.port,
    );
    forwardAuthUrl = `${base}${config.forward_auth.path}`;
  }

  const admin =
    deps.adminListener === false
      ? undefined
      : await startAdmin(config, {
          logger,
          authenticator,
          forwardAuth: config.forward_auth.listen === undefined ? forwardAuth : undefined,
          metricsText: metrics === undefined ? undefined : () => metrics.scrape(),
          metricsContentType: metrics?.contentType,
          track,
        });
  if (admin?.forwardAuthUrl !== undefined) forwardAuthUrl = admin.forwardAuthUrl;

  const closeServer = (server: Server | undefined): Promise<void> =>
    server === undefined ? Promise.resolve() : new Promise((resolve) => server.close(() => resolve()));

  return {
    url,
    adminUrl: admin?.url,
    forwardAuthUrl,
    authenticator,
    inFlight: () => inFlight,
    async shutdown(graceMs) {
      draining = true;
      admin?.draining();
      const closing = [closeServer(proxyServer), closeServer(forwardAuthServer)];
      proxyServer?.closeIdleConnections();
      forwardAuthServer?.closeIdleConnections();
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, graceMs);
          idle.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      const unfinished = inFlight;
      proxyServer?.closeAllConnections();
      forwardAuthServer?.closeAllConnections();
      await Promise.all(closing);
      await admin?.close();
      forwarder?.close();
      await authenticator.close();
      return { unfinished };
    },
  };
}

export interface AdminOptions {
  readonly logger: Logger;
  /** For /readyz and for forward-auth served here. */
  readonly authenticator: Authenticator;
  /** Forward-auth on this listener (when it has no listener of its own). */
  readonly forwardAuth?: ForwardAuthHandler | undefined;
  readonly metricsText?: (() => Promise<string>) | undefined;
  readonly metricsContentType?: string | undefined;
  /** Counts forward-auth requests as in flight for the drain. */
  readonly track?: ((res: ServerResponse) => void) | undefined;
}

export interface RunningAdmin {
  readonly url: string;
  readonly forwardAuthUrl: string | undefined;
  /** From now on /readyz answers 503. */
  draining(): void;
  close(): Promise<void>;
}

/** The admin listener: /healthz, /readyz, /metrics, and forward-auth unless it has a listener of its own. */
export async function startAdmin(config: ProxyConfig, options: AdminOptions): Promise<RunningAdmin> {
  const { authenticator, forwardAuth, metricsText } = options;
  let draining = false;
  const admin = createServer(
    {
      maxHeaderSize: config.limits.max_header_bytes,
      headersTimeout: config.limits.headers_timeout_seconds * 1000,
    },
    (req, res) => {
      const path = requestPath(req.url);
      if (forwardAuth?.matches(path)) {
        options.track?.(res);
        forwardAuth.handle(req, res);
        return;
      }
      const json = (status: number, body: unknown): void => {
        const text = JSON.stringify(body);
        res.writeHead(status, {
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(text),
        });
        res.end(req.method === 'HEAD' ? undefined : text);
      };
      if (path === '/healthz') {
        json(200, { status: 'ok' });
      } else if (path === '/readyz') {
        if (draining) {
          json(503, { status: 'draining' });
          return;
        }
        authenticator.ready().then(
          (ready) => json(ready ? 200 : 503, { status: ready ? 'ready' : 'keystone unavailable' }),
          () => json(503, { status: 'keystone unavailable' }),
        );
      } else if (path === '/metrics' && metricsText !== undefined) {
        metricsText().then(
          (text) => {
            res.writeHead(200, { 'Content-Type': options.metricsContentType ?? 'text/plain; version=0.0.4' });
            res.end(text);
          },
          (error: unknown) => json(500, { error: (error as Error).message }),
        );
      } else {
        json(404, { error: { code: 404, title: 'Not Found', message: 'No such admin endpoint.' } });
      }
    },
  );
  admin.on('clientError', answerClientError);
  const url = await listen(admin, config.admin_listen.host, config.admin_listen.port);
  return {
    url,
    forwardAuthUrl: forwardAuth === undefined ? undefined : `${url}${config.forward_auth.path}`,
    draining: () => {
      draining = true;
    },
    close: () =>
      new Promise((resolve) => {
        admin.closeAllConnections();
        admin.close(() => resolve());
      }),
  };
}
