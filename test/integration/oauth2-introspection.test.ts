/**
 * The external filter's validator against a real authorization server (oidc-provider on 127.0.0.1): every
 * auth_method is accepted by it, an active token maps to the identity, an inactive one is invalid, a JWT access
 * token is verified locally with no introspection, refused client credentials and a stopped server are outages
 * (503 material), and the breaker stops asking after the threshold.
 */

import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AuthMethod, resolveExtOAuth2Options } from '../../src/config/ext-oauth2-options.js';
import { KeystoneUnavailableError } from '../../src/errors.js';
import { parseTokenBody } from '../../src/keystone/token-info.js';
import { IntrospectionClient } from '../../src/oauth2/introspection-client.js';
import { opensslAvailable } from '../helpers/certificates.js';
import { API_RESOURCE, type OAuth2Server, SECRETS, startOAuth2Server } from '../helpers/oauth2-server.js';

const MAPPING = {
  mapping_user_id: 'client_id',
  mapping_user_name: 'username',
  mapping_user_domain_id: 'user_domain.id',
  mapping_user_domain_name: 'user_domain.name',
  mapping_project_id: 'project.id',
  mapping_project_name: 'project.name',
  mapping_project_domain_id: 'project.domain.id',
  mapping_project_domain_name: 'project.domain.name',
  mapping_roles: 'roles',
};
const ALICE = {
  username: 'alice',
  user_domain: { id: 'default', name: 'Default' },
  project: { id: 'p-demo', name: 'demo', domain: { id: 'default', name: 'Default' } },
  roles: 'member,reader',
};

