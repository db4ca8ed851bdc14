/**
 * Pure: the claims of an active token (an RFC 7662 introspection answer, or a verified JWT's payload) → the
 * identity, by the `mapping_*` claim paths of keystonemiddleware's external_oauth2_token. The identity is written
 * as a Keystone token body, so the engine's token parser, cache tiers and cluster channel carry it unchanged.
 *
 * keystonemiddleware's rules: roles, user id, name, domain id and domain name are required; a boolean-true
 * system-scope claim gives system scope, else a project id gives project scope (name, domain id and name then
 * required), else the project domain claims give domain scope. Every mapped value is a non-empty string (system
 * scope: a boolean); anything else and the request is refused with 403.
 */
import type { ClaimMapping } from '../config/ext-oauth2-options.js';

/** The token's identity could not be read from its claims: which field, and why (no claim values in it). */
export interface UnmappedClaims {
  readonly ok: false;
  readonly field: string;
  readonly problem: 'missing' | 'not_a_string' | 'not_a_boolean' | 'not_a_number' | 'no_mapping';
}

export interface MappedIdentity {
  readonly ok: true;
  /** A Keystone v3 token body (`{token: {...}}`) for parseTokenBody. */
  readonly body: { readonly token: Record<string, unknown> };
}

type Json = Record<string, unknown>;

/**
 * No expiry in the claims: the identity lives as long as token_cache_time allows (keystonemiddleware's
 * behaviour without mapping_expires_at).
 */
const NO_EXPIRY = '9999-12-31T23:59:59.000Z';

const isObject = (value: unknown): value is Json =>
  value !== null && typeof value === 'object' && !Array.isArray(value);

/**
 * The value at a claim path. Each key is looked up in the object the previous one gave; a missing or non-object
 * step gives undefined (keystonemiddleware restarts at the top level after a missing step: not done here).
 */
export function claimAt(claims: unknown, path: readonly string[]): unknown {
  let current: unknown = claims;
  for (const key of path) {
    if (!isObject(current) || !Object.hasOwn(current, key)) return undefined;
    current = current[key];
  }
  return current;
}

/**
 * Role names from the roles claim: keystonemiddleware's comma-separated string, or (a difference) a JSON array of
 * strings, as many authorization servers emit. Names are trimmed; empty ones dropped.
 */
export function roleNamesOf(value: unknown): string[] | undefined {
  if (typeof value === 'string') {
    const names = value
      .split(',')
      .map((name) => name.trim())
      .filter((name) => name.length > 0);
    return names.length === 0 ? undefined : names;
  }
  if (Array.isArray(value) && value.length > 0 && value.every((name) => typeof name === 'string')) {
    const names = (value as string[]).map((name) => name.trim()).filter((name) => name.length > 0);
    return names.length === 0 ? undefined : names;
  }
  return undefined;
}

class Unmapped {
  constructor(
    readonly field: string,
    readonly problem: UnmappedClaims['problem'],
  ) {}
}

function requiredString(claims: unknown, path: readonly string[] | undefined, field: string): string {
  if (path === undefined) throw new Unmapped(field, 'no_mapping');
  const value = claimAt(claims, path);
  if (value === undefined || value === null || value === '') throw new Unmapped(field, 'missing');
  if (typeof value !== 'string') throw new Unmapped(field, 'not_a_string');
  return value;
}

function optionalString(
  claims: unknown,
  path: readonly string[] | undefined,
  field: string,
): string | undefined {
  if (path === undefined) return undefined;
  const value = claimAt(claims, path);
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new Unmapped(field, 'not_a_string');
  return value;
}

function systemScoped(claims: unknown, path: readonly string[] | undefined): boolean {
  if (path === undefined) return false;
  const value = claimAt(claims, path);
  // keystonemiddleware: a falsy value is no system scope; a truthy non-boolean one is refused.
  if (value === undefined || value === null || value === false || value === '' || value === 0) return false;
  if (value !== true) throw new Unmapped('mapping_system_scope', 'not_a_boolean');
  return true;
}

