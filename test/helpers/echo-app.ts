/**
 * An application that echoes the request it received (keystonemiddleware's `echo` is the model), so tests can
 * assert exactly which identity headers arrived. `/status/<code>` answers that status instead.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface EchoBody {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
}

export function echo(req: IncomingMessage, res: ServerResponse): void {
  const match = /^\/status\/(\d{3})/.exec(req.url ?? '');
  const body: EchoBody = {
    method: req.method ?? '',
    url: req.url ?? '',
    headers: req.headers,
    rawHeaders: req.rawHeaders,
  };
  const text = JSON.stringify(body);
  res.writeHead(match ? Number(match[1]) : 200, { 'content-type': 'application/json' });
  res.end(req.method === 'HEAD' ? undefined : text);
}
