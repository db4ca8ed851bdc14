/**
 * Plumbing shared by the proxied, forward-auth and admin listeners: listening, answering malformed requests,
 * idle sockets, knowing when an exchange is over, and counting what is in flight for the drain.
 */
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerOptions,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer, Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { errorResponse, rawResponse } from '../http/responses.js';
import type { ListenerTls } from '../tls/listener-tls.js';

/** A listener's server: node:http, or node:https when the listener has `tls`. */
export type ListenerServer = Server | HttpsServer;

export const REASONS: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Content Too Large',
  431: 'Request Header Fields Too Large',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

export function reasonOf(status: number): string {
  return REASONS[status] ?? 'Error';
}

/**
 * An http server, or an https one with the same http options when the listener has TLS. The TLS handshake gets
 * the head deadline too: a client that opens connections and never finishes a handshake holds them no longer.
 */
export function createListenerServer(
  options: ServerOptions,
  handler: RequestListener,
  tls: ListenerTls | undefined,
): ListenerServer {
  if (tls === undefined) return createServer(options, handler);
  const server = createHttpsServer(
    {
      ...options,
      ...tls.serverOptions,
      ...(options.headersTimeout === undefined ? {} : { handshakeTimeout: options.headersTimeout }),
    },
    handler,
  );
  tls.attach(server);
  return server;
}

/** Listens and resolves with the listener's base URL (https:// for a TLS listener). */
export function listen(server: ListenerServer, host: string, port: number): Promise<string> {
  const scheme = server instanceof HttpsServer ? 'https' : 'http';
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address() as AddressInfo;
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      resolve(`${scheme}://${shown}:${address.port}`);
    });
  });
}

export function closeServer(server: ListenerServer | undefined): Promise<void> {
  return server === undefined ? Promise.resolve() : new Promise((resolve) => server.close(() => resolve()));
}

/**
 * Runs `done` once the exchange is over: when the response closes, or when its connection does (a pipelined
 * request whose connection closed before its turn never gets a response 'close').
 */
export function onceOver(res: ServerResponse, done: () => void): void {
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
export function onIdle(socket: Socket): void {
  const res = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
  if (res !== undefined && res !== null && !res.headersSent && res.req.complete) return;
  socket.destroy();
}

/** Malformed requests, oversized heads and slow clients get a JSON answer too, never a bare close. */
export function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
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
  socket.end(rawResponse(errorResponse(status, reasonOf(status), message), reasonOf(status)));
}

/** CONNECT would make this an open proxy: refuse it with an answer, not a bare close. */
export function refuseConnect(_req: IncomingMessage, socket: Duplex): void {
  socket.on('error', () => socket.destroy());
  socket.end(rawResponse(errorResponse(405, reasonOf(405), 'CONNECT is not supported.'), reasonOf(405)));
}

/** Requests being served, so that a drain knows when the last one is over. */
export class InFlight {
  #count = 0;
  readonly #idle: (() => void)[] = [];

  get count(): number {
    return this.#count;
  }

  track(res: ServerResponse): void {
    this.#count++;
    onceOver(res, () => {
      this.#count--;
      if (this.#count === 0) for (const wake of this.#idle.splice(0)) wake();
    });
  }

  /** Resolves when nothing is in flight, or after `graceMs`. */
  settled(graceMs: number): Promise<void> {
    if (this.#count === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, graceMs);
      this.#idle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
