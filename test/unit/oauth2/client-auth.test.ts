/**
 * The request of each auth_method: where the client's credentials go (Basic header, form fields, a signed
 * assertion), the RFC 7662 form, and client assertions with RFC 7519 NumericDates (keystonemiddleware: strings).
 */
import { generateKeyPairSync } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import type { AuthMethod } from '../../../src/config/ext-oauth2-options.js';
import {
  basicCredentials,
  type ClientAuthentication,
  introspectionRequest,
  JWT_BEARER_ASSERTION,
} from '../../../src/oauth2/client-auth.js';

const NOW = 1_800_000_000_123;
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

function auth(method: AuthMethod, extra: Partial<ClientAuthentication> = {}): ClientAuthentication {
  return {
    method,
    clientId: 'proxy',
    clientSecret: 'secret-0123456789-0123456789-0123456789',
    audience: 'https://as.example/token',
    jwtAlgorithm: method === 'private_key_jwt' ? 'RS256' : 'HS256',
    jwtBearerTimeOutSeconds: 3600,
    privateKey: method === 'private_key_jwt' ? privateKey : undefined,
    ...extra,
  };
}
const formOf = (body: string) => Object.fromEntries(new URLSearchParams(body));

describe('introspectionRequest', () => {
  it('always a form with the token and the access_token hint', async () => {
    for (const method of ['client_secret_basic', 'client_secret_post', 'tls_client_auth'] as const) {
      const parts = await introspectionRequest('tok en&=', auth(method), NOW);
      expect(parts.headers['content-type']).toBe('application/x-www-form-urlencoded');
      expect(formOf(parts.body)).toMatchObject({ token: 'tok en&=', token_type_hint: 'access_token' });
    }
  });

  it('client_secret_basic: credentials only in the Authorization header', async () => {
    const parts = await introspectionRequest('t', auth('client_secret_basic'), NOW);
    expect(parts.headers.authorization).toBe(
      basicCredentials('proxy', 'secret-0123456789-0123456789-0123456789'),
    );
    expect(Object.keys(formOf(parts.body)).sort()).toEqual(['token', 'token_type_hint']);
  });

  it('Basic credentials are form-encoded first (RFC 6749 §2.3.1)', () => {
    const header = basicCredentials('id:1', 'a b%+');
    expect(Buffer.from(header.slice(6), 'base64').toString()).toBe('id%3A1:a+b%25%2B');
  });

  it('client_secret_post: id and secret in the form, no Authorization header', async () => {
    const parts = await introspectionRequest('t', auth('client_secret_post'), NOW);
    expect(parts.headers.authorization).toBeUndefined();
    expect(formOf(parts.body)).toMatchObject({
      client_id: 'proxy',
      client_secret: 'secret-0123456789-0123456789-0123456789',
    });
  });

  it('tls_client_auth: the client id only (the certificate is on the connection), no secret', async () => {
    const parts = await introspectionRequest('t', auth('tls_client_auth'), NOW);
    expect(parts.headers.authorization).toBeUndefined();
    const form = formOf(parts.body);
    expect(form.client_id).toBe('proxy');
    expect(form.client_secret).toBeUndefined();
  });

  it.each(['client_secret_jwt', 'private_key_jwt'] as const)(
    '%s: a signed assertion with numeric iat/exp, iss = sub = client id, aud, a fresh jti',
    async (method) => {
      const first = formOf((await introspectionRequest('t', auth(method), NOW)).body);
      const second = formOf((await introspectionRequest('t', auth(method), NOW)).body);
      expect(first.client_id).toBe('proxy');
      expect(first.client_assertion_type).toBe(JWT_BEARER_ASSERTION);
      expect(first.client_secret).toBeUndefined();
      const assertion = first.client_assertion as string;
      expect(decodeProtectedHeader(assertion)).toEqual({
        alg: method === 'private_key_jwt' ? 'RS256' : 'HS256',
        typ: 'JWT',
      });
      const claims = decodeJwt(assertion);
      expect(claims).toMatchObject({
        iss: 'proxy',
        sub: 'proxy',
        aud: 'https://as.example/token',
        iat: 1_800_000_000,
        exp: 1_800_003_600,
      });
      expect(typeof claims.iat).toBe('number');
      expect(claims.jti).not.toBe(decodeJwt(second.client_assertion as string).jti);
      const key =
        method === 'private_key_jwt' ? publicKey : new TextEncoder().encode(auth(method).clientSecret);
      await expect(jwtVerify(assertion, key, { currentDate: new Date(NOW) })).resolves.toBeDefined();
    },
  );
});