describe.skipIf(!opensslAvailable())('IntrospectionClient against oidc-provider', () => {
  let as: OAuth2Server;
  const clients: IntrospectionClient[] = [];

  beforeAll(async () => {
    as = await startOAuth2Server();
    for (const id of ['app', 'app-jwt', 'app-mtls']) as.claims.set(id, ALICE);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await as?.close();
  });

  function clientFor(method: AuthMethod, extra: Record<string, unknown> = {}): IntrospectionClient {
    const secrets: Partial<Record<AuthMethod, string>> = {
      client_secret_basic: SECRETS.basic,
      client_secret_post: SECRETS.post,
      client_secret_jwt: SECRETS.secretJwt,
    };
    const tls = method === 'tls_client_auth';
    const resolved = resolveExtOAuth2Options({
      introspect_endpoint: tls ? as.httpsIntrospectionEndpoint : as.introspectionEndpoint,
      audience: as.tokenEndpoint,
      auth_method: method,
      client_id: `proxy-${method}`,
      ...(secrets[method] === undefined ? {} : { client_secret: secrets[method] }),
      ...(method === 'private_key_jwt' ? { jwt_key_file: as.privateKeyFile } : {}),
      ...(tls
        ? { certfile: as.certs.proxy.certFile, keyfile: as.certs.proxy.keyFile, cafile: as.ca.certFile }
        : {}),
      ...MAPPING,
      ...extra,
    });
    if (resolved.options === undefined) throw new Error(JSON.stringify(resolved.issues));
    const ext = resolved.options;
    const client = new IntrospectionClient({
      ext,
      dispatcher: new Agent({
        connect: tls ? { ca: as.ca.cert, cert: as.certs.proxy.cert, key: as.certs.proxy.key } : {},
      }),
      userAgent: 'test',
      now: Date.now,
      logger: { info() {}, warn() {}, error() {}, debug() {} } as never,
      observer: {},
    });
    clients.push(client);
    return client;
  }

  it.each([
    'client_secret_basic',
    'client_secret_post',
    'client_secret_jwt',
    'private_key_jwt',
    'tls_client_auth',
  ] as const)('%s: the server accepts the proxy, the active token maps to the identity', async (method) => {
    const token = await as.token();
    const answer = await clientFor(method).validate(token, { allowExpired: false });
    expect(answer.kind).toBe('valid');
    const info = parseTokenBody((answer as { body: unknown }).body, { renderCatalog: false });
    expect(info).toMatchObject({
      userId: 'app',
      userName: 'alice',
      projectId: 'p-demo',
      roleNames: ['member', 'reader'],
      methods: ['oauth2_introspection'],
    });
    // oidc-provider's exp, in ms: the cache never serves the identity past it.
    expect(info.expiresAtMs).toBeGreaterThan(Date.now());
  });

  it('an inactive (revoked) token is invalid', async () => {
    const token = await as.token();
    await as.revoke(token);
    expect(await clientFor('client_secret_basic').validate(token, { allowExpired: false })).toEqual({
      kind: 'invalid',
    });
  });

  it('an unknown token is invalid', async () => {
    expect(await clientFor('client_secret_post').validate('not-a-token', { allowExpired: false })).toEqual({
      kind: 'invalid',
    });
  });

  it('a certificate-bound token carries its cnf thumbprint as the binding', async () => {
    const token = await as.boundToken(as.certs.alice);
    const answer = await clientFor('client_secret_basic').validate(token, { allowExpired: false });
    const info = parseTokenBody((answer as { body: unknown }).body, { renderCatalog: false });
    const { X509Certificate, createHash } = await import('node:crypto');
    const der = new X509Certificate(as.certs.alice.cert).raw;
    expect(info.certThumbprint).toBe(createHash('sha256').update(der).digest('base64url'));
  });

  it('claims without the identity: a claims_unmapped error (403), naming the field, not the values', async () => {
    as.claims.set('app', { ...ALICE, username: undefined });
    try {
      const token = await as.token();
      await expect(
        clientFor('client_secret_basic').validate(token, { allowExpired: false }),
      ).rejects.toMatchObject({
        reason: 'claims_unmapped',
        message: 'claims do not give the identity: mapping_user_name missing',
      });
    } finally {
      as.claims.set('app', ALICE);
    }
  });

  it('wrong client secret: an outage (the server refuses the proxy), not an invalid token', async () => {
    const client = clientFor('client_secret_basic', { client_secret: 'wrong' });
    const error = await client.validate(await as.token(), { allowExpired: false }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeystoneUnavailableError);
    expect(error).toMatchObject({ reason: 'service_auth_rejected', keystoneStatus: 401 });
  });

  it('with jwks_uri a JWT access token is verified locally: no introspection request', async () => {
    const client = clientFor('client_secret_basic', {
      jwks_uri: as.jwksUri,
      jwt_issuer: as.issuer,
      jwt_audiences: [API_RESOURCE],
    });
    const token = await as.jwtToken();
    const before = as.introspections();
    const answer = await client.validate(token, { allowExpired: false });
    expect(as.introspections()).toBe(before);
    const info = parseTokenBody((answer as { body: unknown }).body, { renderCatalog: false });
    expect(info).toMatchObject({ userId: 'app-jwt', userName: 'alice', methods: ['oauth2_jwt'] });
    // A forged signature: same header and claims, another signature.
    const [h, p] = token.split('.');
    expect(await client.validate(`${h}.${p}.${'A'.repeat(342)}`, { allowExpired: false })).toEqual({
      kind: 'invalid',
    });
    // Wrong audience configured: refused.
    const other = clientFor('client_secret_basic', {
      jwks_uri: as.jwksUri,
      jwt_issuer: as.issuer,
      jwt_audiences: ['x'],
    });
    expect(await other.validate(token, { allowExpired: false })).toEqual({ kind: 'invalid' });
    // Opaque tokens still go to introspection.
    expect((await client.validate(await as.token(), { allowExpired: false })).kind).toBe('valid');
    expect(as.introspections()).toBe(before + 1);
  });

  it('server unreachable: unavailable; after the threshold the breaker answers at once', async () => {
    const client = clientFor('client_secret_basic', {
      introspect_endpoint: 'http://127.0.0.1:9/token/introspection',
      http_request_max_retries: 0,
      circuit_breaker_failure_threshold: 2,
      circuit_breaker_open_seconds: 60,
    });
    for (let i = 0; i < 2; i++) {
      await expect(client.validate('t', { allowExpired: false })).rejects.toMatchObject({
        reason: 'connect',
      });
    }
    const open = await client.validate('t', { allowExpired: false }).catch((e: unknown) => e);
    expect(open).toMatchObject({ reason: 'circuit_open' });
    expect((open as KeystoneUnavailableError).retryAfterSeconds).toBeGreaterThan(0);
    expect(await client.ready()).toBe(false);
  });
});
