/**
 * Differential suite: the same requests through keystonemiddleware 10.1 (auth_token before a WSGI echo app,
 * under uwsgi) and through our real CLI (before our echo upstream), both validating against the same real
 * Keystone with the same [keystone_authtoken] options. Compared: status, WWW-Authenticate, the 401 body, and
 * the identity headers the application received (plus X-Auth-Token, X-Storage-Token, X-Service-Token and
 * every header the client sent). Tokens are issued fresh per case, so no side answers from a cache alone.
 *
 * Run: npm run build && eval "$(bash scripts/keystone-local.sh env)" && npm run test:conformance
 */

import { readFileSync } from 'node:fs';
import { type IncomingHttpHeaders, request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNAUTHORIZED_BODY, UNAVAILABLE_BODY } from '../../src/http/responses.js';
import { IDENTITY_HEADERS, normalizeHeaderName } from '../../src/identity/headers.js';
import { type CliRun, cliBuilt, ROOT, startCli, writeConfig } from '../helpers/cli.js';
import { echo } from '../helpers/echo-app.js';
import { listen, type Running } from '../helpers/http.js';
import {
  authTokenOptions,
  type KsmCredentials,
  type KsmFilter,
  type KsmOptions,
  ksmAvailable,
  type RunningKsm,
  startKsm,
} from './ksm.js';
import {
  appCredToken,
  type Fixtures,
  fixtures,
  type Issued,
  keystoneAvailable,
  keystoneUrl,
  oauth2AccessToken,
  passwordToken,
  revokeToken,
  shortLivedUrl,
  tokenFromToken,
} from './real-keystone.js';

/**
 * Every deliberate difference from keystonemiddleware, with the reason: the same list, in the same order,
 * as the README's "Deliberate differences from keystonemiddleware" (a test below holds them together).
 * `cases` names where this suite sees the difference; the others cannot be produced with one Keystone and
 * one worker.
 */
const DIFFERENCES = [
  {
    n: 1,
    title: '`OpenStack-System-Scope` is stripped',
    reason:
      'keystonemiddleware leaves it out of its strip list: with delay_auth_decision a client-sent value ' +
      'reached the app',
    cases: 'delay: spoofed headers without a token / with a bad token',
  },
  {
    n: 2,
    title: '`OpenStack-System-Scope` describes the user token only.',
    reason:
      'keystonemiddleware sets it for the service token last, so a system-scoped service token made a ' +
      'project user system-scoped',
    cases: 'default: project user + system-scoped service token',
  },
  {
    n: 3,
    title: '503 is JSON with `Retry-After`',
    reason:
      'clients and load balancers get a machine-readable answer and a hint when to retry; webob sends ' +
      'an HTML page',
    cases: 'down: valid token while Keystone is unreachable (status compared only)',
  },
  {
    n: 4,
    title: 'The cache is shared by all requests of a host.',
    reason:
      'keystonemiddleware caches per pooled client and per worker; not visible here: its side runs one ' +
      'worker (test/conformance/one-host.test.ts proves the host side)',
    cases: '',
  },
  {
    n: 5,
    title: 'A service token that fails its check is answered 401 without validating the user token',
    reason: 'the answer is 401 either way; saves a Keystone call (only the number of Keystone calls differs)',
    cases: '',
  },
  {
    n: 6,
    title: 'Access-rule paths are matched more strictly',
    reason:
      'a path with dot segments never matches a rule; uwsgi resolves /allowed/x/../y to /allowed/y ' +
      'before keystonemiddleware matches it',
    cases: 'default: access-rule app cred, allowed prefix with a .. segment',
  },
  {
    n: 7,
    title: '`include_service_catalog = false` with an access-rule application credential works',
    reason: 'keystonemiddleware raises KeyError on the missing catalog and uwsgi drops the connection',
    cases: 'nocatalog: access-rule app cred on an allowed path',
  },
  {
    n: 8,
    title: 'Kerberos-bound tokens are refused under `enforce_token_bind = permissive`',
    reason: 'a proxy has no web-server Kerberos context; the test Keystone issues no bound tokens',
    cases: '',
  },
  {
    n: 9,
    title: 'Surrounding whitespace in `X-Auth-Token` does not reach the application',
    reason:
      "Node's HTTP parser drops optional whitespace (RFC 9110); uwsgi keeps it. Both validate the " +
      'trimmed token',
    cases: 'default: token with surrounding whitespace',
  },
  {
    n: 10,
    title: 'No identity endpoint of `interface` in the catalog',
    reason: 'we fall back to auth_url instead of failing every request; the test catalog has the endpoint',
    cases: '',
  },
  {
    n: 11,
    title: 'A token revoked after it was cached stops working within `revocation_poll_interval_seconds`',
    reason:
      'closes the OSSN-0056 window; the suites here revoke before first use, and scale-out.test.ts measures ' +
      'the delay',
    cases: '',
  },
  {
    n: 12,
    title: 'memcached entries never hold the raw token.',
    reason: 'a memcached reader learns no token; scale-out.test.ts checks both sides read each other',
    cases: '',
  },
] as const;
type DifferenceId = (typeof DIFFERENCES)[number]['n'];

