/**
 * A real OAuth 2.0 authorization server for the external_oauth2_token tests: oidc-provider, in this process, on
 * 127.0.0.1 (an http and an https listener over one provider), with client credentials, RFC 7662 introspection,
 * JWT access tokens for one resource, and mTLS (tls_client_auth, RFC 8705 certificate-bound tokens).
 *
 * Clients: `app` gets opaque tokens (client_secret_basic), `app-mtls` gets certificate-bound ones (over https with
 * its certificate), `app-jwt` gets JWT access tokens for the resource `API_RESOURCE`; the proxy introspects as one
 * of `proxy-<auth method>`. Extra claims of a token come from `claimsFor(clientId)`, which a test can change.
 */
import { generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { exportJWK, generateKeyPair } from 'jose';
import { type Issued, TestPki } from './certificates.js';

/** A certificate of the test PKI: its files (for the CLI's YAML) and their PEM text (for in-process clients). */
export interface IssuedFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
  readonly key: string;
}

function filesOf(issued: Issued): IssuedFiles {
  return {
    certFile: issued.cert,
    keyFile: issued.key,
    cert: readFileSync(issued.cert, 'utf8'),
    key: readFileSync(issued.key, 'utf8'),
  };
}

export const API_RESOURCE = 'https://api.example.test';
export const SECRETS = {
  app: 'app-secret-0123456789',
  basic: 'basic-secret-0123456789',
  post: 'post-secret-0123456789',
  // HS256 keys must be at least 32 bytes.
  secretJwt: 'secret-jwt-key-0123456789abcdef0123456789',
} as const;

export interface OAuth2Server {
  readonly issuer: string;
  /** The token endpoint over https (what mTLS clients use), and over http. */
  readonly tokenEndpoint: string;
  readonly introspectionEndpoint: string;
  /** The same endpoint over https: tls_client_auth needs the proxy's certificate on the connection. */
  readonly httpsIntrospectionEndpoint: string;
  readonly jwksUri: string;
  readonly pki: TestPki;
  /** The CA's certificate (files and PEM). */
  readonly ca: IssuedFiles;
  readonly serverCert: IssuedFiles;
  /** Client certificates: `proxy` (tls_client_auth), `alice` (binds app-mtls tokens), `mallory`. */
  readonly certs: { readonly proxy: IssuedFiles; readonly alice: IssuedFiles; readonly mallory: IssuedFiles };
  /** PEM (PKCS#8) private key of `proxy-private_key_jwt`. */
  readonly privateKeyFile: string;
  /** Claims added to every token of this client (introspection answers them at the top level). */
  claims: Map<string, Record<string, unknown>>;
  /** Opaque token of `app` (or another secret-basic client). */
  token(clientId?: string, secret?: string): Promise<string>;
  /** A certificate-bound token of `app-mtls`, obtained with `cert`. */
  boundToken(cert: IssuedFiles): Promise<string>;
  /** A JWT access token of `app-jwt` for API_RESOURCE. */
  jwtToken(): Promise<string>;
  /** Makes a token inactive at the server (as revocation does). */
  revoke(token: string): Promise<void>;
  /** Introspection requests the server answered. */
  introspections(): number;
  /** Stops both listeners (the provider answers nothing after). */
  close(): Promise<void>;
}

const listen = (server: Server | HttpsServer): Promise<number> =>
  new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

