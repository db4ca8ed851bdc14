/**
 * The upstream for end-to-end tests: echoes what it received, and has paths for the proxy's edge cases
 * (status codes, slow answers, big bodies both ways, WebSocket-style upgrades).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { echo } from './echo-app.js';

export interface UpstreamStats {
  upgrades: number;
  lastUpgradeHeaders: IncomingMessage['headers'] | undefined;
}

/** Writes `total` bytes (7s) in 64 KiB pieces as fast as the client reads them, then ends the response. */
export function writeBlob(res: ServerResponse, total: number): void {
  const chunk = Buffer.alloc(64 * 1024, 7);
  let sent = 0;
  const pump = (): void => {
    while (sent < total) {
      const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
      sent += piece.length;
      if (!res.write(piece)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

function route(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://upstream');
  if (url.pathname === '/slow') {
    const timer = setTimeout(() => echo(req, res), Number(url.searchParams.get('ms') ?? 1000));
    res.once('close', () => clearTimeout(timer));
    return;
  }
  if (url.pathname === '/sink') {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
    });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ bytes }));
    });
    return;
  }
  if (url.pathname === '/blob') {
    const total = Number(url.searchParams.get('mb') ?? 1) * 1024 * 1024;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) });
    writeBlob(res, total);
    return;
  }
  if (url.pathname === '/early') {
    // Answers before reading the request body, then streams one chunk every 100 ms for `ms`, while the body
    // still arrives: the head is out before the request body ends.
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    const until = Date.now() + Number(url.searchParams.get('ms') ?? 1000);
    const timer = setInterval(() => {
      if (Date.now() < until) {
        res.write('tick\n');
        return;
      }
      clearInterval(timer);
      res.end('done\n');
    }, 100);
    res.once('close', () => clearInterval(timer));
    return;
  }
  if (url.pathname === '/hop') {
    res.writeHead(200, {
      'content-type': 'text/plain',
      connection: 'x-secret-hop',
      'x-secret-hop': 'leak',
      'keep-alive': 'timeout=5',
    });
    res.end('hop');
    return;
  }
  echo(req, res);
}

export function createUpstream(stats: UpstreamStats): Server {
  const server = createServer(route);
  server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
    stats.upgrades++;
    stats.lastUpgradeHeaders = req.headers;
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    socket.pipe(socket);
  });
  return server;
}
