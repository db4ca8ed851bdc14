/**
 * How the proxy authenticates itself to the introspection endpoint (RFC 7662 §2.1 leaves it to RFC 6749 §2.3 and
 * its extensions): the headers and form fields of one introspection request, per keystonemiddleware's
 * `auth_method`. JWT client assertions (RFC 7523) carry RFC 7519 NumericDates for `iat`/`exp`, where
 * keystonemiddleware sends strings, which conforming servers (oidc-provider among them) reject.
 */
import { createPrivateKey, type KeyObject, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT } from 'jose';
import type { AuthMethod, ResolvedExtOAuth2Options } from '../config/ext-oauth2-options.js';

export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export interface ClientAuthentication {
  readonly method: AuthMethod;
  readonly clientId: string;
  readonly clientSecret: string | undefined;
  /** The `aud` of client assertions. */
  readonly audience: string;
  readonly jwtAlgorithm: string;
  readonly jwtBearerTimeOutSeconds: number;
  /** private_key_jwt: the signing key, read once at start. */
  readonly privateKey: KeyObject | undefined;
}

export interface IntrospectionRequestParts {
  readonly headers: Record<string, string>;
  /** The application/x-www-form-urlencoded body. */
  readonly body: string;
}

/** The options' client authentication; the private key file is read here, at start, not per request. */
export function clientAuthenticationOf(options: ResolvedExtOAuth2Options): ClientAuthentication {
  return Object.freeze({
    method: options.authMethod,
    clientId: options.clientId,
    clientSecret: options.clientSecret,
    audience: options.audience,
    jwtAlgorithm: options.jwtAlgorithm,
    jwtBearerTimeOutSeconds: options.jwtBearerTimeOutSeconds,
    privateKey:
      options.authMethod === 'private_key_jwt' && options.jwtKeyFile !== undefined
        ? createPrivateKey(readFileSync(options.jwtKeyFile))
        : undefined,
  });
}

/** RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64-encoded. */
export function basicCredentials(clientId: string, clientSecret: string): string {
  const encode = (value: string): string => encodeURIComponent(value).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${encode(clientId)}:${encode(clientSecret)}`).toString('base64')}`;
}

/** A client assertion: `iss` = `sub` = client id, `aud` = the audience, a fresh `jti`, numeric `iat`/`exp`. */
export async function clientAssertion(auth: ClientAuthentication, nowMs: number): Promise<string> {
  const issuedAt = Math.floor(nowMs / 1000);
  const key =
    auth.method === 'private_key_jwt'
      ? (auth.privateKey as KeyObject)
      : new TextEncoder().encode(auth.clientSecret ?? '');
  return new SignJWT({ jti: randomUUID() })
    .setProtectedHeader({ alg: auth.jwtAlgorithm, typ: 'JWT' })
    .setIssuer(auth.clientId)
    .setSubject(auth.clientId)
    .setAudience(auth.audience)
    .setIssuedAt(issuedAt)
    .setExpirationTime(issuedAt + auth.jwtBearerTimeOutSeconds)
    .sign(key);
}

/** Headers and form body of `POST introspect_endpoint` for one token. */
export async function introspectionRequest(
  token: string,
  auth: ClientAuthentication,
  nowMs: number,
): Promise<IntrospectionRequestParts> {
  const form = new URLSearchParams({ token, token_type_hint: 'access_token' });
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  switch (auth.method) {
    case 'client_secret_basic':
      headers.authorization = basicCredentials(auth.clientId, auth.clientSecret ?? '');
      break;
    case 'client_secret_post':
      form.set('client_id', auth.clientId);
      form.set('client_secret', auth.clientSecret ?? '');
      break;
    case 'tls_client_auth':
      // The certificate itself authenticates (the dispatcher presents certfile/keyfile); the id names the client.
      form.set('client_id', auth.clientId);
      break;
    case 'client_secret_jwt':
    case 'private_key_jwt':
      form.set('client_id', auth.clientId);
      form.set('client_assertion_type', JWT_BEARER_ASSERTION);
      form.set('client_assertion', await clientAssertion(auth, nowMs));
      break;
  }
  return { headers, body: form.toString() };
}
