/**
 * Applies an engine outcome to node:http objects. Shared by the plain handler, the Express and Koa adapters and
 * the proxy, so all of them strip, inject and answer the same way.
 */
import { type IncomingMessage, type OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { RequestFacts } from '../auth/decision.js';
import {
  type HeaderPair,
  isIdentityHeader,
  stripIdentityRawHeaders,
  WWW_AUTHENTICATE_HEADER,
} from '../identity/headers.js';
import { clientCertificate } from '../tls/client-certificate.js';
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
  const headers = req.headers as Record<string, unknown>;
  // Nearly every request carries none: leave its objects as they are (rebuilding or deleting costs more).
  let found = false;
  for (const name in headers) {
    if (isIdentityHeader(name)) {
      found = true;
      break;
    }
  }
  if (!found) return;
  // A fresh object, not `delete`: deleting puts the headers object in dictionary mode for the rest of the request.
  const kept: Record<string, unknown> = {};
  for (const name in headers) if (!isIdentityHeader(name)) kept[name] = headers[name];
  req.headers = kept as IncomingMessage['headers'];
  req.rawHeaders = stripIdentityRawHeaders(req.rawHeaders);
}

export function requestFacts(req: IncomingMessage, path = requestPath(req.url)): RequestFacts {
  // The listener's verified client certificate (mutual TLS), kept per connection; none on plain http.
  return {
    method: req.method ?? 'GET',
    path,
    headers: req.headers,
    clientCertificate: clientCertificate(req),
  };
}

const lowerNames = new Map<string, string>();
const lower = (name: string): string => {
  let known = lowerNames.get(name);
  if (known === undefined) {
    known = name.toLowerCase();
    lowerNames.set(name, known);
  }
  return known;
};

/** Sets the engine's identity headers on the request the application (or upstream) will see. */
export function injectIdentity(req: IncomingMessage, headers: readonly HeaderPair[]): void {
  // Copied into a fresh object: adding a dozen properties to the parser's object costs ten times more.
  const current = req.headers as Record<string, unknown>;
  const next: Record<string, unknown> = {};
  for (const name in current) next[name] = current[name];
  for (const [name, value] of headers) {
    next[lower(name)] = value;
    req.rawHeaders.push(name, value);
  }
  req.headers = next as IncomingMessage['headers'];
}

export function sendPrepared(req: IncomingMessage, res: ServerResponse, response: PreparedResponse): void {
  res.writeHead(response.status, response.headers);
  res.end(req.method === 'HEAD' ? undefined : response.body);
}

const kWriteHead = Symbol('writeHead');
type Decorated = ServerResponse & { [kWriteHead]?: (...args: unknown[]) => ServerResponse };
type WriteHead = (this: ServerResponse, ...args: unknown[]) => ServerResponse;
const NODE_WRITE_HEAD = ServerResponse.prototype.writeHead as WriteHead;

/**
 * keystonemiddleware adds `WWW-Authenticate: Keystone uri=…` to any 401 the application answers. Replacing the
 * response's writeHead catches both explicit writeHead calls and Node's implicit one on first write.
 * Built once per handler: per request it costs one property store in the common case (the response still has
 * Node's own writeHead); storing more on framework response objects cost 3 µs a request under Express.
 */
export function unauthorizedDecorator(value: string): (res: ServerResponse) => void {
  // Fixed parameters rather than `arguments` and Reflect.apply, which kept Node's writeHead from being inlined
  // (2 µs a response). writeHead takes at most (status, reason, headers); passing undefined for the missing
  // ones is how Node reads them anyway.
  function writeHeadWithChallenge(
    this: Decorated,
    status: number,
    reasonOrHeaders?: unknown,
    headers?: unknown,
  ): ServerResponse {
    if ((typeof status === 'number' ? status : this.statusCode) === 401) {
      const extra =
        headers !== null && typeof headers === 'object'
          ? headers
          : reasonOrHeaders !== null && typeof reasonOrHeaders === 'object'
            ? reasonOrHeaders
            : undefined;
      if (Array.isArray(extra)) {
        // writeHead(status, [name, value, ...]) form: the header list wins over setHeader, so append there.
        extra.push(WWW_AUTHENTICATE_HEADER, value);
      } else if (extra !== undefined) {
        appendHeader(extra as OutgoingHttpHeaders, value);
      } else {
        appendToResponse(this, value);
      }
    }
    const original = this[kWriteHead];
    return original === undefined
      ? NODE_WRITE_HEAD.call(this, status, reasonOrHeaders, headers)
      : original.call(this, status, reasonOrHeaders, headers);
  }
  return (res) => {
    const current = res.writeHead;
    if (current === writeHeadWithChallenge) return;
    // Another layer (compression, on-headers) replaced it already: call that one.
    if (current !== NODE_WRITE_HEAD) (res as Decorated)[kWriteHead] = current as Decorated[typeof kWriteHead];
    res.writeHead = writeHeadWithChallenge as typeof res.writeHead;
  };
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
