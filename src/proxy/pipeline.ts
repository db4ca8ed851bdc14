/**
 * The proxied listener's path for one request, in the order keystonemiddleware's process_request takes it:
 * strip what the client may not say, refuse what cannot be forwarded, let public routes through, authenticate,
 * set the identity headers, forward. One access-log line and the request metrics when the exchange is over.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { ProxyConfig } from '../config/proxy-config.js';
import type { Authenticator, AuthOutcome } from '../http/authenticate.js';
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
import { ACCESS_LOG_MESSAGE, type Logger } from '../observability/observer.js';
import { type Forwarder, removeHopByHop, type UpstreamFailure } from './forwarder.js';
import { onceOver, reasonOf } from './listeners.js';
import { requestIdOf } from './request-id.js';
import { createRouteMatcher } from './routes.js';

const REQUEST_ID_KEY = REQUEST_ID_HEADER.toLowerCase();

const UPSTREAM_MESSAGES: Record<UpstreamFailure, string> = {
  connect_refused: 'The service behind the proxy refused the connection.',
  connect_timeout: 'The service behind the proxy did not accept the connection in time.',
  reset: 'The service behind the proxy closed the connection.',
  response_timeout: 'The service behind the proxy did not answer in time.',
  other: 'The service behind the proxy could not be reached.',
};

/** What the access-log line and the metrics say about one exchange; filled in as the request goes. */
interface Exchange {
  readonly requestId: string;
  decision: RequestDecision;
  outcome?: AuthOutcome;
  upstreamFailure?: UpstreamFailure;
}

export interface PipelineOptions {
  readonly config: ProxyConfig;
  readonly authenticator: Authenticator;
  readonly forwarder: Forwarder;
  readonly logger: Logger;
  readonly metrics: ProxyMetrics | undefined;
  /** True once the proxy drains: answers say `Connection: close`, upgrades are refused. */
  readonly draining: () => boolean;
}

export interface Pipeline {
  /** `request` and `checkContinue` of the proxied listener. */
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** `upgrade` of the proxied listener (WebSocket only). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
}