const REQUIRED = process.env.CONFORMANCE_REQUIRED === '1';
const HAVE_KEYSTONE = keystoneAvailable();
const missing = [
  HAVE_KEYSTONE
    ? undefined
    : 'KEYSTONE_URL/KEYSTONE_FIXTURES unset (eval "$(bash scripts/keystone-local.sh env)")',
  ksmAvailable() ? undefined : 'uwsgi + python3-keystonemiddleware missing (scripts/keystone-local.sh start)',
  cliBuilt() ? undefined : 'dist/cli.js missing (npm run build)',
].filter((m): m is string => m !== undefined);
// Skipped only without a Keystone when nobody asked for the suite; anything else missing is a failure.
if (missing.length > 0 && (REQUIRED || HAVE_KEYSTONE)) {
  throw new Error(`differential suite cannot run: ${missing.join('; ')}`);
}
const SKIP_REASON = HAVE_KEYSTONE
  ? ''
  : ' (skipped: KEYSTONE_URL unset; set CONFORMANCE_REQUIRED=1 to fail instead)';

/** Headers compared on every case, besides those the client sent. */
const COMPARED = [...IDENTITY_HEADERS, 'X-Auth-Token', 'X-Storage-Token', 'X-Service-Token'].map(
  normalizeHeaderName,
);

const SPOOFED: Readonly<Record<string, string>> = {
  'X-Roles': 'admin',
  'X-Role': 'admin',
  'X-Identity-Status': 'Confirmed',
  'X-User-Id': 'evil-user',
  'X-User-Name': 'evil',
  'X-Project-Id': 'evil-project',
  'X-Tenant-Id': 'evil-tenant',
  'X-Domain-Id': 'evil-domain',
  'X-Is-Admin-Project': 'True',
  'X-Service-Roles': 'service',
  'X-Service-Identity-Status': 'Confirmed',
  'X-Service-User-Id': 'evil-svc',
  'X-Service-Catalog': '[]',
  'OpenStack-System-Scope': 'all',
  'X-Custom-Header': 'keep-me',
};
/** WSGI maps `X_Roles` and `X-Roles` to one environ key: the underscore spelling must be stripped too. */
const SPOOFED_UNDERSCORE: Readonly<Record<string, string>> = {
  X_Roles: 'admin',
  X_Identity_Status: 'Confirmed',
  X_User_Id: 'evil-user',
  X_Project_Id: 'evil-project',
  X_Service_Roles: 'service',
  OpenStack_System_Scope: 'all',
  X_Custom_Header: 'keep-me',
};

// --- tokens from the real Keystone

// Read in the first beforeAll: the file must load (and skip) where there are no fixtures.
let f: Fixtures;
const demoScope = () => ({ project: { id: f.demo.projectId } });
const tokenOf = async (issued: Promise<Issued>): Promise<string> => (await issued).token;

const projectToken = () => tokenOf(passwordToken(f.demo.user, f.demo.password, demoScope()));
/** The proxy account: holds `service` on the service project. */
const serviceToken = () =>
  tokenOf(passwordToken(f.service.user, f.service.password, { project: { id: f.service.projectId } }));
/** Valid, but only `member` on the service project. */
const noRoleServiceToken = () =>
  tokenOf(
    passwordToken(f.weakValidator.user, f.weakValidator.password, { project: { id: f.service.projectId } }),
  );
const systemToken = () =>
  tokenOf(passwordToken(f.sysReader.user, f.sysReader.password, { system: { all: true } }));
const domainToken = () =>
  tokenOf(
    passwordToken(
      f.d2.user,
      f.d2.password,
      { domain: { id: f.d2.domainId } },
      { userDomainId: f.d2.domainId },
    ),
  );
