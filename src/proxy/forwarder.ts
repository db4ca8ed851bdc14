/**
 * The only module that knows the forwarding libraries: undici's dispatcher for HTTP requests (measured faster than
 * Node's http client here: README "Forwarding library"), httpxy for WebSocket upgrades. Streams both ways, never
 * buffers; maps upstream failures to 502/504 with a bounded reason; removes hop-by-hop headers; aborts the
 * upstream exchange when the client goes away.
 */
import { Agent as HttpAgent, type IncomingMessage, type ServerResponse } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { type Duplex, Transform } from 'node:stream';
import { createProxyServer } from 'httpxy';
import { type Dispatcher, Pool } from 'undici';

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

/** Our response-head deadline, told apart from the library's errors (undici reports connect timeouts itself). */
class ResponseTimeout extends Error {
  constructor() {
    super('response_timeout');
  }
}

function failureOf(error: unknown): UpstreamFailure {
  if (error instanceof ResponseTimeout) return 'response_timeout';
  const code = (error as { code?: unknown }).code;
  if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ENOTFOUND') {
    return 'connect_refused';
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') return 'connect_timeout';
  // UND_ERR_SOCKET: the upstream closed the connection before the answer was complete.
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'UND_ERR_SOCKET') return 'reset';
  return 'other';
}

