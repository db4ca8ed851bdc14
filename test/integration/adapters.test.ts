/**
 * Express 4 and 5, Koa 2 and 3 and the plain node:http handler, on the same engine with the testing fixture:
 * same stripping, same injected headers, same 401/503 answers, identity object on req / ctx.state, and
 * WWW-Authenticate added to the application's own 401s.
 */
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import express5 from 'express';
import express4 from 'express4';
import Koa3 from 'koa';
import Koa2 from 'koa2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeystoneUnavailableError } from '../../src/errors.js';
import { createExpressAuth } from '../../src/express.js';
import type { AuthContext, AuthDependencies } from '../../src/http/authenticate.js';
import { createAuthTokenHandler, getAuthContext } from '../../src/http/handler.js';
import { UNAUTHORIZED_BODY } from '../../src/http/responses.js';
import { createKoaAuth } from '../../src/koa.js';
import { createAuthTokenFixture } from '../../src/testing.js';
import { listen, type Running } from '../helpers/http.js';

const OPTIONS = { www_authenticate_uri: 'http://keystone.example:5000' };
const CHALLENGE = 'Keystone uri="http://keystone.example:5000"';

type Seen = { headers: Record<string, unknown>; identity: AuthContext | undefined };

function reply(res: ServerResponse, status: number, seen: Seen): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(seen));
}

const statusOf = (url: string | undefined): number =>
  Number(/^\/status\/(\d{3})/.exec(url ?? '')?.[1] ?? 200);

type Options = typeof OPTIONS & { filter?: 'auth_token' | 'oauth2_token' };

function expressApp(factory: typeof express5, deps: AuthDependencies, options: Options): RequestListener {
  const app = factory();
  app.use(createExpressAuth(options, deps));
  app.get('/throw401', () => {
    throw Object.assign(new Error('nope'), { status: 401 });
  });
  app.use((req, res) => {
    res.status(statusOf(req.url)).json({ headers: req.headers, identity: req.keystone });
  });
  return app as unknown as RequestListener;
}

function koaApp(Factory: typeof Koa3, deps: AuthDependencies, options: Options): RequestListener {
  const app = new Factory();
  app.silent = true;
  app.use(createKoaAuth(options, deps) as Koa3.Middleware);
  app.use((ctx) => {
    if (ctx.path === '/throw401') ctx.throw(401, 'nope');
    ctx.status = statusOf(ctx.url);
    ctx.body = { headers: ctx.request.headers, identity: (ctx.state as { keystone?: AuthContext }).keystone };
  });
  return app.callback() as RequestListener;
}

function nodeApp(deps: AuthDependencies, options: Options): RequestListener {
  const handler = createAuthTokenHandler(options, deps);
  return (req: IncomingMessage, res: ServerResponse) =>
    handler(req, res, () =>
      reply(res, statusOf(req.url), { headers: req.headers, identity: getAuthContext(req) }),
    );
}

const fixture = createAuthTokenFixture();
const token = fixture.addToken({
  userId: 'u-1',
  userName: 'alice',
  projectId: 'p-1',
  projectName: 'demo',
  roles: ['member', 'reader'],
});
const deps: AuthDependencies = { validator: fixture };
const downDeps: AuthDependencies = {
  validator: {
    async validate() {
      throw new KeystoneUnavailableError('connect', 'refused');
    },
  },
};

const APPS: [string, (d: AuthDependencies, o?: Options) => RequestListener][] = [
  ['express 5', (d, o = OPTIONS) => expressApp(express5, d, o)],
  ['express 4', (d, o = OPTIONS) => expressApp(express4 as unknown as typeof express5, d, o)],
  ['koa 3', (d, o = OPTIONS) => koaApp(Koa3, d, o)],
  ['koa 2', (d, o = OPTIONS) => koaApp(Koa2 as unknown as typeof Koa3, d, o)],
  ['node:http handler', (d, o = OPTIONS) => nodeApp(d, o)],
];