export async function startOAuth2Server(): Promise<OAuth2Server> {
  const { default: Provider } = await import('oidc-provider');
  const pki = new TestPki();
  const ca = filesOf(pki.ca);
  const serverCert = filesOf(pki.issue('oauth2-server'));
  const certs = {
    proxy: filesOf(pki.issue('oauth2-proxy', { cn: 'proxy', client: true })),
    alice: filesOf(pki.issue('oauth2-alice', { cn: 'alice', client: true })),
    mallory: filesOf(pki.issue('oauth2-mallory', { cn: 'mallory', client: true })),
  };
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privateKeyFile = `${pki.dir}/proxy-jwt.key`;
  writeFileSync(privateKeyFile, (privateKey as KeyObject).export({ type: 'pkcs8', format: 'pem' }));
  const signing = await generateKeyPair('RS256', { extractable: true });
  const providerKey = { ...(await exportJWK(signing.privateKey)), kid: 'sig-1', alg: 'RS256', use: 'sig' };

  let handler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
  let introspected = 0;
  const route = (req: IncomingMessage, res: ServerResponse): void => {
    if (req.url?.startsWith('/token/introspection')) introspected++;
    (handler as (req: IncomingMessage, res: ServerResponse) => void)(req, res);
  };
  const http = createServer(route);
  const https = createHttpsServer(
    {
      cert: serverCert.cert,
      key: serverCert.key,
      ca: ca.cert,
      requestCert: true,
      rejectUnauthorized: false,
    },
    route,
  );
  const httpPort = await listen(http);
  const httpsPort = await listen(https);
  const issuer = `http://127.0.0.1:${httpPort}`;
  const claims = new Map<string, Record<string, unknown>>();
  const client = (extra: Record<string, unknown>) => ({
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    ...extra,
  });

  const provider = new Provider(issuer, {
    clients: [
      client({
        client_id: 'app',
        client_secret: SECRETS.app,
        token_endpoint_auth_method: 'client_secret_basic',
      }),
      client({
        client_id: 'app-mtls',
        client_secret: SECRETS.app,
        token_endpoint_auth_method: 'client_secret_basic',
        tls_client_certificate_bound_access_tokens: true,
      }),
      client({
        client_id: 'app-jwt',
        client_secret: SECRETS.app,
        token_endpoint_auth_method: 'client_secret_basic',
      }),
      client({
        client_id: 'proxy-client_secret_basic',
        client_secret: SECRETS.basic,
        token_endpoint_auth_method: 'client_secret_basic',
      }),
      client({
        client_id: 'proxy-client_secret_post',
        client_secret: SECRETS.post,
        token_endpoint_auth_method: 'client_secret_post',
      }),
      client({
        client_id: 'proxy-client_secret_jwt',
        client_secret: SECRETS.secretJwt,
        token_endpoint_auth_method: 'client_secret_jwt',
      }),
      client({
        client_id: 'proxy-private_key_jwt',
        token_endpoint_auth_method: 'private_key_jwt',
        jwks: { keys: [{ ...(await exportJWK(publicKey)), alg: 'RS256', use: 'sig' }] },
      }),
      client({
        client_id: 'proxy-tls_client_auth',
        token_endpoint_auth_method: 'tls_client_auth',
        tls_client_auth_subject_dn: 'CN=proxy',
      }),
    ],
    jwks: { keys: [providerKey] },
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'client_secret_jwt',
      'private_key_jwt',
      'tls_client_auth',
    ],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: () => true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (_ctx: unknown, resource: string) => {
          if (resource !== API_RESOURCE) throw new Error('unknown resource');
          return {
            scope: 'api',
            audience: API_RESOURCE,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        getCertificate: (ctx: { req: IncomingMessage }) => {
          const socket = ctx.req.socket as TLSSocket;
          if (socket.encrypted !== true || !socket.authorized) return undefined;
          return socket.getPeerX509Certificate();
        },
        certificateAuthorized: (ctx: { req: IncomingMessage }) =>
          (ctx.req.socket as TLSSocket).authorized === true,
        certificateSubjectMatches: (ctx: { req: IncomingMessage }, property: string, expected: string) => {
          const cert = (ctx.req.socket as TLSSocket).getPeerX509Certificate?.();
          // The registered DN names the CN; node:crypto prints the subject one `key=value` per line.
          return (
            property === 'tls_client_auth_subject_dn' &&
            cert !== undefined &&
            cert.subject.split('\n').includes(expected)
          );
        },
      },
    },
    scopes: ['api'],
    extraTokenClaims: (_ctx: unknown, token: { clientId?: string }) => claims.get(token.clientId ?? '') ?? {},
    ttl: { ClientCredentials: 600 },
    cookies: { keys: [randomBytes(16).toString('hex')] },
  } as never);
  // oidc-provider logs its development warnings through console; keep the test output to the tests.
  provider.on('server_error', () => {});
  handler = provider.callback();

  const tokenRequest = async (
    url: string,
    id: string,
    secret: string,
    extra: Record<string, string>,
    tls?: IssuedFiles,
  ) => {
    const { request } = await import('undici');
    const { Agent } = await import('undici');
    const dispatcher = tls
      ? new Agent({ connect: { ca: ca.cert, cert: tls.cert, key: tls.key } })
      : undefined;
    const response = await request(url, {
      method: 'POST',
      headers: { authorization: basic(id, secret), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', ...extra }).toString(),
      ...(dispatcher === undefined ? {} : { dispatcher }),
    });
    const body = (await response.body.json()) as {
      access_token?: string;
      error?: string;
      error_description?: string;
    };
    await dispatcher?.close();
    if (response.statusCode !== 200 || body.access_token === undefined) {
      throw new Error(`token request failed: ${response.statusCode} ${body.error} ${body.error_description}`);
    }
    return body.access_token;
  };

  return {
    issuer,
    tokenEndpoint: `${issuer}/token`,
    introspectionEndpoint: `${issuer}/token/introspection`,
    httpsIntrospectionEndpoint: `https://127.0.0.1:${httpsPort}/token/introspection`,
    jwksUri: `${issuer}/jwks`,
    pki,
    ca,
    serverCert,
    certs,
    privateKeyFile,
    claims,
    token: (clientId = 'app', secret = SECRETS.app) => tokenRequest(`${issuer}/token`, clientId, secret, {}),
    boundToken: (cert) =>
      tokenRequest(`https://127.0.0.1:${httpsPort}/token`, 'app-mtls', SECRETS.app, {}, cert),
    jwtToken: () =>
      tokenRequest(`${issuer}/token`, 'app-jwt', SECRETS.app, { resource: API_RESOURCE, scope: 'api' }),
    async revoke(token) {
      const found = await provider.ClientCredentials.find(token);
      await found?.destroy();
    },
    introspections: () => introspected,
    close: async () => {
      await Promise.all(
        [http, https].map(
          (server) =>
            new Promise<void>((resolve) => {
              server.closeAllConnections();
              server.close(() => resolve());
            }),
        ),
      );
    },
  };
}