const unscopedToken = () => tokenOf(passwordToken(f.demo.user, f.demo.password, 'unscoped'));
const appCred = () => tokenOf(appCredToken(f.appCred.id, f.appCred.secret));
const ruledAppCred = () => tokenOf(appCredToken(f.appCredRules.id, f.appCredRules.secret));
const trustToken = () =>
  tokenOf(
    passwordToken(f.trust.trustee.user, f.trust.trustee.password, { 'OS-TRUST:trust': { id: f.trust.id } }),
  );
const GARBAGE = 'gAAAAABgarbage-not-a-fernet-token';
const UNREACHABLE_KEYSTONE = 'http://127.0.0.1:9';
/** Keystone's OAuth2 client-credentials grant with an application credential's id and secret. */
const oauth2AppCred = () => oauth2AccessToken(f.appCred.id, f.appCred.secret);
const oauth2Ruled = () => oauth2AccessToken(f.appCredRules.id, f.appCredRules.secret);
const bearer = (token: string): string => `Bearer ${token}`;

/** Short-lived tokens (KEYSTONE_SHORT_URL), issued first so their lifetime runs out while other cases run. */
interface ShortLived {
  readonly token: string;
  readonly expiresAt: number;
}
const shortLived: Record<string, ShortLived> = {};
const SHORT_NAMES = [
  'cached',
  'unseen',
  'allowExpired',
  'allowExpiredNoRole',
  'allowExpiredRolesReq',
] as const;

async function issueShortLived(): Promise<void> {
  for (const name of SHORT_NAMES) {
    const issued = await passwordToken(f.demo.user, f.demo.password, demoScope(), { base: shortLivedUrl() });
    shortLived[name] = { token: issued.token, expiresAt: Date.parse(String(issued.body.token.expires_at)) };
  }
}

/** Waits until the token is past its expiry (with a margin for Keystone's one-second precision). */
async function expired(name: (typeof SHORT_NAMES)[number]): Promise<string> {
  const entry = shortLived[name] as ShortLived;
  const wait = entry.expiresAt + 1_500 - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  return entry.token;
}

// --- the cases

interface Sent {
  readonly method?: string;
  readonly path?: string;
  readonly headers?: Readonly<Record<string, string | string[]>>;
  readonly body?: string;
}

interface Case {
  readonly name: string;
  /** keystonemiddleware's status (0: no answer), checked: no case may pass by both sides failing alike. */
  readonly status: number;
  readonly send: () => Promise<Sent>;
  readonly differences?: readonly DifferenceId[];
}

interface OptionSet {
  readonly name: string;
  /** keystonemiddleware's paste filter on its side, the top-level `filter` on ours; default auth_token. */
  readonly filter?: KsmFilter;
  readonly options: KsmOptions;
  /** Point both sides at a port nobody listens on. */
  readonly keystoneDown?: boolean;
  readonly cases: readonly Case[];
}

const get = (headers: Record<string, string | string[]>, path = '/v1/things'): Sent => ({
  method: 'GET',
  path,
  headers,
});

