/**
 * Pure: a Keystone v3 validation body → the compact identity we cache. The raw body is dropped so that 100k
 * cached identities stay small; only what headers, access rules, bind and revocation need is kept.
 */

export interface AccessRule {
  readonly service: string;
  readonly method: string;
  readonly path: string;
}

export interface TokenInfo {
  readonly userId: string;
  readonly userName: string | undefined;
  readonly userDomainId: string | undefined;
  readonly userDomainName: string | undefined;
  readonly projectId: string | undefined;
  readonly projectName: string | undefined;
  readonly projectDomainId: string | undefined;
  readonly projectDomainName: string | undefined;
  /** Domain scope only (a project-scoped token has none, as in keystoneauth). */
  readonly domainId: string | undefined;
  readonly domainName: string | undefined;
  readonly systemAll: boolean;
  readonly roleNames: readonly string[];
  readonly roleIds: readonly string[];
  /** keystoneauth answers True when Keystone omits `is_admin_project` (no admin project configured). */
  readonly isAdminProject: boolean;
  readonly expiresAtMs: number;
  readonly issuedAtMs: number;
  readonly auditIds: readonly string[];
  readonly methods: readonly string[];
  readonly appCredId: string | undefined;
  /** `undefined`: no restriction. An empty list denies everything, as keystonemiddleware does. */
  readonly accessRules: readonly AccessRule[] | undefined;
  /** Service types present in the token's catalog; `undefined` when the body carried no catalog. */
  readonly catalogTypes: readonly string[] | undefined;
  /** The catalog rendered once as keystonemiddleware's v2-format `X-Service-Catalog` value. */
  readonly catalogHeader: string | undefined;
  readonly bind: Readonly<Record<string, string>> | undefined;
  readonly trustId: string | undefined;
  /**
   * `OS-TRUST:trust` → `trustor_user.id` and `trustee_user.id`: Keystone revokes a trust token on a `user_id`
   * event for its user, its trustor or its trustee (`revoke_model.build_token_values`).
   */
  readonly trustorUserId: string | undefined;
  readonly trusteeUserId: string | undefined;
  /** `OS-OAUTH1` → `consumer_id` and `access_token_id`, present on tokens obtained with an OAuth1 access token. */
  readonly oauthConsumerId: string | undefined;
  readonly oauthAccessTokenId: string | undefined;
  /** `oauth2_credential["x5t#S256"]`: the client certificate an OAuth2 mTLS token is bound to (Keystone 2023.1+). */
  readonly certThumbprint: string | undefined;
  /** Rough resident cost of this object, used to bound the cache by bytes. */
  readonly sizeBytes: number;
}

export class MalformedTokenBodyError extends Error {
  /** claims_unmapped: an external authorization server's claims lack the identity (403 there, not 401). */
  readonly reason: 'malformed_body' | 'claims_unmapped';

  constructor(message: string, reason: 'malformed_body' | 'claims_unmapped' = 'malformed_body') {
    super(message);
    this.name = 'MalformedTokenBodyError';
    this.reason = reason;
  }
}

type Json = Record<string, unknown>;

function obj(value: unknown): Json | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Json) : undefined;
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

function parseTime(value: unknown, field: string): number {
  const text = str(value);
  const ms = text === undefined ? Number.NaN : Date.parse(text);
  if (!Number.isFinite(ms)) throw new MalformedTokenBodyError(`token.${field} is not a timestamp`);
  return ms;
}

function parseAccessRules(value: unknown): AccessRule[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value)) throw new MalformedTokenBodyError('access_rules is not a list');
  return value.map((raw) => {
    const rule = obj(raw);
    const service = str(rule?.service);
    const method = str(rule?.method);
    const path = str(rule?.path);
    if (service === undefined || method === undefined || path === undefined) {
      throw new MalformedTokenBodyError('access rule lacks service, method or path');
    }
    return { service, method, path };
  });
}

export interface ParseOptions {
  /** Render `X-Service-Catalog` (keystonemiddleware's `include_service_catalog`). */
  readonly renderCatalog: boolean;
}