/** X-Forwarded-For gets the peer appended (the upstream sees the whole chain); the others are kept when set. */
function addForwarded(req: IncomingMessage, secure: boolean): void {
  const headers = req.headers;
  const peer = req.socket.remoteAddress;
  if (peer !== undefined) {
    const chain = headers['x-forwarded-for'];
    headers['x-forwarded-for'] = chain === undefined || chain === '' ? peer : `${chain}, ${peer}`;
  }
  const host = headers.host;
  if (headers['x-forwarded-port'] === undefined) {
    const port = host === undefined ? undefined : /:(\d+)$/.exec(host)?.[1];
    headers['x-forwarded-port'] = port ?? (secure ? '443' : '80');
  }
  if (headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = secure ? 'https' : 'http';
  if (headers['x-forwarded-host'] === undefined && host !== undefined) headers['x-forwarded-host'] = host;
}

export function createForwarder(options: ForwarderOptions): Forwarder {
  const secure = options.target.protocol === 'https:';
  // Requests go to `<target path><request target>`, as http-proxy/httpxy join them.
  const prefix = options.target.pathname.replace(/\/+$/, '');
  const pool = new Pool(options.target.origin, {
    connect: { timeout: options.connectTimeoutMs, rejectUnauthorized: !options.insecure },
    // The response head deadline is ours (it starts once the body is sent); bodies stream for as long as needed.
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  // WebSocket upgrades only: undici's upgrade API drops a refused upgrade's answer, httpxy forwards it.
  const agent = secure
    ? new HttpsAgent({ keepAlive: true, rejectUnauthorized: !options.insecure })
    : new HttpAgent({ keepAlive: true });
  const wsProxy = createProxyServer({
    target: options.target.href,
    agent,
    xfwd: true,
    ws: true,
    secure: !options.insecure,
    changeOrigin: false,
  });

  const responseHead = (
    res: ServerResponse,
    status: number,
    headers: Record<string, string | string[] | undefined>,
  ): void => {
    removeHopByHop(headers);
    // Framing is per connection: Node frames the body for this client (chunked for HTTP/1.1; for an HTTP/1.0
    // client, which cannot read chunks, until the connection closes).
    if (headers['transfer-encoding'] === 'chunked') delete headers['transfer-encoding'];
    // The client connection's own fate (a client's `Connection: close`, or our drain), not the upstream's.
    const keep = res.shouldKeepAlive && options.draining?.() !== true;
    headers.connection = keep ? 'keep-alive' : 'close';
    if (status === 401) {
      const existing = headers['www-authenticate'];
      const values = existing === undefined ? [] : Array.isArray(existing) ? existing : [existing];
      headers['www-authenticate'] = [...values, options.wwwAuthenticate];
    }
  };

  return {
    web(req, res, onFailure) {
      let reported = false;
      const report = (failure: UpstreamFailure, status: 502 | 504 | 413): void => {
        if (reported) return;
        reported = true;
        // The response already started: all that can be done is cut it, so the client sees a broken body.
        if (res.headersSent) res.destroy();
        else onFailure(failure, status);
      };
      const fail = (error: unknown): void => {
        const failure = failureOf(error);
        report(failure, failure === 'connect_timeout' || failure === 'response_timeout' ? 504 : 502);
      };

      const headers = req.headers;
      const length = headers['content-length'];
      const chunked = headers['transfer-encoding'] !== undefined;
      let body: NodeJS.ReadableStream | null =
        chunked || (length !== undefined && length !== '0') ? req : null;
      const max = options.maxBodyBytes ?? 0;
      if (max > 0 && length === undefined && chunked) {
        // Only bodies without a declared length need counting; a declared one was checked before.
        let received = 0;
        const counted = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            received += chunk.length;
            if (received > max)
              callback(Object.assign(new Error('request body too large'), { code: 'KAP_TOO_LARGE' }));
            else callback(null, chunk);
          },
        });
        req.pipe(counted);
        counted.on('error', () => {
          req.destroy();
          report('other', 413);
        });
        body = counted;
      }
      // undici frames the body itself (chunked when no length is declared) and refuses these request headers.
      delete headers['transfer-encoding'];
      delete headers.expect;
      addForwarded(req, 'encrypted' in req.socket && req.socket.encrypted === true);

      let controller: Dispatcher.DispatchController | undefined;
      let cut: Error | undefined;
      let deadline: NodeJS.Timeout | undefined;
      const abort = (reason: Error): void => {
        cut ??= reason;
        controller?.abort(reason);
      };
      // The response head deadline starts once the request body has been sent, so an upload (a Glance image) may
      // stream for as long as it needs; so may the response body.
      let answered = false;
      const armDeadline = (): void => {
        // An upstream may answer before the body is all sent (an early 413, or a download already streaming).
        if (answered) return;
        deadline = setTimeout(() => abort(new ResponseTimeout()), options.responseTimeoutMs);
        deadline.unref();
      };
      const disarm = (): void => clearTimeout(deadline);
      if (body === null) armDeadline();
      else req.once('end', armDeadline);
      res.once('close', () => {
        disarm();
        if (!res.writableFinished) abort(new Error('client went away'));
      });

      let waitingForDrain = false;
      pool.dispatch(
        {
          origin: options.target.origin,
          path: prefix + (req.url ?? '/'),
          method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
          headers: headers as Record<string, string | string[]>,
          body: body as Dispatcher.DispatchOptions['body'],
        },
        {
          onRequestStart(c) {
            controller = c;
            if (cut !== undefined) c.abort(cut);
          },
          onResponseStart(c, status, responseHeaders, statusMessage) {
            // 1xx informational answers (103 Early Hints) are not relayed; the final answer follows.
            if (status < 200) return;
            answered = true;
            disarm();
            const outgoing = responseHeaders as Record<string, string | string[] | undefined>;
            responseHead(res, status, outgoing);
            try {
              res.writeHead(status, statusMessage || undefined, outgoing);
            } catch (error) {
              c.abort(error as Error);
            }
          },
          onResponseData(c, chunk) {
            if (res.write(chunk) || waitingForDrain) return;
            // Backpressure: a slow client slows the upstream read, nothing piles up here.
            waitingForDrain = true;
            c.pause();
            res.once('drain', () => {
              waitingForDrain = false;
              c.resume();
            });
          },
          onResponseEnd() {
            disarm();
            res.end();
          },
          onResponseError(_c, error) {
            disarm();
            if (cut instanceof ResponseTimeout) fail(cut);
            else if (cut !== undefined) res.destroy();
            else fail(error);
          },
        },
      );
    },
    ws(req, socket, head, onFailure) {
      wsProxy.ws(req, socket as never, {}, head).catch((error: unknown) => {
        onFailure(failureOf(error));
        socket.destroy();
      });
    },
    close() {
      wsProxy.close();
      agent.destroy();
      void pool.destroy();
    },
  };
}