const SETS: readonly OptionSet[] = [
  {
    name: 'default',
    // 10.1's default, explicit: roles_required=true is the next set.
    options: { service_token_roles_required: false },
    cases: [
      {
        // Runs first: it caches a short-lived token on both sides; a case at the end sends it again expired.
        name: 'short-lived token while valid (cached on both sides)',
        status: 200,
        send: async () => {
          const entry = shortLived.cached as ShortLived;
          if (Date.now() > entry.expiresAt - 1_000)
            throw new Error('set-up took longer than the token lifetime');
          return get({ 'X-Auth-Token': entry.token });
        },
      },
      { name: 'no token', status: 401, send: async () => get({}) },
      { name: 'empty X-Auth-Token', status: 401, send: async () => get({ 'X-Auth-Token': '' }) },
      { name: 'garbage token', status: 401, send: async () => get({ 'X-Auth-Token': GARBAGE }) },
      { name: 'whitespace-only X-Auth-Token', status: 401, send: async () => get({ 'X-Auth-Token': '   ' }) },
      {
        name: 'two X-Auth-Token headers, both valid',
        status: 401,
        send: async () => get({ 'X-Auth-Token': [await projectToken(), await projectToken()] }),
      },
      {
        name: 'garbage X-Auth-Token + valid X-Storage-Token (X-Auth-Token wins)',
        status: 401,
        send: async () => get({ 'X-Auth-Token': GARBAGE, 'X-Storage-Token': await projectToken() }),
      },
      {
        name: 'valid project token, GET',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'valid project token, POST with a body',
        status: 200,
        send: async () => ({
          method: 'POST',
          path: '/v1/things',
          headers: { 'X-Auth-Token': await projectToken(), 'Content-Type': 'application/json' },
          body: JSON.stringify({ thing: { name: 'x' } }),
        }),
      },
      {
        name: 'valid project token, HEAD',
        status: 200,
        send: async () => ({
          method: 'HEAD',
          path: '/v1/things',
          headers: { 'X-Auth-Token': await projectToken() },
        }),
      },
      {
        name: 'HEAD without a token',
        status: 401,
        send: async () => ({ method: 'HEAD', path: '/v1/things' }),
      },
      {
        name: 'X-Storage-Token instead of X-Auth-Token',
        status: 200,
        send: async () => get({ 'X-Storage-Token': await projectToken() }),
      },
      {
        name: 'token with surrounding whitespace',
        status: 200,
        send: async () => get({ 'X-Auth-Token': `  ${await projectToken()}\t` }),
        differences: [9],
      },
      {
        name: 'domain-scoped token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await domainToken() }),
      },
      {
        name: 'system-scoped token (reader on system)',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await systemToken() }),
      },
      {
        name: 'unscoped token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await unscopedToken() }),
      },
      {
        name: 'application credential token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await appCred() }),
      },
      {
        name: 'access-rule app cred, allowed method and path',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/thing'),
      },
      {
        name: 'access-rule app cred, path outside the rule',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/denied/thing'),
      },
      {
        name: 'access-rule app cred, method outside the rule',
        status: 401,
        send: async () => ({
          method: 'POST',
          path: '/allowed/thing',
          headers: { 'X-Auth-Token': await ruledAppCred(), 'Content-Type': 'application/json' },
          body: '{}',
        }),
      },
      {
        name: 'access-rule app cred, allowed path with a query string',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/thing?limit=1&marker=x'),
      },
      {
        name: 'access-rule app cred, percent-encoded allowed path',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/%61llowed/th%69ng'),
      },
      {
        name: 'access-rule app cred, the rule prefix itself without a trailing slash',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed'),
      },
      {
        name: 'access-rule app cred, the rule prefix with a trailing slash',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/'),
      },
      {
        name: 'access-rule app cred, HEAD on an allowed path (the rule says GET)',
        status: 401,
        send: async () => ({
          method: 'HEAD',
          path: '/allowed/thing',
          headers: { 'X-Auth-Token': await ruledAppCred() },
        }),
      },
      {
        // keystonemiddleware matches webob's re-quoted path (/allowed/x%0Ay): the newline cannot stop `.*`.
        name: 'access-rule app cred, encoded newline in an allowed path',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/x%0Ay'),
      },
      {
        name: 'access-rule app cred, encoded slash joining the allowed prefix',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed%2Fthing'),
      },
      {
        name: 'access-rule app cred, percent-encoded .. segment in the allowed prefix',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/x/%2e%2e/y'),
        differences: [6],
      },
      {
        name: 'access-rule app cred, .. escaping the allowed prefix',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/../denied'),
      },
      {
        name: 'access-rule app cred, allowed prefix with a .. segment',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/x/../y'),
        differences: [6],
      },
      {
        name: 'access-rule app cred, path outside the rule, with a valid service token',
        status: 200,
        send: async () =>
          get(
            { 'X-Auth-Token': await ruledAppCred(), 'X-Service-Token': await serviceToken() },
            '/denied/thing',
          ),
      },
      {
        name: 'trust-scoped token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await trustToken() }),
      },
      {
        name: 'token obtained with a token',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await tokenOf(tokenFromToken(await projectToken(), demoScope())) }),
      },
      {
        // Revoked before either side saw it: a token cached while valid stays valid for token_cache_time.
        name: 'revoked token',
        status: 401,
        send: async () => {
          const token = await projectToken();
          await revokeToken(token);
          return get({ 'X-Auth-Token': token });
        },
      },
      {
        name: 'valid user + valid service token (service role)',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'valid user + invalid service token',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': GARBAGE }),
      },
      {
        name: 'invalid user + valid service token',
        status: 401,
        send: async () => get({ 'X-Auth-Token': GARBAGE, 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'service token only',
        status: 401,
        send: async () => get({ 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'valid user + service token without the service role (roles_required false)',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await noRoleServiceToken() }),
      },
      {
        name: 'project user + system-scoped service token',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await systemToken() }),
        differences: [2],
      },
      {
        name: 'spoofed identity headers + valid token',
        status: 200,
        send: async () => get({ ...SPOOFED, 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'spoofed underscore identity headers + valid token',
        status: 200,
        send: async () => get({ ...SPOOFED_UNDERSCORE, 'X-Auth-Token': await projectToken() }),
      },
      { name: 'spoofed identity headers, no token', status: 401, send: async () => get({ ...SPOOFED }) },
      {
        name: 'the application answers 401 (WWW-Authenticate added)',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await projectToken() }, '/status/401'),
      },
      {
        name: 'the application answers 403 (untouched)',
        status: 403,
        send: async () => get({ 'X-Auth-Token': await projectToken() }, '/status/403'),
      },
      {
        name: 'short-lived token again, after its expiry (cached while valid)',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await expired('cached') }),
      },
      {
        name: 'expired token, never seen before',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await expired('unseen') }),
      },
      {
        name: 'expired user token + service token with the service role (allow_expired)',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await expired('allowExpired'), 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'expired user token + valid service token without the service role',
        status: 401,
        send: async () =>
          get({
            'X-Auth-Token': await expired('allowExpiredNoRole'),
            'X-Service-Token': await noRoleServiceToken(),
          }),
      },
    ],
  },
  {
    name: 'rolesreq',
    options: { service_token_roles_required: true },
    cases: [
      {
        name: 'valid user + service token without the service role',
        status: 401,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await noRoleServiceToken() }),
      },
      {
        name: 'valid user + service token with the service role',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'access-rule app cred outside the rule + service token without the service role',
        status: 401,
        send: async () =>
          get(
            { 'X-Auth-Token': await ruledAppCred(), 'X-Service-Token': await noRoleServiceToken() },
            '/denied/thing',
          ),
      },
      {
        name: 'expired user token + service token with the service role (allow_expired)',
        status: 200,
        send: async () =>
          get({
            'X-Auth-Token': await expired('allowExpiredRolesReq'),
            'X-Service-Token': await serviceToken(),
          }),
      },
    ],
  },
  {
    name: 'delay',
    options: { service_token_roles_required: true, delay_auth_decision: true },
    cases: [
      { name: 'no token', status: 200, send: async () => get({}) },
      { name: 'garbage token', status: 200, send: async () => get({ 'X-Auth-Token': GARBAGE }) },
      { name: 'valid token', status: 200, send: async () => get({ 'X-Auth-Token': await projectToken() }) },
      {
        name: 'spoofed identity headers without a token',
        status: 200,
        send: async () => get({ ...SPOOFED }),
        differences: [1],
      },
      {
        name: 'spoofed underscore identity headers with a bad token',
        status: 200,
        send: async () => get({ ...SPOOFED_UNDERSCORE, 'X-Auth-Token': GARBAGE }),
        differences: [1],
      },
      {
        name: 'spoofed identity headers + valid token',
        status: 200,
        send: async () => get({ ...SPOOFED, 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'bad user token + valid service token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': GARBAGE, 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'valid user token + bad service token',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': GARBAGE }),
      },
      {
        name: 'valid user token + service token without the service role',
        status: 200,
        send: async () =>
          get({ 'X-Auth-Token': await projectToken(), 'X-Service-Token': await noRoleServiceToken() }),
      },
      {
        name: 'service token only',
        status: 200,
        send: async () => get({ 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'access-rule app cred outside the rule',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/denied/thing'),
      },
      {
        name: 'no token, the application answers 401 (WWW-Authenticate added)',
        status: 401,
        send: async () => get({}, '/status/401'),
      },
    ],
  },
  {
    name: 'nocatalog',
    options: { service_token_roles_required: false, include_service_catalog: false },
    cases: [
      {
        name: 'valid project token (no X-Service-Catalog)',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'access-rule app cred on an allowed path',
        status: 0,
        send: async () => get({ 'X-Auth-Token': await ruledAppCred() }, '/allowed/thing'),
        differences: [7],
      },
    ],
  },
  {
    name: 'down',
    options: { service_token_roles_required: true, http_request_max_retries: 0 },
    keystoneDown: true,
    cases: [
      {
        name: 'token while Keystone is unreachable',
        status: 503,
        send: async () => get({ 'X-Auth-Token': await projectToken() }),
        differences: [3],
      },
      { name: 'no token while Keystone is unreachable', status: 401, send: async () => get({}) },
    ],
  },
  {
    name: 'down-delay',
    options: { service_token_roles_required: true, http_request_max_retries: 0, delay_auth_decision: true },
    keystoneDown: true,
    cases: [
      {
        name: 'token while Keystone is unreachable',
        status: 200,
        send: async () => get({ 'X-Auth-Token': await projectToken() }),
      },
    ],
  },
  {
    name: 'oauth2',
    filter: 'oauth2_token',
    options: { service_token_roles_required: false },
    cases: [
      { name: 'no Authorization header', status: 401, send: async () => get({}) },
      {
        name: 'Bearer: an OS-OAUTH2 access token (application credential)',
        status: 200,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }),
      },
      {
        name: 'Bearer: any Keystone token (password, project-scoped)',
        status: 200,
        send: async () => get({ Authorization: bearer(await projectToken()) }),
      },
      {
        name: 'Bearer: a system-scoped token',
        status: 200,
        send: async () => get({ Authorization: bearer(await systemToken()) }),
      },
      {
        name: 'Bearer: a domain-scoped token',
        status: 200,
        send: async () => get({ Authorization: bearer(await domainToken()) }),
      },
      {
        name: 'Bearer, POST with a body',
        status: 200,
        send: async () => ({
          method: 'POST',
          path: '/v1/things',
          headers: { Authorization: bearer(await oauth2AppCred()), 'Content-Type': 'application/json' },
          body: JSON.stringify({ thing: { name: 'x' } }),
        }),
      },
      {
        name: 'HEAD without a token',
        status: 401,
        send: async () => ({ method: 'HEAD', path: '/v1/things', headers: {} }),
      },
      {
        name: 'X-Auth-Token with a valid token, no Authorization',
        status: 401,
        send: async () => get({ 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'lower-case scheme: bearer <valid token>',
        status: 401,
        send: async () => get({ Authorization: `bearer ${await oauth2AppCred()}` }),
      },
      {
        name: 'Basic credentials instead of a Bearer token',
        status: 401,
        send: async () => get({ Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }),
      },
      {
        name: 'Bearer with nothing after it',
        status: 401,
        send: async () => get({ Authorization: 'Bearer' }),
      },
      { name: 'Bearer garbage', status: 401, send: async () => get({ Authorization: bearer(GARBAGE) }) },
      {
        name: 'Bearer garbage + valid X-Auth-Token',
        status: 401,
        send: async () => get({ Authorization: bearer(GARBAGE), 'X-Auth-Token': await projectToken() }),
      },
      {
        name: 'Bearer valid + valid X-Service-Token (not read: no service headers)',
        status: 200,
        send: async () =>
          get({ Authorization: bearer(await oauth2AppCred()), 'X-Service-Token': await serviceToken() }),
      },
      {
        name: 'Bearer valid + garbage X-Service-Token (not read)',
        status: 200,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()), 'X-Service-Token': GARBAGE }),
      },
      {
        name: 'access-rule app cred via OS-OAUTH2, allowed method and path',
        status: 200,
        send: async () => get({ Authorization: bearer(await oauth2Ruled()) }, '/allowed/thing'),
      },
      {
        name: 'access-rule app cred via OS-OAUTH2, path outside the rule',
        status: 401,
        send: async () => get({ Authorization: bearer(await oauth2Ruled()) }, '/denied/thing'),
      },
      {
        name: 'revoked token',
        status: 401,
        send: async () => {
          const token = await projectToken();
          await revokeToken(token);
          return get({ Authorization: bearer(token) });
        },
      },
      {
        name: 'spoofed identity headers + valid Bearer token',
        status: 200,
        send: async () => get({ ...SPOOFED, Authorization: bearer(await oauth2AppCred()) }),
      },
      {
        name: 'spoofed underscore identity headers + valid Bearer token',
        status: 200,
        send: async () => get({ ...SPOOFED_UNDERSCORE, Authorization: bearer(await oauth2AppCred()) }),
      },
      { name: 'spoofed identity headers, no token', status: 401, send: async () => get({ ...SPOOFED }) },
      {
        name: 'the application answers 401 (WWW-Authenticate added)',
        status: 401,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }, '/status/401'),
      },
      {
        name: 'the application answers 403 (untouched)',
        status: 403,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }, '/status/403'),
      },
    ],
  },
  {
    name: 'oauth2-delay',
    filter: 'oauth2_token',
    options: { service_token_roles_required: false, delay_auth_decision: true },
    cases: [
      {
        name: 'no token (not forwarded: oauth2_token ignores delay_auth_decision)',
        status: 401,
        send: async () => get({}),
      },
      { name: 'Bearer garbage', status: 401, send: async () => get({ Authorization: bearer(GARBAGE) }) },
      {
        name: 'valid Bearer token',
        status: 200,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }),
      },
    ],
  },
  {
    name: 'oauth2-down',
    filter: 'oauth2_token',
    options: { service_token_roles_required: true, http_request_max_retries: 0 },
    keystoneDown: true,
    cases: [
      {
        name: 'Bearer token while Keystone is unreachable',
        status: 503,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }),
        differences: [3],
      },
      { name: 'no token while Keystone is unreachable', status: 401, send: async () => get({}) },
    ],
  },
  {
    name: 'oauth2-down-delay',
    filter: 'oauth2_token',
    options: { service_token_roles_required: true, http_request_max_retries: 0, delay_auth_decision: true },
    keystoneDown: true,
    cases: [
      {
        name: 'Bearer token while Keystone is unreachable (401, not forwarded)',
        status: 401,
        send: async () => get({ Authorization: bearer(await oauth2AppCred()) }),
      },
    ],
  },
];