export function createPipeline(options: PipelineOptions): Pipeline {
  const { config, authenticator, forwarder, logger, metrics, draining } = options;
  const isPublic = createRouteMatcher(config.public_routes);
  const { filter } = authenticator.options;
  const maxBody = config.limits.max_body_bytes;
  const tooLarge = errorResponse(413, reasonOf(413), `The request body exceeds ${maxBody} bytes.`);

  const respond = (req: IncomingMessage, res: ServerResponse, response: PreparedResponse): void => {
    if (draining()) res.setHeader('Connection', 'close');
    sendPrepared(req, res, response);
  };

  /** The request id, and the one log line with the metrics once the exchange is over (finished or cut). */
  const begin = (req: IncomingMessage, res: ServerResponse): Exchange => {
    const exchange: Exchange = {
      requestId: requestIdOf(req.headers[REQUEST_ID_KEY]),
      decision: 'bad_request',
    };
    res.setHeader(REQUEST_ID_HEADER, exchange.requestId);
    const started = performance.now();
    const done = metrics?.requestStarted();
    onceOver(res, () => {
      done?.();
      logExchange(req, res, exchange, (performance.now() - started) / 1000);
    });
    return exchange;
  };

  const logExchange = (
    req: IncomingMessage,
    res: ServerResponse,
    exchange: Exchange,
    seconds: number,
  ): void => {
    const status = res.headersSent ? res.statusCode : 0;
    metrics?.request(exchange.decision, req.method ?? 'GET', status, seconds);
    const { outcome } = exchange;
    const context = outcome?.action === 'forward' ? outcome.context : undefined;
    const line = {
      requestId: exchange.requestId,
      method: req.method,
      path: requestPath(req.url),
      status,
      durationMs: Math.round(seconds * 100_000) / 100,
      decision: exchange.decision,
      filter,
      userId: context?.user?.userId,
      projectId: context?.user?.projectId,
      reason: outcome?.action === 'respond' ? outcome.reason : context?.reason,
      cache: outcome?.cache,
      authMs: outcome === undefined ? undefined : Math.round(outcome.authSeconds * 100_000) / 100,
      upstreamError: exchange.upstreamFailure,
      completed: res.writableFinished,
    };
    if (status >= 500 || !res.writableFinished) logger.warn(line, ACCESS_LOG_MESSAGE);
    else logger.info(line, ACCESS_LOG_MESSAGE);
  };

  /** Before anything can look at the request: the client's identity headers and hop-by-hop headers go. */
  const sanitize = (req: IncomingMessage, requestId: string, keepUpgrade = false): void => {
    stripRequestIdentity(req);
    removeHopByHop(req.headers as Record<string, unknown>, keepUpgrade);
    req.headers[REQUEST_ID_KEY] = requestId;
  };

  /** What this proxy cannot forward faithfully, answered before authentication. */
  const refusal = (req: IncomingMessage): PreparedResponse | undefined => {
    // Only origin-form targets: an absolute URL must never choose where the request goes.
    if (!req.url?.startsWith('/'))
      return errorResponse(400, reasonOf(400), 'The request target must be a path.');
    // A declared length over the limit; bodies without one are counted as they stream (the forwarder's 413).
    if (maxBody > 0 && Number(req.headers['content-length'] ?? 0) > maxBody) return tooLarge;
    const coding = req.headers['transfer-encoding'];
    // Node's parser removes only the chunked framing: a body in another transfer coding (`gzip, chunked`) would
    // reach the upstream still coded, with nothing saying so (RFC 9112 §6.1: 501).
    if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
      return errorResponse(501, reasonOf(501), 'Only the chunked transfer coding is supported.');
    }
    return undefined;
  };

  const forward = (req: IncomingMessage, res: ServerResponse, exchange: Exchange): void => {
    if (draining()) res.setHeader('Connection', 'close');
    if (req.headers.expect !== undefined && /100-continue/i.test(String(req.headers.expect))) {
      // Invite the body only now that the request is allowed; the upstream gets it without waiting.
      delete req.headers.expect;
      res.writeContinue();
    }
    forwarder.web(req, res, (failure, status) => {
      if (status === 413) {
        res.setHeader('Connection', 'close');
        respond(req, res, tooLarge);
        return;
      }
      exchange.upstreamFailure = failure;
      metrics?.upstreamError(failure);
      respond(req, res, errorResponse(status, reasonOf(status), UPSTREAM_MESSAGES[failure]));
    });
  };

  /** The engine's outcome: its own 401/503, or the identity headers set and the request forwarded. */
  const apply = (
    req: IncomingMessage,
    res: ServerResponse,
    exchange: Exchange,
    outcome: AuthOutcome,
  ): void => {
    exchange.outcome = outcome;
    metrics?.authDecision(
      outcome.action === 'respond' ? outcome.reason : (outcome.context.reason ?? 'confirmed'),
    );
    if (outcome.action === 'respond') {
      exchange.decision = outcome.response.status === 503 ? 'unavailable' : 'rejected';
      respond(req, res, outcome.response);
      return;
    }
    exchange.decision = outcome.context.userStatus === 'Confirmed' ? 'confirmed' : 'delegated';
    injectIdentity(req, outcome.headers);
    forward(req, res, exchange);
  };

  const failed = (req: IncomingMessage, res: ServerResponse, exchange: Exchange, error: unknown): void => {
    logger.error(
      { requestId: exchange.requestId, err: { message: (error as Error).message } },
      'request failed',
    );
    if (!res.headersSent) respond(req, res, errorResponse(503, reasonOf(503), 'Authentication failed.'));
    else res.destroy();
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const exchange = begin(req, res);
    sanitize(req, exchange.requestId);
    const refused = refusal(req);
    if (refused !== undefined) {
      if (refused.status !== 400) res.setHeader('Connection', 'close');
      respond(req, res, refused);
      return;
    }
    const path = requestPath(req.url);
    if (isPublic(req.method ?? 'GET', path)) {
      exchange.decision = 'public';
      forward(req, res, exchange);
      return;
    }
    authenticator.authenticate(requestFacts(req, path)).then(
      (outcome) => apply(req, res, exchange, outcome),
      (error: unknown) => failed(req, res, exchange, error),
    );
  };

  const handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const requestId = requestIdOf(req.headers[REQUEST_ID_KEY]);
    sanitize(req, requestId, true);
    socket.on('error', () => socket.destroy());
    const reject = (response: PreparedResponse): void => {
      socket.end(rawResponse(response, reasonOf(response.status)));
    };
    if (draining() || !req.url?.startsWith('/')) {
      reject(errorResponse(400, reasonOf(400), 'The request target must be a path.'));
      return;
    }
    if (req.headers.upgrade?.toLowerCase() !== 'websocket' || req.method !== 'GET') {
      reject(errorResponse(400, reasonOf(400), 'Only WebSocket upgrades (GET) are forwarded.'));
      return;
    }
    const path = requestPath(req.url);
    const proceed = (): void => {
      forwarder.ws(req, socket, head, (failure) => {
        metrics?.upstreamError(failure);
        logger.warn({ requestId, path, upstreamError: failure }, 'websocket upgrade failed');
      });
    };
    if (isPublic(req.method, path)) {
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
          ACCESS_LOG_MESSAGE,
        );
        if (outcome.action === 'respond') {
          reject(outcome.response);
          return;
        }
        injectIdentity(req, outcome.headers);
        proceed();
      },
      () => reject(errorResponse(503, reasonOf(503), 'Authentication failed.')),
    );
  };

  return { handle, handleUpgrade };
}
