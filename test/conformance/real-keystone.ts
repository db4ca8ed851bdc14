/**
 * Access to the real Keystone started by scripts/keystone-local.sh: its fixtures (ids, passwords, application
 * credentials, trust) and helpers to issue tokens and change state through its REST API.
 */
import { readFileSync } from 'node:fs';

export interface Fixtures {
  url: string;
  region: string;
  roles: { admin: string; member: string; reader: string; service: string };
  admin: { user: string; password: string; userId: string; project: string; projectId: string };
  service: { user: string; password: string; userId: string; project: string; projectId: string };
  weakValidator: { user: string; password: string; userId: string };
  demo: { user: string; password: string; userId: string; project: string; projectId: string };
  d2: {
    domain: string;
    domainId: string;
    project: string;
    projectId: string;
    user: string;
    password: string;
    userId: string;
  };
  sysReader: { user: string; password: string; userId: string };
  disabled: { user: string; password: string; userId: string };
  appCred: { id: string; name: string; secret: string };
  appCredRules: {
    id: string;
    name: string;
    secret: string;
    rules: { service: string; method: string; path: string }[];
  };
  trust: { id: string; trustee: { user: string; password: string; userId: string } };
  serviceType: string;
}

export function keystoneAvailable(): boolean {
  return process.env.KEYSTONE_URL !== undefined && process.env.KEYSTONE_FIXTURES !== undefined;
}

export function fixtures(): Fixtures {
  return JSON.parse(readFileSync(process.env.KEYSTONE_FIXTURES as string, 'utf8')) as Fixtures;
}

export const keystoneUrl = (): string => process.env.KEYSTONE_URL as string;
export const shortLivedUrl = (): string => process.env.KEYSTONE_SHORT_URL as string;
export const shortLifetimeSeconds = (): number => Number(process.env.KEYSTONE_SHORT_LIFETIME ?? 8);

type Scope =
  | { project: { id: string } | { name: string; domain: { id: string } } }
  | { domain: { id: string } }
  | { system: { all: true } }
  | { 'OS-TRUST:trust': { id: string } }
  | 'unscoped';

export interface Issued {
  token: string;
  body: { token: Record<string, unknown> };
}

async function issue(identity: unknown, scope: Scope | undefined, base = keystoneUrl()): Promise<Issued> {
  const auth = scope === undefined ? { identity } : { identity, scope };
  const res = await fetch(`${base}/v3/auth/tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ auth }),
  });
  if (res.status !== 201) throw new Error(`token request failed: HTTP ${res.status} ${await res.text()}`);
  return { token: res.headers.get('x-subject-token') as string, body: (await res.json()) as Issued['body'] };
}

/** A password token; domain of the user is given by id (default: `default`). */
export function passwordToken(
  user: string,
  password: string,
  scope?: Scope,
  options: { userDomainId?: string; base?: string } = {},
): Promise<Issued> {
  const identity = {
    methods: ['password'],
    password: { user: { name: user, domain: { id: options.userDomainId ?? 'default' }, password } },
  };
  return issue(identity, scope, options.base);
}

export function appCredToken(id: string, secret: string): Promise<Issued> {
  return issue({ methods: ['application_credential'], application_credential: { id, secret } }, undefined);
}

/**
 * Keystone's OAuth2 client-credentials grant (`POST /v3/OS-OAUTH2/token`, Zed: HTTP Basic with an application
 * credential's id and secret only); the access token is an ordinary Keystone token.
 */
export async function oauth2AccessToken(id: string, secret: string): Promise<string> {
  const res = await fetch(`${keystoneUrl()}/v3/OS-OAUTH2/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`OS-OAUTH2 token: ${res.status} ${text}`);
  const body = JSON.parse(text) as { access_token?: unknown; token_type?: unknown };
  if (typeof body.access_token !== 'string' || body.token_type !== 'Bearer') {
    throw new Error(`OS-OAUTH2 token: unexpected body ${text}`);
  }
  return body.access_token;
}

export function tokenFromToken(token: string, scope?: Scope): Promise<Issued> {
  return issue({ methods: ['token'], token: { id: token } }, scope);
}

export async function adminToken(): Promise<string> {
  const f = fixtures();
  return (await passwordToken(f.admin.user, f.admin.password, { project: { id: f.admin.projectId } })).token;
}

/** A REST call as admin; throws unless the status is expected. */
export async function adminCall(
  method: string,
  path: string,
  body?: unknown,
  expect = [200, 201, 204],
): Promise<unknown> {
  const res = await fetch(`${keystoneUrl()}/v3${path}`, {
    method,
    headers: { 'content-type': 'application/json', 'x-auth-token': await adminToken() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!expect.includes(res.status)) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** A throwaway user with member on the demo project, for tests that disable, re-password or unassign. */
export async function throwawayUser(prefix: string): Promise<{ name: string; id: string; password: string }> {
  const f = fixtures();
  const name = `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const password = `${name}-pw`;
  const created = (await adminCall('POST', '/users', { user: { name, password, domain_id: 'default' } })) as {
    user: { id: string };
  };
  await adminCall('PUT', `/projects/${f.demo.projectId}/users/${created.user.id}/roles/${f.roles.member}`);
  return { name, id: created.user.id, password };
}

/** Revokes a token as its owner would (DELETE /v3/auth/tokens with the token itself). */
export async function revokeToken(token: string): Promise<void> {
  const res = await fetch(`${keystoneUrl()}/v3/auth/tokens`, {
    method: 'DELETE',
    headers: { 'x-auth-token': token, 'x-subject-token': token },
  });
  if (res.status !== 204) throw new Error(`revoke failed: HTTP ${res.status}`);
}