// --- sending and comparing

interface Observed {
  /** 0: the connection closed without an answer. */
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
  readonly error?: string;
}

/** node:http rather than fetch: fetch trims header values, and the whitespace case needs them sent as is. */
function send(base: string, sent: Sent): Promise<Observed> {
  return new Promise((resolve) => {
    const { hostname, port } = new URL(base);
    // The path as an option, not in a URL: URL parsing would resolve the dot segments some cases are about.
    const req = request(
      {
        hostname,
        port,
        path: sent.path ?? '/',
        method: sent.method ?? 'GET',
        headers: { ...sent.headers },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString(),
          }),
        );
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error('no answer within 15 s')));
    req.on('error', (error) => resolve({ status: 0, headers: {}, text: '', error: error.message }));
    req.end(sent.body);
  });
}

/** The headers the application received, names normalised as a WSGI server sees them. */
function appHeaders(observed: Observed): Record<string, string> | undefined {
  let body: unknown;
  try {
    body = JSON.parse(observed.text);
  } catch {
    return undefined;
  }
  const headers = (body as { headers?: Record<string, unknown> } | null)?.headers;
  if (headers === undefined || typeof headers !== 'object') return undefined;
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === null || value === undefined) continue;
    const key = normalizeHeaderName(name);
    const text = Array.isArray(value) ? value.join(', ') : String(value);
    // Two spellings of one header both arriving (X-Roles and X_Roles): keep both visible so it cannot pass.
    out[key] = key in out ? `${out[key]} <and> ${text}` : text;
  }
  return out;
}