/**
 * Identities repeat their domains, projects, roles and methods: one copy of each such string (and of each role
 * list) serves every cached identity. Bounded, so hostile variety cannot grow it without limit.
 */
const interned = new Map<string, string>();
const internedLists = new Map<string, readonly string[]>();
const MAX_INTERNED = 20_000;

function intern(value: string | undefined, maxLength = 128): string | undefined {
  if (value === undefined || value.length > maxLength) return value;
  const known = interned.get(value);
  if (known !== undefined) return known;
  if (interned.size >= MAX_INTERNED) interned.clear();
  interned.set(value, value);
  return value;
}

function internList(values: string[]): readonly string[] {
  const key = values.join('\u0000');
  const known = internedLists.get(key);
  if (known !== undefined) return known;
  if (internedLists.size >= MAX_INTERNED) internedLists.clear();
  const list = Object.freeze(values.map((value) => intern(value) as string));
  internedLists.set(key, list);
  return list;
}

export function parseTokenBody(body: unknown, options: ParseOptions): TokenInfo {
  const token = obj(obj(body)?.token);
  if (token === undefined) throw new MalformedTokenBodyError('body has no token object');
  const user = obj(token.user);
  const userId = str(user?.id);
  if (userId === undefined) throw new MalformedTokenBodyError('token.user.id is missing');
  const userDomain = obj(user?.domain);
  const project = obj(token.project);
  const projectDomain = obj(project?.domain);
  const domain = obj(token.domain);
  const system = obj(token.system);
  const roles = Array.isArray(token.roles) ? token.roles.map(obj) : [];
  const appCred = obj(token.application_credential);
  const trust = obj(token['OS-TRUST:trust']);
  const oauth = obj(token['OS-OAUTH1']);
  const oauth2 = obj(token.oauth2_credential);
  const catalog = Array.isArray(token.catalog) ? token.catalog : undefined;
  const bindRaw = obj(token.bind);
  const strings = (values: unknown[]): string[] => values.filter((v): v is string => typeof v === 'string');

  const userName = str(user?.name);
  const userDomainId = intern(str(userDomain?.id));
  const userDomainName = intern(str(userDomain?.name));
  const projectId = intern(str(project?.id));
  const projectName = intern(str(project?.name));
  const projectDomainId = intern(str(projectDomain?.id));
  const projectDomainName = intern(str(projectDomain?.name));
  const domainId = intern(str(domain?.id));
  const domainName = intern(str(domain?.name));
  const roleNames = internList(strings(roles.map((role) => role?.name)));
  const roleIds = internList(strings(roles.map((role) => role?.id)));
  const expiresAtMs = parseTime(token.expires_at, 'expires_at');
  const issuedAtMs = token.issued_at === undefined ? 0 : parseTime(token.issued_at, 'issued_at');
  // slice(): filter() leaves room for 17 elements (150 bytes for one audit id); kept per identity, it adds up.
  const auditIds = Object.freeze(Array.isArray(token.audit_ids) ? strings(token.audit_ids).slice() : []);
  const methods = internList(Array.isArray(token.methods) ? strings(token.methods) : []);
  const appCredId = str(appCred?.id);
  const accessRules = parseAccessRules(appCred?.access_rules);
  const catalogTypes =
    catalog === undefined ? undefined : internList(strings(catalog.map((service) => obj(service)?.type)));
  // Tokens of one project (often of a whole region) carry the same catalog: keep one copy of its rendering.
  const catalogHeader =
    catalog !== undefined && options.renderCatalog ? intern(renderV2Catalog(catalog), 64 * 1024) : undefined;
  const bind =
    bindRaw === undefined
      ? undefined
      : Object.freeze(Object.fromEntries(Object.entries(bindRaw).map(([kind, id]) => [kind, String(id)])));
  const trustId = str(trust?.id);
  const trustorUserId = str(obj(trust?.trustor_user)?.id);
  const trusteeUserId = str(obj(trust?.trustee_user)?.id);
  const oauthConsumerId = str(oauth?.consumer_id);
  const oauthAccessTokenId = str(oauth?.access_token_id);
  const certThumbprint = str(oauth2?.['x5t#S256']);
  // Shared (interned) strings and lists are not counted: they are paid once for all entries.
  const sizeBytes = estimateSize([
    userId,
    userName,
    auditIds,
    appCredId,
    accessRules,
    catalogHeader,
    bind,
    trustId,
    trustorUserId,
    trusteeUserId,
    oauthConsumerId,
    oauthAccessTokenId,
    certThumbprint,
  ]);

  // One object literal: copying into a new object (spread) would put 29 properties in dictionary mode, 4x the size.
  return Object.freeze({
    userId,
    userName,
    userDomainId,
    userDomainName,
    projectId,
    projectName,
    projectDomainId,
    projectDomainName,
    domainId,
    domainName,
    systemAll: system?.all === true,
    roleNames,
    roleIds,
    isAdminProject: typeof token.is_admin_project === 'boolean' ? token.is_admin_project : true,
    expiresAtMs,
    issuedAtMs,
    auditIds,
    methods,
    appCredId,
    accessRules,
    catalogTypes,
    catalogHeader,
    bind,
    trustId,
    trustorUserId,
    trusteeUserId,
    oauthConsumerId,
    oauthAccessTokenId,
    certThumbprint,
    sizeBytes,
  });
}

