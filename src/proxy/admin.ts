/**
 * The admin listener, never the proxied port: /healthz (the process runs), /readyz (the service token is held and
 * Keystone answers; 503 while draining), /metrics, and forward-auth unless it has a listener of its own.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ProxyConfig } from '../config/proxy-config.js';
import type { Authenticator } from '../http/authenticate.js';
import { requestPath } from '../http/node-request.js';
import type { Logger, TlsObserver } from '../observability/observer.js';
import { createListenerTls } from '../tls/listener-tls.js';
import type { ForwardAuthHandler } from './forward-auth.js';
import { answerClientError, createListenerServer, listen } from './listeners.js';

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
  /** Counts the admin listener's TLS handshake failures and reloads (with admin_listen.tls). */
  readonly tlsObserver?: TlsObserver | undefined;
}

export interface RunningAdmin {
  readonly url: string;
  readonly forwardAuthUrl: string | undefined;
  /** From now on /readyz answers 503. */
  draining(): void;
  /** Re-reads admin_listen.tls's files; true without TLS. */
  reloadTls(): boolean;
  close(): Promise<void>;
}

export async function startAdmin(config: ProxyConfig, options: AdminOptions): Promise<RunningAdmin> {
  const { authenticator, forwardAuth, metricsText } = options;
  let draining = false;

  const ready = (json: Json): void => {
    if (draining) {
      json(503, { status: 'draining' });
      return;
    }
    authenticator.ready().then(
      (ok) => json(ok ? 200 : 503, { status: ok ? 'ready' : 'keystone unavailable' }),
      () => json(503, { status: 'keystone unavailable' }),
    );
  };
  const metrics = (res: ServerResponse, json: Json, text: () => Promise<string>): void => {
    text().then(
      (body) => {
        res.writeHead(200, { 'Content-Type': options.metricsContentType ?? 'text/plain; version=0.0.4' });
        res.end(body);
      },
      (error: unknown) => json(500, { error: (error as Error).message }),
    );
  };

  const tls =
    config.admin_listen.tls === undefined
      ? undefined
      : createListenerTls({
          listener: 'admin',
          tls: config.admin_listen.tls,
          path: 'admin_listen.tls',
          logger: options.logger,
          observer: options.tlsObserver,
        });
  const admin = createListenerServer(
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
      const json = jsonAnswer(req, res);
      if (path === '/healthz') json(200, { status: 'ok' });
      else if (path === '/readyz') ready(json);
      else if (path === '/metrics' && metricsText !== undefined) metrics(res, json, metricsText);
      else json(404, { error: { code: 404, title: 'Not Found', message: 'No such admin endpoint.' } });
    },
    tls,
  );
  admin.on('clientError', answerClientError);
  const url = await listen(admin, config.admin_listen.host, config.admin_listen.port);
  return {
    url,
    forwardAuthUrl: forwardAuth === undefined ? undefined : `${url}${config.forward_auth.path}`,
    draining: () => {
      draining = true;
    },
    reloadTls: () => tls?.reload('signal') ?? true,
    close: () =>
      new Promise((resolve) => {
        tls?.close();
        admin.closeAllConnections();
        admin.close(() => resolve());
      }),
  };
}

type Json = (status: number, body: unknown) => void;

function jsonAnswer(req: IncomingMessage, res: ServerResponse): Json {
  return (status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(text),
    });
    res.end(req.method === 'HEAD' ? undefined : text);
  };
}