function pick(headers: Record<string, string>, names: readonly string[]): Record<string, string | undefined> {
  return Object.fromEntries(names.map((name) => [name, headers[name]]));
}

function compare(testCase: Case, theirs: Observed, ours: Observed, sent: Sent): void {
  const diffs = new Set<DifferenceId>(testCase.differences ?? []);
  expect(theirs.status, `keystonemiddleware's status (${theirs.error ?? theirs.text.slice(0, 200)})`).toBe(
    testCase.status,
  );

  if (diffs.has(3)) {
    // Status only: webob's HTML page against our JSON with Retry-After.
    expect(ours.status).toBe(503);
    expect(ours.text).toBe(UNAVAILABLE_BODY);
    expect(ours.headers['retry-after']).toBe('5');
    return;
  }
  if (diffs.has(6)) {
    // uwsgi resolved the .. and keystonemiddleware let the app see /allowed/y; our rules refuse dot segments.
    expect(appHeaders(theirs)?.['x-identity-status']).toBe('Confirmed');
    expect(ours.status).toBe(401);
    expect(ours.text).toBe(UNAUTHORIZED_BODY);
    expect(ours.headers['www-authenticate']).toBe(`Keystone uri="${keystoneUrl()}"`);
    return;
  }
  if (diffs.has(7)) {
    // keystonemiddleware's KeyError: the connection closed without an answer. Ours confirms, with no catalog.
    const weSaw = appHeaders(ours);
    expect(ours.status).toBe(200);
    expect(weSaw?.['x-identity-status']).toBe('Confirmed');
    expect(weSaw?.['x-service-catalog']).toBeUndefined();
    return;
  }

  expect(ours.status).toBe(theirs.status);
  expect(ours.headers['www-authenticate']).toBe(theirs.headers['www-authenticate']);
  const theySaw = appHeaders(theirs);
  const weSaw = appHeaders(ours);
  if (sent.method === 'HEAD') return;
  if (theySaw === undefined) {
    expect(weSaw, 'our application was reached, keystonemiddleware answered itself').toBeUndefined();
    if (theirs.status === 401) {
      expect(JSON.parse(ours.text)).toEqual(JSON.parse(theirs.text));
      expect(ours.headers['content-type']).toMatch(/^application\/json/);
    }
    return;
  }
  expect(weSaw, `keystonemiddleware's application was reached, ours was not: ${ours.text}`).toBeDefined();

  const expected = { ...theySaw };
  if (diffs.has(1) || diffs.has(2)) {
    // The value keystonemiddleware let through or took from the service token: absent here.
    expect(expected['openstack-system-scope']).toBe('all');
    delete expected['openstack-system-scope'];
  }
  if (diffs.has(9)) expected['x-auth-token'] = (expected['x-auth-token'] as string).trim();
  const names = [...new Set([...COMPARED, ...Object.keys(sent.headers ?? {}).map(normalizeHeaderName)])];
  expect(pick(weSaw as Record<string, string>, names)).toEqual(pick(expected, names));
}