function epochSeconds(claims: unknown, path: readonly string[], field: string): number | undefined {
  const value = claimAt(claims, path);
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new Unmapped(field, 'not_a_number');
  return value;
}

const isoOf = (seconds: number): string => new Date(seconds * 1000).toISOString();

/** The token's expiry: the mapping_expires_at claim, else RFC 7662's `exp`, else none. */
function expiresAt(claims: unknown, mapping: ClaimMapping): string {
  const mapped =
    mapping.expiresAt === undefined
      ? undefined
      : epochSeconds(claims, mapping.expiresAt, 'mapping_expires_at');
  const seconds = mapped ?? epochSeconds(claims, ['exp'], 'exp');
  return seconds === undefined ? NO_EXPIRY : isoOf(seconds);
}

export interface MapOptions {
  /** Recorded as the token's `methods` (for logs and the application's token info). */
  readonly method: 'introspection' | 'jwt';
}

/** The identity of an active token, or which field could not be mapped. */
export function mapClaims(
  claims: unknown,
  mapping: ClaimMapping,
  options: MapOptions,
): MappedIdentity | UnmappedClaims {
  try {
    const roleValue = claimAt(claims, mapping.roles);
    const roles = roleNamesOf(roleValue);
    if (roles === undefined) {
      throw new Unmapped(
        'mapping_roles',
        roleValue === undefined || roleValue === '' ? 'missing' : 'not_a_string',
      );
    }
    const token: Json = {
      methods: [options.method === 'jwt' ? 'oauth2_jwt' : 'oauth2_introspection'],
      roles: roles.map((name) => ({ name })),
      // keystonemiddleware sets X-Is-Admin-Project only for a role named admin (any case).
      is_admin_project: roles.some((name) => name.toLowerCase() === 'admin'),
      expires_at: expiresAt(claims, mapping),
    };
    const issued = epochSeconds(claims, ['iat'], 'iat');
    if (issued !== undefined) token.issued_at = isoOf(issued);
    if (systemScoped(claims, mapping.systemScope)) {
      token.system = { all: true };
    } else {
      const projectId = optionalString(claims, mapping.projectId, 'mapping_project_id');
      if (projectId !== undefined) {
        token.project = {
          id: projectId,
          name: requiredString(claims, mapping.projectName, 'mapping_project_name'),
          domain: {
            id: requiredString(claims, mapping.projectDomainId, 'mapping_project_domain_id'),
            name: requiredString(claims, mapping.projectDomainName, 'mapping_project_domain_name'),
          },
        };
      } else {
        token.domain = {
          id: requiredString(claims, mapping.projectDomainId, 'mapping_project_domain_id'),
          name: requiredString(claims, mapping.projectDomainName, 'mapping_project_domain_name'),
        };
      }
    }
    token.user = {
      id: requiredString(claims, mapping.userId, 'mapping_user_id'),
      name: requiredString(claims, mapping.userName, 'mapping_user_name'),
      domain: {
        id: requiredString(claims, mapping.userDomainId, 'mapping_user_domain_id'),
        name: requiredString(claims, mapping.userDomainName, 'mapping_user_domain_name'),
      },
    };
    const cnf = claimAt(claims, ['cnf', 'x5t#S256']);
    // RFC 8705 certificate binding, where Keystone's mTLS tokens carry theirs: checked per request against the
    // client certificate (thumbprint_verify), by the same code as oauth2_mtls_token.
    if (typeof cnf === 'string') token.oauth2_credential = { 'x5t#S256': cnf };
    const jti = claimAt(claims, ['jti']);
    if (typeof jti === 'string' && jti.length > 0) token.audit_ids = [jti];
    return { ok: true, body: { token } };
  } catch (error) {
    if (error instanceof Unmapped) return { ok: false, field: error.field, problem: error.problem };
    throw error;
  }
}