describe.each(APPS)('%s', (_name, build) => {
  let app: Running;
  let down: Running;
  beforeAll(async () => {
    app = await listen(createServer(build(deps)));
    down = await listen(createServer(build(downDeps)));
  });
  afterAll(async () => {
    await app.close();
    await down.close();
  });

  it('no token: keystonemiddleware 401, app not reached', async () => {
    const res = await fetch(`${app.url}/v1/things`, { headers: { 'x-roles': 'admin' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.text()).toBe(UNAUTHORIZED_BODY);
  });

  it('HEAD without token: 401 headers, no body', async () => {
    const res = await fetch(`${app.url}/v1/things`, { method: 'HEAD' });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    expect(await res.text()).toBe('');
  });

  it('valid token: identity headers injected, spoofed ones gone, identity object set', async () => {
    const res = await fetch(`${app.url}/v1/things?x=1`, {
      headers: {
        'x-auth-token': token,
        'x-roles': 'admin',
        x_project_id: 'evil',
        'openstack-system-scope': 'all',
      },
    });
    expect(res.status).toBe(200);
    const seen = (await res.json()) as Seen;
    expect(seen.headers['x-identity-status']).toBe('Confirmed');
    expect(seen.headers['x-roles']).toBe('member,reader');
    expect(seen.headers['x-project-id']).toBe('p-1');
    expect(seen.headers['x-user-name']).toBe('alice');
    expect(seen.headers['x-tenant']).toBe('demo');
    expect(seen.headers.x_project_id).toBeUndefined();
    expect(seen.headers['openstack-system-scope']).toBeUndefined();
    expect(seen.headers['x-auth-token']).toBe(token);
    expect(seen.identity).toMatchObject({
      userStatus: 'Confirmed',
      user: { userId: 'u-1', projectId: 'p-1', roleNames: ['member', 'reader'] },
    });
  });

  it('a 401 from the app itself gets WWW-Authenticate', async () => {
    const res = await fetch(`${app.url}/status/401`, { headers: { 'x-auth-token': token } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
  });

  it('a 403 from the app is left alone', async () => {
    const res = await fetch(`${app.url}/status/403`, { headers: { 'x-auth-token': token } });
    expect(res.status).toBe(403);
    expect(res.headers.get('www-authenticate')).toBeNull();
  });

  it('Keystone unavailable: 503 JSON with Retry-After', async () => {
    const res = await fetch(`${down.url}/v1/things`, { headers: { 'x-auth-token': 'some-token' } });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await res.json()).toEqual({
      error: {
        code: 503,
        title: 'Service Unavailable',
        message: 'The Keystone service is temporarily unavailable.',
      },
    });
  });
});

describe.each(APPS)('%s with filter: oauth2_token', (_name, build) => {
  let app: Running;
  beforeAll(async () => {
    app = await listen(createServer(build(deps, { ...OPTIONS, filter: 'oauth2_token' })));
  });
  afterAll(() => app.close());

  it('Authorization: Bearer is the token: identity injected without X-Identity-Status, spoofed headers gone', async () => {
    const res = await fetch(`${app.url}/v1/things`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-identity-status': 'Confirmed',
        x_roles: 'admin',
        'openstack-system-scope': 'all',
      },
    });
    expect(res.status).toBe(200);
    const seen = (await res.json()) as Seen;
    expect(seen.headers['x-identity-status']).toBeUndefined();
    expect(seen.headers['x-roles']).toBe('member,reader');
    expect(seen.headers.x_roles).toBeUndefined();
    expect(seen.headers['openstack-system-scope']).toBeUndefined();
    expect(seen.headers['x-user-id']).toBe('u-1');
    expect(seen.headers.authorization).toBe(`Bearer ${token}`);
  });

  it('X-Auth-Token is not read: 401 with the Keystone challenge', async () => {
    const res = await fetch(`${app.url}/v1/things`, { headers: { 'x-auth-token': token } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
    expect(await res.text()).toBe(UNAUTHORIZED_BODY);
  });
});

describe.each(APPS.slice(0, 4))('%s: a thrown 401 error', (_name, build) => {
  let app: Running;
  beforeAll(async () => {
    app = await listen(createServer(build(deps)));
  });
  afterAll(() => app.close());

  it('reaches the client with WWW-Authenticate', async () => {
    const res = await fetch(`${app.url}/throw401`, { headers: { 'x-auth-token': token } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(CHALLENGE);
  });
});