// --- the two sides

interface Sides {
  readonly ksm: RunningKsm;
  readonly ours: CliRun;
  readonly upstream: Running;
}

async function startSides(set: OptionSet): Promise<Sides> {
  // Port 9 (discard) on loopback: nothing listens, connections are refused. Not a freed ephemeral port: uwsgi
  // binds its worker socket to an auto-assigned one, and keystonemiddleware, sent there, hung on its own worker.
  const authUrl = set.keystoneDown ? UNREACHABLE_KEYSTONE : keystoneUrl();
  const credentials: KsmCredentials = {
    authUrl,
    username: f.service.user,
    password: f.service.password,
    projectName: f.service.project,
    wwwAuthenticateUri: keystoneUrl(),
    serviceType: f.serviceType,
  };
  const upstream = await listen(echo);
  const config = {
    // One process, like the single keystonemiddleware worker it is compared with (one cache each).
    workers: 1,
    listen: { host: '127.0.0.1', port: 0 },
    upstream: { url: upstream.url },
    admin_listen: { host: '127.0.0.1', port: 0 },
    filter: set.filter ?? 'auth_token',
    keystone_authtoken: authTokenOptions(credentials, set.options),
    log: { level: 'info' },
  };
  // JSON is YAML: no quoting to get wrong.
  const [ksm, ours] = await Promise.allSettled([
    startKsm(credentials, set.options, undefined, set.filter),
    startCli(['--config', writeConfig(JSON.stringify(config, null, 2))]),
  ]);
  if (ksm.status === 'rejected' || ours.status === 'rejected') {
    // Leave nothing running behind a failed set-up.
    await Promise.all([
      ksm.status === 'fulfilled' ? ksm.value.stop() : undefined,
      ours.status === 'fulfilled' ? ours.value.stop() : undefined,
      upstream.close(),
    ]);
    throw ksm.status === 'rejected' ? ksm.reason : (ours as PromiseRejectedResult).reason;
  }
  return { ksm: ksm.value, ours: ours.value, upstream };
}

