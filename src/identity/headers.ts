/**
 * The one module that knows identity header names: what the client may send, what is stripped, what is set.
 * The strip list is derived from the same templates that produce the injected headers, so they cannot drift.
 */
import type { TokenInfo } from '../keystone/token-info.js';

export const USER_TOKEN_HEADER = 'x-auth-token';
/** Swift's name, accepted when X-Auth-Token is absent (keystonemiddleware does the same). */
export const STORAGE_TOKEN_HEADER = 'x-storage-token';
export const SERVICE_TOKEN_HEADER = 'x-service-token';
export const SUBJECT_TOKEN_HEADER = 'x-subject-token';
export const WWW_AUTHENTICATE_HEADER = 'WWW-Authenticate';
export const REQUEST_ID_HEADER = 'X-Openstack-Request-Id';

/** Every header that can carry a token: redacted in logs, never copied anywhere else. */
export const TOKEN_HEADERS: readonly string[] = [
  USER_TOKEN_HEADER,
  STORAGE_TOKEN_HEADER,
  SERVICE_TOKEN_HEADER,
  SUBJECT_TOKEN_HEADER,
];

const USER_STATUS = 'X-Identity-Status';
const SERVICE_STATUS = 'X-Service-Identity-Status';
const ADMIN_PROJECT = 'X-Is-Admin-Project';
const SYSTEM_SCOPE = 'OpenStack-System-Scope';
const SERVICE_CATALOG = 'X-Service-Catalog';

type Field = Exclude<
  {
    [K in keyof TokenInfo]: TokenInfo[K] extends string | undefined ? K : never;
  }[keyof TokenInfo],
  undefined
>;

/** `%s` is '' for the user token and '-Service' for the service token (keystonemiddleware's templates). */
const TEMPLATE: readonly (readonly [string, Field])[] = [
  ['X%s-Domain-Id', 'domainId'],
  ['X%s-Domain-Name', 'domainName'],
  ['X%s-Project-Id', 'projectId'],
  ['X%s-Project-Name', 'projectName'],
  ['X%s-Project-Domain-Id', 'projectDomainId'],
  ['X%s-Project-Domain-Name', 'projectDomainName'],
  ['X%s-User-Id', 'userId'],
  ['X%s-User-Name', 'userName'],
  ['X%s-User-Domain-Id', 'userDomainId'],
  ['X%s-User-Domain-Name', 'userDomainName'],
];
const ROLES_TEMPLATE = 'X%s-Roles';

/** Legacy names set for the user token only: alias → the header it copies. */
const LEGACY: readonly (readonly [string, string])[] = [
  ['X-Role', 'X-Roles'],
  ['X-User', 'X-User-Name'],
  ['X-Tenant-Id', 'X-Project-Id'],
  ['X-Tenant-Name', 'X-Project-Name'],
  ['X-Tenant', 'X-Project-Name'],
];

const PREFIXES = ['', '-Service'] as const;
const fill = (template: string, prefix: string): string => template.replace('%s', prefix);

/**
 * Every header keystonemiddleware strips, plus OpenStack-System-Scope, which it forgets (a client-sent value
 * survives there when the token is invalid and the decision is delayed).
 */
export const IDENTITY_HEADERS: readonly string[] = Object.freeze([
  SERVICE_CATALOG,
  USER_STATUS,
  SERVICE_STATUS,
  ADMIN_PROJECT,
  ...LEGACY.map(([alias]) => alias),
  ...TEMPLATE.flatMap(([template]) => PREFIXES.map((prefix) => fill(template, prefix))),
  ...PREFIXES.map((prefix) => fill(ROLES_TEMPLATE, prefix)),
  SYSTEM_SCOPE,
]);

/** WSGI servers map `X_Roles` and `X-Roles` to one variable, so both spellings are the same header. */
export function normalizeHeaderName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

const STRIP_SET: ReadonlySet<string> = new Set(IDENTITY_HEADERS.map(normalizeHeaderName));

export function isIdentityHeader(name: string): boolean {
  if (STRIP_SET.has(name)) return true;
  // Node hands over lower-case names: only `_` spellings, or other callers' cases, need normalising.
  return /[A-Z_]/.test(name) && STRIP_SET.has(normalizeHeaderName(name));
}

/**
 * Removes, in place, every client-sent identity header from a Node-style header object (any case, `_` or `-`).
 * Returns the names removed, as sent.
 */
export function stripIdentityHeaders(headers: Record<string, unknown>): string[] {
  const removed: string[] = [];
  for (const name of Object.keys(headers)) {
    if (STRIP_SET.has(normalizeHeaderName(name))) {
      delete headers[name];
      removed.push(name);
    }
  }
  return removed;
}

/** Same filter over Node's `rawHeaders` list ([name, value, name, value, …]). */
export function stripIdentityRawHeaders(rawHeaders: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (!STRIP_SET.has(normalizeHeaderName(name))) kept.push(name, rawHeaders[i + 1] as string);
  }
  return kept;
}

export type HeaderPair = readonly [name: string, value: string];

export interface IdentityHeaderInput {
  readonly userStatus: 'Confirmed' | 'Invalid';
  /** Present only when the request carried X-Service-Token. */
  readonly serviceStatus?: 'Confirmed' | 'Invalid' | undefined;
  readonly user?: TokenInfo | undefined;
  readonly service?: TokenInfo | undefined;
  readonly includeServiceCatalog: boolean;
  /** false: no X-Identity-Status (keystonemiddleware's oauth2_token never sets it). Default true. */
  readonly identityStatus?: boolean;
}

function scopeHeaders(out: HeaderPair[], info: TokenInfo, prefix: string): void {
  out.push([fill(ROLES_TEMPLATE, prefix), info.roleNames.join(',')]);
  for (const [template, field] of TEMPLATE) {
    const value = info[field];
    if (value !== undefined) out.push([fill(template, prefix), value]);
  }
}

/**
 * The headers to set on the request the application receives, in keystonemiddleware's formats. Headers whose
 * value keystonemiddleware leaves as None are omitted.
 */
export function identityHeaders(input: IdentityHeaderInput): HeaderPair[] {
  const out: HeaderPair[] = input.identityStatus === false ? [] : [[USER_STATUS, input.userStatus]];
  if (input.serviceStatus !== undefined) out.push([SERVICE_STATUS, input.serviceStatus]);
  const { user, service } = input;
  if (input.userStatus === 'Confirmed' && user !== undefined) {
    scopeHeaders(out, user, '');
    out.push([ADMIN_PROJECT, user.isAdminProject ? 'True' : 'False']);
    // Deliberate difference: keystonemiddleware writes this for the service token last, so a system-scoped
    // service token would mark a project-scoped user as system-scoped. Here it describes the user only.
    if (user.systemAll) out.push([SYSTEM_SCOPE, 'all']);
    for (const [alias, source] of LEGACY) {
      const found = out.find(([name]) => name === source);
      if (found !== undefined) out.push([alias, found[1]]);
    }
    if (input.includeServiceCatalog && user.catalogHeader !== undefined) {
      out.push([SERVICE_CATALOG, user.catalogHeader]);
    }
  }
  if (input.serviceStatus === 'Confirmed' && service !== undefined) scopeHeaders(out, service, '-Service');
  return out;
}
