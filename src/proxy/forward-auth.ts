/**
 * Forward-auth: another proxy asks whether a request may pass and which identity headers to add to it.
 * - nginx `auth_request`: the subrequest carries the client's headers; the original method and URI come in
 *   X-Original-Method / X-Original-URI (set them in nginx, see config/nginx-auth-request.conf).
 * - Traefik ForwardAuth: X-Forwarded-Method / X-Forwarded-Uri.
 * - Envoy ext_authz (HTTP service): the check request keeps the original method, and its path is the original
 *   path behind `path_prefix` (set path_prefix to this endpoint's path).
 * Answers 200 with the identity headers as response headers (to copy onto the request), or keystonemiddleware's
 * 401, or 503. Only the configured front proxy may be allowed to reach this endpoint: it trusts the
 * X-Original-* / X-Forwarded-* headers for the access-rule check.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Authenticator } from '../http/authenticate.js';
import { requestPath, sendPrepared } from '../http/node-request.js';
import { REQUEST_ID_HEADER } from '../identity/headers.js';
import type { ProxyMetrics } from '../observability/metrics.js';
import { ACCESS_LOG_MESSAGE, type Logger } from '../observability/observer.js';
import { requestIdOf } from './request-id.js';

export interface ForwardAuthOptions {
  readonly authenticator: Authenticator;
  /** The endpoint's path, e.g. `/auth`. */
  readonly path: string;
  readonly logger: Logger;
  readonly metrics?: ProxyMetrics | undefined;
}

export interface ForwardAuthHandler {
  matches(path: string): boolean;
  handle(req: IncomingMessage, res: ServerResponse): void;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}

/** The method and path of the request being authorised (not of the check request itself). */
export function originalRequest(
  req: IncomingMessage,
  endpointPath: string,
): { method: string; path: string } {
  const method = header(req, 'x-original-method') ?? header(req, 'x-forwarded-method') ?? req.method ?? 'GET';
  const uri = header(req, 'x-original-uri') ?? header(req, 'x-forwarded-uri');
  if (uri !== undefined) return { method: method.toUpperCase(), path: requestPath(uri) };
  const own = requestPath(req.url);
  const rest = own.slice(endpointPath.length);
  return { method: method.toUpperCase(), path: rest.startsWith('/') ? rest : `/${rest}` };
}

export function createForwardAuthHandler(options: ForwardAuthOptions): ForwardAuthHandler {
  const { authenticator, path: endpoint, logger, metrics } = options;
  return {
    matches: (path) => path === endpoint || path.startsWith(`${endpoint}/`),
    handle(req, res) {
      const requestId = requestIdOf(req.headers[REQUEST_ID_HEADER.toLowerCase()]);
      res.setHeader(REQUEST_ID_HEADER, requestId);
      const original = originalRequest(req, endpoint);
      const done = metrics?.requestStarted();
      const started = performance.now();
      authenticator
        .authenticate({ method: original.method, path: original.path, headers: req.headers })
        .then((outcome) => {
          metrics?.authDecision(
            outcome.action === 'respond' ? outcome.reason : (outcome.context.reason ?? 'confirmed'),
          );
          if (outcome.action === 'respond') {
            sendPrepared(req, res, outcome.response);
          } else {
            const headers: Record<string, string> = { 'Content-Length': '0' };
            for (const [name, value] of outcome.headers) headers[name] = value;
            res.writeHead(200, headers);
            res.end();
          }
          const status = res.statusCode;
          metrics?.request(
            outcome.action === 'forward' ? 'confirmed' : status === 503 ? 'unavailable' : 'rejected',
            original.method,
            status,
            (performance.now() - started) / 1000,
          );
          logger.info(
            {
              requestId,
              forwardAuth: true,
              filter: authenticator.options.filter,
              method: original.method,
              path: original.path,
              status,
              userId: outcome.action === 'forward' ? outcome.context.user?.userId : undefined,
              reason: outcome.action === 'respond' ? outcome.reason : outcome.context.reason,
              cache: outcome.cache,
            },
            ACCESS_LOG_MESSAGE,
          );
        })
        .catch((error: unknown) => {
          logger.error({ requestId, err: { message: (error as Error).message } }, 'forward-auth failed');
          if (!res.headersSent) {
            res.writeHead(503, { 'Content-Type': 'application/json' });
            res.end();
          }
        })
        .finally(() => done?.());
    },
  };
}
