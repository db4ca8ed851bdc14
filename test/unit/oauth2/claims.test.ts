/**
 * claims → identity, by keystonemiddleware's mapping_* rules: required claims, the three scopes, roles as a comma
 * string (or a JSON array), expiry from mapping_expires_at or `exp`, and 403 material for every unreadable claim.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ClaimMapping } from '../../../src/config/ext-oauth2-options.js';
import { parseTokenBody } from '../../../src/keystone/token-info.js';
import { claimAt, mapClaims, roleNamesOf } from '../../../src/oauth2/claims.js';

const path = (p: string | undefined) => (p === undefined ? undefined : p.split('.'));
function mappingOf(overrides: Partial<Record<keyof ClaimMapping, string>> = {}): ClaimMapping {
  const m = {
    projectId: 'project.id',
    projectName: 'project.name',
    projectDomainId: 'project.domain.id',
    projectDomainName: 'project.domain.name',
    userId: 'client_id',
    userName: 'username',
    userDomainId: 'user_domain.id',
    userDomainName: 'user_domain.name',
    roles: 'roles',
    systemScope: 'system',
    expiresAt: undefined,
    ...overrides,
  } as Record<keyof ClaimMapping, string | undefined>;
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [k, path(v)])) as unknown as ClaimMapping;
}

const base = {
  active: true,
  client_id: 'u1',
  username: 'alice',
  user_domain: { id: 'd1', name: 'Default' },
  roles: 'member,reader',
  project: { id: 'p1', name: 'demo', domain: { id: 'd1', name: 'Default' } },
  exp: 2_000_000_000,
  iat: 1_999_999_000,
};

function infoOf(claims: unknown, mapping = mappingOf()) {
  const mapped = mapClaims(claims, mapping, { method: 'introspection' });
  if (!mapped.ok) throw new Error(`unmapped ${mapped.field} ${mapped.problem}`);
  return parseTokenBody(mapped.body, { renderCatalog: false });
}

describe('mapClaims', () => {
  it('project scope: every field, expiry from exp, roles split, not admin', () => {
    const info = infoOf(base);
    expect(info).toMatchObject({
      userId: 'u1',
      userName: 'alice',
      userDomainId: 'd1',
      userDomainName: 'Default',
      projectId: 'p1',
      projectName: 'demo',
      projectDomainId: 'd1',
      projectDomainName: 'Default',
      domainId: undefined,
      systemAll: false,
      roleNames: ['member', 'reader'],
      isAdminProject: false,
      expiresAtMs: 2_000_000_000_000,
      issuedAtMs: 1_999_999_000_000,
    });
  });

  it('system scope when the claim is boolean true; project claims then ignored', () => {
    const info = infoOf({ ...base, system: true });
    expect(info.systemAll).toBe(true);
    expect(info.projectId).toBeUndefined();
  });

  it('domain scope from the project domain claims when there is no project id', () => {
    const { project: _drop, ...rest } = base;
    const info = infoOf({ ...rest, project: { domain: { id: 'd9', name: 'Other' } } });
    expect(info.domainId).toBe('d9');
    expect(info.domainName).toBe('Other');
    expect(info.projectId).toBeUndefined();
  });

  it('a role named admin (any case) makes the admin project', () => {
    expect(infoOf({ ...base, roles: 'member,Admin' }).isAdminProject).toBe(true);
  });

  it('roles as a JSON array (a documented difference) are accepted', () => {
    expect(infoOf({ ...base, roles: ['member', ' admin '] }).roleNames).toEqual(['member', 'admin']);
  });

  it('mapping_expires_at wins over exp; no expiry claim at all gives no expiry', () => {
    const mapping = mappingOf({ expiresAt: 'ext.expires' });
    expect(infoOf({ ...base, ext: { expires: 1_900_000_000 } }, mapping).expiresAtMs).toBe(1_900_000_000_000);
    const { exp: _exp, ...noExp } = base;
    expect(infoOf(noExp).expiresAtMs).toBe(Date.parse('9999-12-31T23:59:59Z'));
  });

  it('cnf x5t#S256 becomes the certificate binding (as oauth2_mtls_token reads it), jti the audit id', () => {
    const info = infoOf({ ...base, cnf: { 'x5t#S256': 'abc' }, jti: 'j1' });
    expect(info.certThumbprint).toBe('abc');
    expect(info.bind).toBeUndefined();
    expect(info.auditIds).toEqual(['j1']);
  });

  it.each([
    ['no roles', { roles: undefined }, 'mapping_roles', 'missing'],
    ['roles a number', { roles: 7 }, 'mapping_roles', 'not_a_string'],
    ['roles an array of numbers', { roles: [1] }, 'mapping_roles', 'not_a_string'],
    ['no user name', { username: undefined }, 'mapping_user_name', 'missing'],
    ['user id a number', { client_id: 42 }, 'mapping_user_id', 'not_a_string'],
    ['system scope a string', { system: 'yes' }, 'mapping_system_scope', 'not_a_boolean'],
    [
      'project without a name',
      { project: { id: 'p1', domain: { id: 'd', name: 'n' } } },
      'mapping_project_name',
      'missing',
    ],
    ['exp a string (RFC 7519 says NumericDate)', { exp: '2000000000' }, 'exp', 'not_a_number'],
  ])('%s → unmapped (403)', (_name, change, field, problem) => {
    const mapped = mapClaims({ ...base, ...change }, mappingOf(), { method: 'introspection' });
    expect(mapped).toEqual({ ok: false, field, problem });
  });

  it('a missing intermediate object is a missing claim (no lookup at the top level again)', () => {
    // keystonemiddleware would find `name` at the top level here.
    const claims = { ...base, project: undefined, id: 'p-top', name: 'top' };
    const mapped = mapClaims(claims, mappingOf({ projectDomainId: undefined }), { method: 'introspection' });
    expect(mapped).toEqual({ ok: false, field: 'mapping_project_domain_id', problem: 'no_mapping' });
  });
});

const name = fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/);
const value = fc.string({ minLength: 1, maxLength: 20 }).filter((s) => s.trim() === s && s.length > 0);

describe('properties', () => {
  it('any value placed at any claim path is read back from that path', () => {
    fc.assert(
      fc.property(fc.array(name, { minLength: 1, maxLength: 4 }), value, (keys, leaf) => {
        const claims = keys.reduceRight<unknown>((inner, key) => ({ [key]: inner }), leaf);
        expect(claimAt(claims, keys)).toBe(leaf);
        expect(claimAt(claims, [...keys, 'deeper'])).toBeUndefined();
      }),
    );
  });

  it('user and project mapped from arbitrary nested paths give exactly those values', () => {
    fc.assert(
      fc.property(
        // Names other than the fixed containers of this shape.
        fc.uniqueArray(
          name.filter((key) => !['nest', 'p', 'd', 'roles'].includes(key)),
          { minLength: 6, maxLength: 6 },
        ),
        fc.array(value, { minLength: 6, maxLength: 6 }),
        (keys, values) => {
          const [uid, uname, udid, udname, pid, pname] = keys as [
            string,
            string,
            string,
            string,
            string,
            string,
          ];
          const claims = {
            nest: { [uid]: values[0], [uname]: values[1] },
            [udid]: values[2],
            [udname]: values[3],
            p: { [pid]: values[4], [pname]: values[5], d: { i: 'D', n: 'N' } },
            roles: 'r',
          };
          const info = infoOf(
            claims,
            mappingOf({
              userId: `nest.${uid}`,
              userName: `nest.${uname}`,
              userDomainId: udid,
              userDomainName: udname,
              projectId: `p.${pid}`,
              projectName: `p.${pname}`,
              projectDomainId: 'p.d.i',
              projectDomainName: 'p.d.n',
              systemScope: undefined,
            }),
          );
          expect([info.userId, info.userName, info.userDomainId, info.userDomainName]).toEqual(
            values.slice(0, 4),
          );
          expect([info.projectId, info.projectName]).toEqual(values.slice(4, 6));
        },
      ),
    );
  });

  it('roles: a comma string and the same names as an array give the same list', () => {
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[a-z_]{1,8}$/), { minLength: 1, maxLength: 6 }), (names) => {
        expect(roleNamesOf(names.join(','))).toEqual(names);
        expect(roleNamesOf(names.join(' , '))).toEqual(names);
        expect(roleNamesOf(names)).toEqual(names);
      }),
    );
  });

  it('dropping any required claim gives unmapped, never an identity', () => {
    const required = ['client_id', 'username', 'user_domain', 'roles'] as const;
    fc.assert(
      fc.property(fc.constantFrom(...required), (drop) => {
        const claims: Record<string, unknown> = { ...base };
        delete claims[drop];
        expect(mapClaims(claims, mappingOf(), { method: 'introspection' }).ok).toBe(false);
      }),
    );
  });
});
