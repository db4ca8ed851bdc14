/**
 * The WWW-Authenticate decoration of an application's own 401s, on a real node:http server: every writeHead
 * form, the implicit one, other statuses untouched, another layer's writeHead kept, decorating twice harmless.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { unauthorizedDecorator } from '../../../src/http/node-request.js';

const CHALLENGE = 'Keystone uri="http://keystone.example:5000"';
const decorate = unauthorizedDecorator(CHALLENGE);
let url: string;
let layerCalls = 0;

const routes: Record<string, (res: ServerResponse) => void> = {
  '/set-header': (res) => {
    res.setHeader('www-authenticate', 'Basic realm="app"');
    res.writeHead(401);
    res.end();
  },
  '/object': (res) => res.writeHead(401, { 'content-type': 'text/plain' }).end('no'),
  '/reason-object': (res) => res.writeHead(401, 'Go Away', { 'x-a': '1' }).end(),
  '/array': (res) => res.writeHead(401, ['x-b', '2']).end(),
  '/implicit': (res) => {
    res.statusCode = 401;
    res.end('implicit');
  },
  '/ok': (res) => res.writeHead(200, { 'x-c': '3' }).end('fine'),
  '/layered': (res) => {
    // Like on-headers (compression, morgan): a writeHead of its own, installed before ours.
    const inner = res.writeHead;
    res.writeHead = function (this: ServerResponse, ...args: unknown[]) {
      layerCalls++;
      return (inner as (...a: unknown[]) => ServerResponse).apply(this, args);
    } as typeof res.writeHead;
    decorate(res);
    res.writeHead(401).end();
  },
  '/twice': (res) => {
    decorate(res);
    res.writeHead(401).end();
  },
};

beforeAll(async () => {
  const server = createServer((req, res) => {
    const route = routes[req.url ?? ''];
    if (route === undefined) return void res.writeHead(404).end();
    if (req.url !== '/layered') decorate(res);
    route(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return () => new Promise<void>((resolve) => server.close(() => resolve()));
});

const get = (path: string) => fetch(`${url}${path}`);

describe('unauthorizedDecorator', () => {
  it('adds the challenge after the one the app set', async () => {
    const res = await get('/set-header');
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(`Basic realm="app", ${CHALLENGE}`);
  });

  it.each(['/object', '/reason-object', '/array', '/implicit', '/twice'])(
    '%s: 401 carries it once',
    async (path) => {
      const res = await get(path);
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    },
  );

  it('keeps what the app passed to writeHead', async () => {
    const withReason = await get('/reason-object');
    expect(withReason.statusText).toBe('Go Away');
    expect(withReason.headers.get('x-a')).toBe('1');
    expect((await get('/array')).headers.get('x-b')).toBe('2');
    expect(await (await get('/object')).text()).toBe('no');
  });

  it('leaves other statuses alone', async () => {
    const res = await get('/ok');
    expect(res.status).toBe(200);
    expect(res.headers.get('www-authenticate')).toBeNull();
    expect(res.headers.get('x-c')).toBe('3');
  });

  it("calls another layer's writeHead installed before it", async () => {
    const before = layerCalls;
    const res = await get('/layered');
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    expect(layerCalls).toBe(before + 1);
  });
});
