/**
 * The only module that knows the forwarding library (httpxy, the maintained TypeScript fork of http-proxy; see
 * README "Forwarding library"). Streams both ways, never buffers; maps upstream failures to 502/504 with a
 * bounded reason; removes hop-by-hop headers; aborts the upstream exchange when the client goes away.
 */
import { Agent as HttpAgent, type IncomingMessage, type ServerResponse } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { type Duplex, Transform } from 'node:stream';
import { createProxyServer } from 'httpxy';

export type UpstreamFailure = 'connect_refused' | 'connect_timeout' | 'reset' | 'response_timeout' | 'other';

export interface ForwarderOptions {
  readonly target: URL;
  readonly connectTimeoutMs: number;
  readonly responseTimeoutMs: number;
  readonly insecure: boolean;
  /** Appended to every 401 the upstream answers (keystonemiddleware does the same). */
  readonly wwwAuthenticate: string;
  /** True while the proxy drains: answers then say `Connection: close`, so clients stop reusing connections. */
  readonly draining?: () => boolean;
  /** Bodies without a declared length are counted as they stream and cut past this (413); 0: no limit. */
  readonly maxBodyBytes?: number;
}

export interface Forwarder {
  /**
   * Forwards an HTTP request whose hop-by-hop headers are already gone (see `removeHopByHop`: the caller removes
   * them before it injects identity headers); `onFailure` is called at most once.
   */
  web(
    req: IncomingMessage,
    res: ServerResponse,
    onFailure: (failure: UpstreamFailure, status: 502 | 504 | 413) => void,
  ): void;
  /** Forwards a WebSocket upgrade; the socket is destroyed on failure. */
  ws(req: IncomingMessage, socket: Duplex, head: Buffer, onFailure: (failure: UpstreamFailure) => void): void;
  close(): void;
}

/** RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'upgrade',
];

/**
 * Removes hop-by-hop headers, including every name the Connection header lists. On a request this must run before
 * identity headers are injected: a client's `Connection: X-Service-Identity-Status` would otherwise remove the
 * proxy's own verdict on the way out.
 */
export function removeHopByHop(headers: Record<string, unknown>, keepUpgrade = false): void {
  const connection = headers.connection;
  const listed =
    typeof connection === 'string' ? connection.split(',').map((name) => name.trim().toLowerCase()) : [];
  for (const name of [...HOP_BY_HOP, ...listed]) {
    if (keepUpgrade && (name === 'upgrade' || name === 'connection')) continue;
    if (name.length > 0) delete headers[name];
  }
}

const kTimedOut = Symbol('timedOut');
type Tracked = { [kTimedOut]?: 'connect_timeout' | 'response_timeout' };

function failureOf(error: unknown, timedOut: Tracked[typeof kTimedOut]): UpstreamFailure {
  if (timedOut !== undefined) return timedOut;
  const code = (error as { code?: unknown }).code;
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ENOTFOUND') {
    return 'connect_refused';
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset';
  if (code === 'ETIMEDOUT') return 'connect_timeout';
  return 'other';
}

export function createForwarder(options: ForwarderOptions): Forwarder {
  const secure = options.target.protocol === 'https:';
  const agent = secure
    ? new HttpsAgent({ keepAlive: true, rejectUnauthorized: !options.insecure })
    : new HttpAgent({ keepAlive: true });
  const proxy = createProxyServer({
    target: options.target.href,
    agent,
    xfwd: true,
    ws: true,
    secure: !options.insecure,
    changeOrigin: false,
  });

  proxy.on('proxyReq', (proxyReq, req) => {
    const tracked = req as unknown as Tracked;
    // Connect and response-head deadlines. The response deadline starts once the request body has been sent, so
    // an upload (a Glance image) may stream for as long as it needs; so may the response body.
    let response: NodeJS.Timeout | undefined;
    proxyReq.once('finish', () => {
      response = setTimeout(() => {
        tracked[kTimedOut] = 'response_timeout';
        proxyReq.destroy();
      }, options.responseTimeoutMs);
      response.unref();
    });
    proxyReq.once('response', () => clearTimeout(response));
    proxyReq.once('close', () => clearTimeout(response));
    const socket = proxyReq.socket;
    if (socket?.connecting) {
      const connect = setTimeout(() => {
        tracked[kTimedOut] = 'connect_timeout';
        proxyReq.destroy();
      }, options.connectTimeoutMs);
      connect.unref();
      socket.once('connect', () => clearTimeout(connect));
      proxyReq.once('close', () => clearTimeout(connect));
    }
  });

  proxy.on('proxyRes', (proxyRes, _req, res) => {
    removeHopByHop(proxyRes.headers as Record<string, unknown>);
    // The client connection's own fate (a client's `Connection: close`, or our drain), not the upstream's.
    const keep = (res as ServerResponse).shouldKeepAlive && options.draining?.() !== true;
    proxyRes.headers.connection = keep ? 'keep-alive' : 'close';
    if (proxyRes.statusCode === 401) {
      const existing = proxyRes.headers['www-authenticate'];
      const values = existing === undefined ? [] : Array.isArray(existing) ? existing : [existing];
      proxyRes.headers['www-authenticate'] = [...values, options.wwwAuthenticate] as unknown as string;
    }
  });

  return {
    web(req, res, onFailure) {
      let reported = false;
      const max = options.maxBodyBytes ?? 0;
      let counted: Transform | undefined;
      if (
        max > 0 &&
        req.headers['content-length'] === undefined &&
        req.headers['transfer-encoding'] !== undefined
      ) {
        // Only bodies without a declared length need counting; a declared one was checked before.
        let received = 0;
        counted = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            received += chunk.length;
            if (received > max)
              callback(Object.assign(new Error('request body too large'), { code: 'KAP_TOO_LARGE' }));
            else callback(null, chunk);
          },
        });
        req.pipe(counted);
        counted.on('error', () => {
          if (reported) return;
          reported = true;
          req.destroy();
          if (res.headersSent) res.destroy();
          else onFailure('other', 413);
        });
      }
      proxy
        .web(req, res, counted === undefined ? {} : { buffer: counted }, undefined)
        .catch((error: unknown) => {
          if (reported) return;
          reported = true;
          const failure = failureOf(error, (req as unknown as Tracked)[kTimedOut]);
          if (res.headersSent) {
            // The response already started: all that can be done is cut it, so the client sees a broken body.
            res.destroy();
            return;
          }
          onFailure(failure, failure === 'connect_timeout' || failure === 'response_timeout' ? 504 : 502);
        });
    },
    ws(req, socket, head, onFailure) {
      proxy.ws(req, socket as never, {}, head).catch((error: unknown) => {
        onFailure(failureOf(error, (req as unknown as Tracked)[kTimedOut]));
        socket.destroy();
      });
    },
    close() {
      proxy.close();
      agent.destroy();
    },
  };
}
