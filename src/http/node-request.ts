/**
 * Applies an engine outcome to node:http objects. Shared by the plain handler, the Express and Koa adapters and
 * the proxy, so all of them strip, inject and answer the same way.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { RequestFacts } from '../auth/decision.js';
import {
  type HeaderPair,
  stripIdentityHeaders,
  stripIdentityRawHeaders,
  WWW_AUTHENTICATE_HEADER,
} from '../identity/headers.js';
import type { PreparedResponse } from './responses.js';

/** Path without the query string; an absolute-form target (`GET http://host/path`) counts by its path. */
export function requestPath(url: string | undefined): string {
  const raw = url ?? '/';
  let path = raw;
  if (!raw.startsWith('/')) {
    try {
      path = new URL(raw).pathname;
    } catch {
      path = raw;
    }
  }
  const query = path.indexOf('?');
  return query === -1 ? path : path.slice(0, query);
}

/** Step one on every request, before anything else: drop every client-sent identity header. */
export function stripRequestIdentity(req: IncomingMessage): void {
  stripIdentityHeaders(req.headers as Record<string, unknown>);
  req.rawHeaders = stripIdentityRawHeaders(req.rawHeaders);
}

export function requestFacts(req: IncomingMessage, path = requestPath(req.url)): RequestFacts {
  return { method: req.method ?? 'GET', path, headers: req.headers };
}

/** Sets the engine's identity headers on the request the application (or upstream) will see. */
export function injectIdentity(req: IncomingMessage, headers: readonly HeaderPair[]): void {
  for (const [name, value] of headers) {
    req.headers[name.toLowerCase()] = value;
    req.rawHeaders.push(name, value);
  }
}

export function sendPrepared(req: IncomingMessage, res: ServerResponse, response: PreparedResponse): void {
  res.writeHead(response.status, response.headers);
  res.end(req.method === 'HEAD' ? undefined : response.body);
}

/**
 * keystonemiddleware adds `WWW-Authenticate: Keystone uri=…` to any 401 the application answers. Patching the
 * response's writeHead catches both explicit writeHead calls and Node's implicit one on first write.
 */
export function decorateUnauthorized(res: ServerResponse, value: string): void {
  const original = res.writeHead;
  const patched = function (this: ServerResponse, ...args: unknown[]): ServerResponse {
    const status = typeof args[0] === 'number' ? args[0] : this.statusCode;
    if (status === 401) {
      const extra = args.find((arg, i) => i > 0 && arg !== null && typeof arg === 'object');
      if (Array.isArray(extra)) {
        // writeHead(status, [name, value, ...]) form: the header list wins over setHeader, so append there.
        extra.push(WWW_AUTHENTICATE_HEADER, value);
      } else if (extra !== undefined) {
        appendHeader(extra as OutgoingHttpHeaders, value);
      } else {
        appendToResponse(this, value);
      }
    }
    return (original as (...a: unknown[]) => ServerResponse).apply(this, args);
  };
  res.writeHead = patched as typeof res.writeHead;
}

function appendToResponse(res: ServerResponse, value: string): void {
  const existing = res.getHeader(WWW_AUTHENTICATE_HEADER);
  if (existing === undefined) res.setHeader(WWW_AUTHENTICATE_HEADER, value);
  else
    res.setHeader(WWW_AUTHENTICATE_HEADER, [
      ...(Array.isArray(existing) ? existing : [String(existing)]),
      value,
    ]);
}

function appendHeader(headers: OutgoingHttpHeaders, value: string): void {
  const key = Object.keys(headers).find((name) => name.toLowerCase() === 'www-authenticate');
  if (key === undefined) {
    headers[WWW_AUTHENTICATE_HEADER] = value;
    return;
  }
  const existing = headers[key];
  headers[key] = [...(Array.isArray(existing) ? existing : [String(existing)]), value];
}