/**
 * keystonemiddleware always hands the application a v2-shaped catalog: per service `{type, name, endpoints}`
 * with one endpoint object per region holding `publicURL`/`internalURL`/`adminURL`.
 */
export function renderV2Catalog(catalog: readonly unknown[]): string {
  const services = catalog.map((raw) => {
    const v3 = obj(raw) ?? {};
    const service: Json = { type: v3.type };
    if ('name' in v3) service.name = v3.name;
    const regions = new Map<unknown, Json>();
    const endpoints = Array.isArray(v3.endpoints) ? v3.endpoints : [];
    for (const rawEndpoint of endpoints) {
      const endpoint = obj(rawEndpoint) ?? {};
      const regionName = endpoint.region ?? null;
      let region = regions.get(regionName);
      if (region === undefined) {
        region = regionName ? { region: regionName } : {};
        regions.set(regionName, region);
      }
      region[`${String(endpoint.interface).toLowerCase()}URL`] = endpoint.url;
    }
    service.endpoints = [...regions.values()];
    return service;
  });
  return pythonJsonDumps(services);
}

/**
 * Serialises like Python's `json.dumps` defaults (`", "` and `": "` separators, non-ASCII escaped) so the header
 * value is byte-for-byte what keystonemiddleware sends.
 */
export function pythonJsonDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return asciiJsonString(value);
  if (typeof value === 'number') return Number.isFinite(value) ? JSON.stringify(value) : 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(', ')}]`;
  const entries = Object.entries(value as Json).filter(([, v]) => v !== undefined);
  return `{${entries.map(([k, v]) => `${asciiJsonString(k)}: ${pythonJsonDumps(v)}`).join(', ')}}`;
}

function asciiJsonString(text: string): string {
  return JSON.stringify(text).replace(
    /[\u0080-\uffff]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

// The object itself (29 fields) about 272 bytes; strings about 16 bytes plus one per character (one-byte strings),
// arrays and objects about 16 bytes plus 8 per slot.
function estimateSize(values: readonly unknown[]): number {
  let bytes = 272;
  const add = (value: unknown): void => {
    if (typeof value === 'string') bytes += 16 + value.length;
    else if (Array.isArray(value)) {
      bytes += 16 + 8 * value.length;
      for (const item of value) add(item);
    } else if (value !== null && typeof value === 'object') {
      for (const [key, item] of Object.entries(value)) {
        bytes += 16 + key.length;
        add(item);
      }
    }
  };
  for (const value of values) add(value);
  return bytes;
}