describe.skipIf(!HAVE_KEYSTONE)(`keystonemiddleware vs our CLI on a real Keystone${SKIP_REASON}`, () => {
  beforeAll(async () => {
    f = fixtures();
    await issueShortLived();
  });

  it('lists the same deliberate differences as the README', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const section =
      readme.split('## Deliberate differences from keystonemiddleware')[1]?.split('\n## ')[0] ?? '';
    const listed = [...section.matchAll(/^(\d+)\. \*\*(.+?)\*\*/gm)].map((m) => ({
      n: Number(m[1]),
      title: m[2],
    }));
    expect(DIFFERENCES.map(({ n, title }) => ({ n, title }))).toEqual(listed);
  });

  for (const set of SETS) {
    const down = set.keystoneDown ? ', Keystone unreachable' : '';
    const title = `${set.name}: ${JSON.stringify(set.options)}${down}`;
    describe(title, () => {
      let sides: Sides | undefined;
      beforeAll(async () => {
        sides = await startSides(set);
      });
      afterAll(async () => {
        await Promise.all([sides?.ksm.stop(), sides?.ours.stop(), sides?.upstream.close()]);
      });

      for (const testCase of set.cases) {
        it(testCase.name, async () => {
          const { ksm, ours } = sides as Sides;
          const sent = await testCase.send();
          const theirs = await send(ksm.url, sent);
          const mine = await send(ours.url, sent);
          compare(testCase, theirs, mine, sent);
        });
      }
    });
  }
});
