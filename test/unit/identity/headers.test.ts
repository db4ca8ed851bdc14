import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  IDENTITY_HEADERS,
  identityHeaders,
  isIdentityHeader,
  stripIdentityHeaders,
  stripIdentityRawHeaders,
} from '../../../src/identity/headers.js';
import { parseTokenBody } from '../../../src/keystone/token-info.js';
import { fixtureTokenBody } from '../../../src/testing.js';

// keystonemiddleware's _all_auth_headers (anchors.md §1.3), plus OpenStack-System-Scope which it forgets.
const KSM_STRIPPED = [
  'X-Service-Catalog',
  'X-Identity-Status',
  'X-Service-Identity-Status',
  'X-Is-Admin-Project',
  'X-Role',
  'X-User',
  'X-Tenant-Id',
  'X-Tenant-Name',
  'X-Tenant',
  'X-Domain-Id',
  'X-Domain-Name',
  'X-Project-Id',
  'X-Project-Name',
  'X-Project-Domain-Id',
  'X-Project-Domain-Name',
  'X-User-Id',
  'X-User-Name',
  'X-User-Domain-Id',
  'X-User-Domain-Name',
  'X-Service-Domain-Id',
  'X-Service-Domain-Name',
  'X-Service-Project-Id',
  'X-Service-Project-Name',
  'X-Service-Project-Domain-Id',
  'X-Service-Project-Domain-Name',
  'X-Service-User-Id',
  'X-Service-User-Name',
  'X-Service-User-Domain-Id',
  'X-Service-User-Domain-Name',
  'X-Roles',
  'X-Service-Roles',
];

describe('identity header stripping', () => {
  it('strips exactly keystonemiddleware list plus OpenStack-System-Scope', () => {
    expect([...IDENTITY_HEADERS].sort()).toEqual([...KSM_STRIPPED, 'OpenStack-System-Scope'].sort());
  });

  it.each([
    ['x-roles', true],
    ['X_ROLES', true],
    ['x_service_user_id', true],
    ['openstack_system_scope', true],
    ['X-Tenant', true],
    ['x-auth-token', false],
    ['x-service-token', false],
    ['x-rolesx', false],
    ['x-custom-header', false],
    ['x-openstack-request-id', false],
  ])('%s → stripped: %s', (name, stripped) => {
    expect(isIdentityHeader(name)).toBe(stripped);
  });

  it('removes every spelling from a header object and keeps the rest', () => {
    const headers: Record<string, unknown> = {
      'x-roles': 'admin',
      x_roles: 'admin',
      X_Identity_Status: 'Confirmed',
      'openstack-system-scope': 'all',
      'x-auth-token': 'tok',
      host: 'example',
    };
    const removed = stripIdentityHeaders(headers);
    expect(removed.sort()).toEqual(['X_Identity_Status', 'openstack-system-scope', 'x-roles', 'x_roles']);
    expect(headers).toEqual({ 'x-auth-token': 'tok', host: 'example' });
  });

  it('filters rawHeaders the same way', () => {
    expect(
      stripIdentityRawHeaders(['X-Roles', 'admin', 'Host', 'h', 'x_user_id', 'evil', 'X-Auth-Token', 't']),
    ).toEqual(['Host', 'h', 'X-Auth-Token', 't']);
  });

  it('strips any case and dash/underscore spelling of every identity header (property)', () => {
    const spelling = fc
      .tuple(fc.constantFrom(...IDENTITY_HEADERS), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }))
      .map(([name, flips]) =>
        [...name]
          .map((ch, i) => {
            const flip = flips[i % flips.length];
            if (ch === '-') return flip ? '_' : '-';
            return flip ? ch.toUpperCase() : ch.toLowerCase();
          })
          .join(''),
      );
    fc.assert(
      fc.property(spelling, fc.string({ minLength: 1, maxLength: 20 }), (name, value) => {
        const headers: Record<string, unknown> = { [name]: value, host: 'h' };
        stripIdentityHeaders(headers);
        return Object.keys(headers).length === 1 && headers.host === 'h';
      }),
    );
  });

  it('never strips a header outside the identity set (property)', () => {
    const known = new Set(IDENTITY_HEADERS.map((n) => n.toLowerCase().replaceAll('_', '-')));
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z][a-z0-9_-]{0,30}$/), (name) => {
        fc.pre(!known.has(name.replaceAll('_', '-')));
        const headers: Record<string, unknown> = { [name]: 'v' };
        stripIdentityHeaders(headers);
        return headers[name] === 'v';
      }),
    );
  });
});

const info = (overrides: Parameters<typeof fixtureTokenBody>[0]) =>
  parseTokenBody(fixtureTokenBody(overrides), { renderCatalog: true });

