/**
 * external_oauth2_token in an application: Express 5 served over https with optional client certificates, in
 * front of oidc-provider. thumbprint_verify (RFC 8705): a certificate-bound token works only on a connection with
 * the certificate it is bound to; RFC 6750 Bearer challenges as an option; spoofed identity headers stripped; and
 * the engine's cache re-checks the expiry on every hit (fake clock: no introspection, 401 past `exp`).
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import express from 'express';
import Koa from 'koa';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExpressAuth } from '../../src/express.js';
import { type Authenticator, createAuthenticator } from '../../src/http/authenticate.js';
import { createAuthTokenHandler } from '../../src/http/handler.js';
import { EXT_UNAUTHORIZED_BODY } from '../../src/http/responses.js';
import { createKoaAuth } from '../../src/koa.js';
import { opensslAvailable } from '../helpers/certificates.js';
import { listen, type Running } from '../helpers/http.js';
import { type Memcached, skipWithoutMemcached, startMemcached } from '../helpers/memcached.js';
import { type IssuedFiles, type OAuth2Server, SECRETS, startOAuth2Server } from '../helpers/oauth2-server.js';

const ALICE = {
  username: 'alice',
  user_domain: { id: 'default', name: 'Default' },
  project: { id: 'p-demo', name: 'demo', domain: { id: 'default', name: 'Default' } },
  roles: 'member',
};

function extOptions(as: OAuth2Server, extra: Record<string, unknown> = {}) {
  return {
    filter: 'external_oauth2_token' as const,
    ext_oauth2_auth: {
      introspect_endpoint: as.introspectionEndpoint,
      audience: as.tokenEndpoint,
      auth_method: 'client_secret_post' as const,
      client_id: 'proxy-client_secret_post',
      client_secret: SECRETS.post,
      mapping_user_domain_id: 'user_domain.id',
      mapping_user_domain_name: 'user_domain.name',
      mapping_project_id: 'project.id',
      mapping_project_name: 'project.name',
      mapping_project_domain_id: 'project.domain.id',
      mapping_project_domain_name: 'project.domain.name',
      mapping_roles: 'roles',
      ...extra,
    },
  };
}

describe.skipIf(!opensslAvailable())('external_oauth2_token in Express over https, thumbprint_verify', () => {
  let as: OAuth2Server;
  let server: Server;
  let url: string;
  const agents = new Map<string, Agent>();
  const auth = { close: async () => {} };

  beforeAll(async () => {
    as = await startOAuth2Server();
    for (const id of ['app', 'app-mtls']) as.claims.set(id, ALICE);
    const middleware = createExpressAuth(
      extOptions(as, { thumbprint_verify: true, www_authenticate_challenge: 'rfc6750' }),
    );
    auth.close = () => middleware.authenticator.close();
    const app = express();
    app.use(middleware);
    app.get('/app401', (_req, res) => {
      res.status(401).send('no');
    });
    app.get('/{*path}', (req, res) => {
      res.json({ headers: req.headers, user: req.keystone?.user?.userId });
    });
    const serverCert = as.serverCert;
    // Client certificates asked for, not required: a client without one still reaches the middleware.
    server = createHttpsServer(
      {
        cert: serverCert.cert,
        key: serverCert.key,
        ca: as.ca.cert,
        requestCert: true,
        rejectUnauthorized: false,
      },
      app,
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await Promise.all([...agents.values()].map((agent) => agent.close()));
    await auth.close();
    server?.closeAllConnections();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    await as?.close();
  });

  function agentFor(cert: IssuedFiles | undefined): Agent {
    const key = cert?.certFile ?? 'none';
    let agent = agents.get(key);
    if (agent === undefined) {
      agent = new Agent({
        connect: { ca: as.ca.cert, ...(cert === undefined ? {} : { cert: cert.cert, key: cert.key }) },
      });
      agents.set(key, agent);
    }
    return agent;
  }

  async function get(path: string, headers: Record<string, string>, cert?: IssuedFiles) {
    const res = await request(`${url}${path}`, { headers, dispatcher: agentFor(cert) });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text };
  }

  it('a bound token on a connection with its certificate: forwarded, spoofed headers gone', async () => {
    const token = await as.boundToken(as.certs.alice);
    const res = await get(
      '/v1/x',
      {
        authorization: `Bearer ${token}`,
        'X-Is-Admin-Project': 'true',
        'OpenStack-System-Scope': 'all',
        X_Roles: 'admin',
      },
      as.certs.alice,
    );
    expect(res.status).toBe(200);
    const body = JSON.parse(res.text) as { headers: Record<string, string>; user: string };
    expect(body.user).toBe('app-mtls');
    expect(body.headers['x-roles']).toBe('member');
    expect(body.headers['x-is-admin-project']).toBeUndefined();
    expect(body.headers['openstack-system-scope']).toBeUndefined();
    expect(body.headers.x_roles).toBeUndefined();
  });

  it.each([
    ['another certificate', 'mallory'],
    ['no certificate', undefined],
  ] as const)('the same token with %s: 401 with an RFC 6750 invalid_token challenge', async (_name, who) => {
    const token = await as.boundToken(as.certs.alice);
    const res = await get(
      '/v1/x',
      { authorization: `Bearer ${token}` },
      who === undefined ? undefined : as.certs[who],
    );
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`Bearer realm="${as.tokenEndpoint}", error="invalid_token"`);
  });

  it('an unbound token is refused when thumbprint_verify is on, whatever the certificate', async () => {
    const token = await as.token();
    const res = await get('/v1/x', { authorization: `Bearer ${token}` }, as.certs.alice);
    expect(res.status).toBe(401);
  });

  it('no token: 401 with a Bearer challenge without an error code (RFC 6750 §3.1)', async () => {
    const res = await get('/v1/x', {}, as.certs.alice);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`Bearer realm="${as.tokenEndpoint}"`);
  });

  it("the application's own 401 gets the challenge too", async () => {
    const token = await as.boundToken(as.certs.alice);
    const res = await get('/app401', { authorization: `Bearer ${token}` }, as.certs.alice);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`Bearer realm="${as.tokenEndpoint}"`);
  });
});

describe.skipIf(!opensslAvailable())('external_oauth2_token cache: expiry re-checked on every hit', () => {
  let as: OAuth2Server;
  beforeAll(async () => {
    as = await startOAuth2Server();
    as.claims.set('app', ALICE);
  });
  afterAll(async () => {
    await as?.close();
  });

  it('served from the cache until exp, then 401 expired even though the server (its clock behind) says active', async () => {
    let clock = Date.now();
    const authenticator = createAuthenticator(extOptions(as, { token_cache_time: 3600 }), {
      now: () => clock,
    });
    try {
      const token = await as.token();
      const facts = { method: 'GET', path: '/', headers: { authorization: `Bearer ${token}` } };
      expect((await authenticator.authenticate(facts)).action).toBe('forward');
      const asked = as.introspections();
      const hit = await authenticator.authenticate(facts);
      expect(hit).toMatchObject({ action: 'forward', cache: 'hit' });
      // oidc-provider's tokens here live 600 s; the cache (3600 s) would keep the identity longer.
      clock += 590_000;
      expect(await authenticator.authenticate(facts)).toMatchObject({ action: 'forward', cache: 'hit' });
      expect(as.introspections()).toBe(asked);
      clock += 11_000;
      const expired = await authenticator.authenticate(facts);
      expect(expired).toMatchObject({ action: 'respond', reason: 'expired' });
      expect(expired.action === 'respond' && expired.response.status).toBe(401);
    } finally {
      await authenticator.close();
    }
  });
});

describe.skipIf(!opensslAvailable())('external_oauth2_token in Koa and the plain node:http handler', () => {
  let as: OAuth2Server;
  const running: Running[] = [];
  const authenticators: Authenticator[] = [];
  const urls: Record<string, string> = {};

  beforeAll(async () => {
    as = await startOAuth2Server();
    as.claims.set('app', ALICE);
    const koa = new Koa();
    const koaAuth = createKoaAuth(extOptions(as));
    authenticators.push(koaAuth.authenticator);
    koa.use(koaAuth);
    koa.use((ctx) => {
      ctx.body = { headers: ctx.request.headers };
    });
    const plain = createAuthTokenHandler(extOptions(as));
    authenticators.push(plain.authenticator);
    const node = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
      plain(req, res, () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ headers: req.headers }));
      });
    });
    for (const [name, server] of [
      ['koa', createHttpServer(koa.callback())],
      ['plain', node],
    ] as const) {
      const up = await listen(server);
      running.push(up);
      urls[name] = up.url;
    }
  });
  afterAll(async () => {
    await Promise.all(running.map((r) => r.close()));
    await Promise.all(authenticators.map((a) => a.close()));
    await as?.close();
  });

  it.each(['koa', 'plain'])(
    '%s: the identity of a Bearer token, spoofed headers stripped; 401 without',
    async (name) => {
      const token = await as.token();
      const ok = await fetch(`${urls[name]}/v1/x`, {
        headers: {
          authorization: `Bearer ${token}`,
          'X-Is-Admin-Project': 'true',
          'OpenStack-System-Scope': 'all',
        },
      });
      expect(ok.status).toBe(200);
      const { headers } = (await ok.json()) as { headers: Record<string, string> };
      expect(headers).toMatchObject({
        'x-user-id': 'app',
        'x-tenant': 'p-demo',
        'x-identity-status': 'Confirmed',
      });
      expect(headers['x-is-admin-project']).toBeUndefined();
      expect(headers['openstack-system-scope']).toBeUndefined();
      const refused = await fetch(`${urls[name]}/v1/x`, { headers: { 'X-Roles': 'admin' } });
      expect(refused.status).toBe(401);
      expect(refused.headers.get('www-authenticate')).toBe(
        `Authorization OAuth 2.0 uri="${as.tokenEndpoint}"`,
      );
      expect(await refused.text()).toBe(EXT_UNAUTHORIZED_BODY);
    },
  );
});

describe.skipIf(!opensslAvailable() || skipWithoutMemcached)(
  'external_oauth2_token: memcached shared by replicas',
  () => {
    let as: OAuth2Server;
    let memcached: Memcached;
    const open: Authenticator[] = [];
    beforeAll(async () => {
      as = await startOAuth2Server();
      as.claims.set('app', ALICE);
      memcached = await startMemcached();
    });
    afterAll(async () => {
      await Promise.all(open.map((a) => a.close()));
      await memcached?.stop();
      await as?.close();
    });

    function replica(events: string[]): Authenticator {
      const auth = createAuthenticator(
        extOptions(as, {
          memcached_servers: memcached.server,
          memcache_security_strategy: 'ENCRYPT',
          memcache_secret_key: 'shared-secret',
        }),
        { observer: { cache: (event) => events.push(event) } },
      );
      open.push(auth);
      return auth;
    }

    it('a token introspected by one replica is served to another from memcached, encrypted, without the raw token', async () => {
      const seenA: string[] = [];
      const seenB: string[] = [];
      const a = replica(seenA);
      const b = replica(seenB);
      const token = await as.token();
      const facts = { method: 'GET', path: '/', headers: { authorization: `Bearer ${token}` } };
      expect((await a.authenticate(facts)).action).toBe('forward');
      // memcached writes are fire-and-forget: give this one a moment to land.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const asked = as.introspections();
      const outcome = await b.authenticate(facts);
      expect(outcome.action === 'forward' && outcome.context.user?.projectId).toBe('p-demo');
      expect(seenB).toContain('shared_hit');
      expect(as.introspections()).toBe(asked);
    });
  },
);
