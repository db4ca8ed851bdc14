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

  return {
    web(req, res, onFailure) {
      const failures = new FailureReport(res, onFailure);
      const body = requestBody(req, options.maxBodyBytes ?? 0, () => failures.report('other', 413));
      // undici frames the body itself (chunked when no length is declared) and refuses these request headers.
      delete req.headers['transfer-encoding'];
      delete req.headers.expect;
      addForwarded(req, 'encrypted' in req.socket && req.socket.encrypted === true);
      const relay = new ResponseRelay(res, options, failures);
      relay.armDeadlineAfter(body === null ? undefined : req);
      pool.dispatch(
        {
          origin: options.target.origin,
          path: prefix + (req.url ?? '/'),
          method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
          headers: req.headers as Record<string, string | string[]>,
          body: body as Dispatcher.DispatchOptions['body'],
        },
        relay,
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

/** Reports one failure at most: to the caller while nothing was sent, else by cutting the response. */
class FailureReport {
  readonly #res: ServerResponse;
  readonly #onFailure: (failure: UpstreamFailure, status: 502 | 504 | 413) => void;
  #reported = false;

  constructor(res: ServerResponse, onFailure: (failure: UpstreamFailure, status: 502 | 504 | 413) => void) {
    this.#res = res;
    this.#onFailure = onFailure;
  }

  report(failure: UpstreamFailure, status: 502 | 504 | 413): void {
    if (this.#reported) return;
    this.#reported = true;
    // The response already started: all that can be done is cut it, so the client sees a broken body.
    if (this.#res.headersSent) this.#res.destroy();
    else this.#onFailure(failure, status);
  }

  /** An upstream error: 504 for the deadlines, 502 for the rest. */
  fail(error: unknown): void {
    const failure = failureOf(error);
    this.report(failure, failure === 'connect_timeout' || failure === 'response_timeout' ? 504 : 502);
  }
}

/**
 * The body to send upstream, or null when there is none. Only bodies without a declared length need counting
 * against `maxBodyBytes` (a declared one was checked before); past it the request is cut and `tooLarge` called.
 */
function requestBody(
  req: IncomingMessage,
  maxBodyBytes: number,
  tooLarge: () => void,
): NodeJS.ReadableStream | null {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (length === undefined || length === '0')) return null;
  if (maxBodyBytes <= 0 || length !== undefined || !chunked) return req;
  let received = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      received += chunk.length;
      if (received > maxBodyBytes) callback(new Error('request body too large'));
      else callback(null, chunk);
    },
  });
  req.pipe(counted);
  counted.on('error', () => {
    req.destroy();
    tooLarge();
  });
  return counted;
}

/**
 * undici's handler for one exchange: relays the upstream's answer to the client with backpressure, keeps the
 * response-head deadline, and aborts the upstream exchange when the client goes away.
 */
class ResponseRelay implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse;
  readonly #options: ForwarderOptions;
  readonly #failures: FailureReport;
  #controller: Dispatcher.DispatchController | undefined;
  #cut: Error | undefined;
  #deadline: NodeJS.Timeout | undefined;
  #answered = false;
  #waitingForDrain = false;

  constructor(res: ServerResponse, options: ForwarderOptions, failures: FailureReport) {
    this.#res = res;
    this.#options = options;
    this.#failures = failures;
    res.once('close', () => {
      this.#disarm();
      if (!res.writableFinished) this.#abort(new Error('client went away'));
    });
  }

  /**
   * The response head deadline starts once the request body has been sent (`body` ended, or at once without a
   * body), so an upload (a Glance image) may stream for as long as it needs; so may the response body.
   */
  armDeadlineAfter(body: IncomingMessage | undefined): void {
    const arm = (): void => {
      // An upstream may answer before the body is all sent (an early 413, or a download already streaming).
      if (this.#answered) return;
      this.#deadline = setTimeout(() => this.#abort(new ResponseTimeout()), this.#options.responseTimeoutMs);
      this.#deadline.unref();
    };
    if (body === undefined) arm();
    else body.once('end', arm);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#cut !== undefined) controller.abort(this.#cut);
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    status: number,
    headers: Record<string, string | string[] | undefined>,
    statusMessage?: string,
  ): void {
    // 1xx informational answers (103 Early Hints) are not relayed; the final answer follows.
    if (status < 200) return;
    this.#answered = true;
    this.#disarm();
    responseHead(this.#res, status, headers, this.#options);
    try {
      this.#res.writeHead(status, statusMessage || undefined, headers);
    } catch (error) {
      controller.abort(error as Error);
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#res.write(chunk) || this.#waitingForDrain) return;
    // Backpressure: a slow client slows the upstream read, nothing piles up here.
    this.#waitingForDrain = true;
    controller.pause();
    this.#res.once('drain', () => {
      this.#waitingForDrain = false;
      controller.resume();
    });
  }

  onResponseEnd(): void {
    this.#disarm();
    this.#res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#disarm();
    if (this.#cut instanceof ResponseTimeout) this.#failures.fail(this.#cut);
    else if (this.#cut !== undefined) this.#res.destroy();
    else this.#failures.fail(error);
  }

  #abort(reason: Error): void {
    this.#cut ??= reason;
    this.#controller?.abort(reason);
  }

  #disarm(): void {
    clearTimeout(this.#deadline);
  }
}

/** The upstream's response head, made right for this client connection. */
function responseHead(
  res: ServerResponse,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  options: ForwarderOptions,
): void {
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
}