describe('identity headers to set', () => {
  it("external flavor: X-Tenant is the project id, X-Is-Admin-Project only 'true' for admin, no catalog", () => {
    const base = { userId: 'u1', userName: 'alice', projectId: 'p1', projectName: 'demo', roles: ['member'] };
    const member = Object.fromEntries(
      identityHeaders({
        userStatus: 'Confirmed',
        // The claims mapping writes is_admin_project (true only with the admin role); Keystone's default is true.
        user: info({ ...base, isAdminProject: false }),
        includeServiceCatalog: false,
        flavor: 'external',
      }),
    );
    expect(member['X-Tenant']).toBe('p1');
    expect(member['X-Tenant-Name']).toBe('demo');
    expect(member['X-Is-Admin-Project']).toBeUndefined();
    expect(member['X-Identity-Status']).toBe('Confirmed');
    const admin = parseTokenBody(
      { token: { ...fixtureTokenBody({ ...base, roles: ['admin'] }).token, is_admin_project: true } },
      { renderCatalog: false },
    );
    const headers = Object.fromEntries(
      identityHeaders({
        userStatus: 'Confirmed',
        user: admin,
        includeServiceCatalog: false,
        flavor: 'external',
      }),
    );
    expect(headers['X-Is-Admin-Project']).toBe('true');
  });

  it('project token: keystonemiddleware names, formats and legacy aliases', () => {
    const user = info({
      userId: 'u1',
      userName: 'alice',
      projectId: 'p1',
      projectName: 'demo',
      roles: ['member', 'reader'],
    });
    const headers = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: true }),
    );
    expect(headers).toEqual({
      'X-Identity-Status': 'Confirmed',
      'X-Roles': 'member,reader',
      'X-Project-Id': 'p1',
      'X-Project-Name': 'demo',
      'X-Project-Domain-Id': 'default',
      'X-Project-Domain-Name': 'Default',
      'X-User-Id': 'u1',
      'X-User-Name': 'alice',
      'X-User-Domain-Id': 'default',
      'X-User-Domain-Name': 'Default',
      'X-Is-Admin-Project': 'True',
      'X-Role': 'member,reader',
      'X-User': 'alice',
      'X-Tenant-Id': 'p1',
      'X-Tenant-Name': 'demo',
      'X-Tenant': 'demo',
    });
  });

  it('X-Is-Admin-Project follows Keystone when it says so', () => {
    const user = info({ isAdminProject: false });
    const headers = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: false }),
    );
    expect(headers['X-Is-Admin-Project']).toBe('False');
  });

  it('domain token sets X-Domain-* and no project or tenant headers', () => {
    const user = info({ domainId: 'd2', domainName: 'D2' });
    const headers = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: true }),
    );
    expect(headers['X-Domain-Id']).toBe('d2');
    expect(headers['X-Domain-Name']).toBe('D2');
    expect(Object.keys(headers).filter((h) => /^X-(Project|Tenant)/.test(h))).toEqual([]);
  });

  it('system token sets OpenStack-System-Scope: all', () => {
    const user = info({ system: true, roles: ['admin'] });
    const headers = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: true }),
    );
    expect(headers['OpenStack-System-Scope']).toBe('all');
  });

  it('catalog header only with include_service_catalog', () => {
    const user = info({ catalog: [{ type: 'compute', name: 'nova', endpoints: [] }] });
    const withCatalog = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: true }),
    );
    const without = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: false }),
    );
    expect(withCatalog['X-Service-Catalog']).toBe('[{"type": "compute", "name": "nova", "endpoints": []}]');
    expect(without['X-Service-Catalog']).toBeUndefined();
  });

  it('invalid user: only the status header; service headers without legacy aliases or catalog', () => {
    const service = info({
      userId: 's1',
      userName: 'nova',
      projectId: 'sp',
      projectName: 'service',
      roles: ['service'],
    });
    const headers = Object.fromEntries(
      identityHeaders({
        userStatus: 'Invalid',
        serviceStatus: 'Confirmed',
        service,
        includeServiceCatalog: true,
      }),
    );
    expect(headers).toEqual({
      'X-Identity-Status': 'Invalid',
      'X-Service-Identity-Status': 'Confirmed',
      'X-Service-Roles': 'service',
      'X-Service-Project-Id': 'sp',
      'X-Service-Project-Name': 'service',
      'X-Service-Project-Domain-Id': 'default',
      'X-Service-Project-Domain-Name': 'Default',
      'X-Service-User-Id': 's1',
      'X-Service-User-Name': 'nova',
      'X-Service-User-Domain-Id': 'default',
      'X-Service-User-Domain-Name': 'Default',
    });
  });

  it('a system-scoped service token does not make a project user system-scoped (deliberate difference)', () => {
    const user = info({ projectId: 'p1' });
    const service = info({ system: true, roles: ['service'] });
    const headers = Object.fromEntries(
      identityHeaders({
        userStatus: 'Confirmed',
        serviceStatus: 'Confirmed',
        user,
        service,
        includeServiceCatalog: false,
      }),
    );
    expect(headers['OpenStack-System-Scope']).toBeUndefined();
  });

  it('unscoped token: empty X-Roles', () => {
    const body = fixtureTokenBody({ roles: [] });
    delete body.token.project;
    const user = parseTokenBody(body, { renderCatalog: true });
    const headers = Object.fromEntries(
      identityHeaders({ userStatus: 'Confirmed', user, includeServiceCatalog: true }),
    );
    expect(headers['X-Roles']).toBe('');
    expect(headers['X-Project-Id']).toBeUndefined();
  });
});
