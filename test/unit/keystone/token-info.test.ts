import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  MalformedTokenBodyError,
  parseTokenBody,
  pythonJsonDumps,
  renderV2Catalog,
} from '../../../src/keystone/token-info.js';
import { sampleBody, samplesAvailable } from '../../helpers/samples.js';

describe('pythonJsonDumps', () => {
  it.each([
    [{ a: 1, b: [true, null, 'x'] }, '{"a": 1, "b": [true, null, "x"]}'],
    ['é', '"\\u00e9"'],
    ['😀', '"\\ud83d\\ude00"'],
    ['a"b\\c\n', '"a\\"b\\\\c\\n"'],
    [[], '[]'],
    [{}, '{}'],
  ])('%j → %s', (value, expected) => {
    expect(pythonJsonDumps(value)).toBe(expected);
  });
});

describe('renderV2Catalog', () => {
  it('groups endpoints by region and names them <interface>URL', () => {
    const catalog = [
      {
        type: 'compute',
        name: 'nova',
        endpoints: [
          { interface: 'public', url: 'http://pub', region: 'R1' },
          { interface: 'internal', url: 'http://int', region: 'R1' },
          { interface: 'public', url: 'http://pub2', region: 'R2' },
          { interface: 'admin', url: 'http://noregion' },
        ],
      },
      { type: 'image', endpoints: [] },
    ];
    expect(JSON.parse(renderV2Catalog(catalog))).toEqual([
      {
        type: 'compute',
        name: 'nova',
        endpoints: [
          { region: 'R1', publicURL: 'http://pub', internalURL: 'http://int' },
          { region: 'R2', publicURL: 'http://pub2' },
          { adminURL: 'http://noregion' },
        ],
      },
      { type: 'image', endpoints: [] },
    ]);
  });
});

describe.skipIf(!samplesAvailable())('parseTokenBody on recorded Keystone answers', () => {
  it('project token (samples/keystone/20): ids, names, roles in order, admin-project default', () => {
    const info = parseTokenBody(sampleBody('keystone/20-validate-project.json'), { renderCatalog: true });
    expect(info).toMatchObject({
      userId: '73eebbe1b2c44ed285d2adc862f290a3',
      userName: 'demo',
      userDomainId: 'default',
      projectId: '6b3aec62ae6a452888d9d770c535e596',
      projectName: 'demo',
      projectDomainName: 'Default',
      domainId: undefined,
      systemAll: false,
      roleNames: ['member', 'reader'],
      isAdminProject: true,
      catalogTypes: ['identity', 'echo'],
      accessRules: undefined,
    });
    expect(info.expiresAtMs).toBe(Date.parse('2026-11-22T23:44:53.000000Z'));
  });

  it('renders the catalog exactly as keystonemiddleware did (samples/ksm/04)', () => {
    const info = parseTokenBody(sampleBody('keystone/20-validate-project.json'), { renderCatalog: true });
    const ksm = JSON.parse(
      readFileSync(
        new URL('../../../../shared/samples/ksm/04-default-project-token.json', import.meta.url),
        'utf8',
      ),
    );
    expect(info.catalogHeader).toBe(ksm.analysis.injected['X-Service-Catalog']);
  });

  it('does not render the catalog unless asked', () => {
    const info = parseTokenBody(sampleBody('keystone/20-validate-project.json'), { renderCatalog: false });
    expect(info.catalogHeader).toBeUndefined();
    expect(info.catalogTypes).toEqual(['identity', 'echo']);
  });

  it('admin project, system, domain and access-rule tokens', () => {
    expect(
      parseTokenBody(sampleBody('keystone/32-validate-admin-project.json'), { renderCatalog: false })
        .isAdminProject,
    ).toBe(true);
    expect(
      parseTokenBody(sampleBody('keystone/28-validate-system.json'), { renderCatalog: false }).systemAll,
    ).toBe(true);
    expect(
      parseTokenBody(sampleBody('keystone/26-validate-domain.json'), { renderCatalog: false }).domainName,
    ).toBeTruthy();
    const rules = parseTokenBody(sampleBody('keystone/31-validate-appcred-access-rules.json'), {
      renderCatalog: false,
    });
    expect(rules.accessRules).toEqual([{ service: 'echo', method: 'GET', path: '/allowed/**' }]);
    expect(rules.appCredId).toBe('5f61d99e19eb40c9ae259be3824959c4');
  });
});

describe('parseTokenBody rejects bodies it cannot trust', () => {
  it.each([
    [null],
    [{}],
    [{ token: {} }],
    [{ token: { user: { id: 'u' } } }],
    [{ token: { user: { id: 'u' }, expires_at: 'tomorrow' } }],
    [
      {
        token: {
          user: { id: 'u' },
          expires_at: '2030-01-01T00:00:00Z',
          application_credential: { access_rules: 'x' },
        },
      },
    ],
  ])('%j', (body) => {
    expect(() => parseTokenBody(body, { renderCatalog: false })).toThrow(MalformedTokenBodyError);
  });

  it('an explicit is_admin_project false is kept', () => {
    const info = parseTokenBody(
      { token: { user: { id: 'u' }, expires_at: '2030-01-01T00:00:00Z', is_admin_project: false } },
      { renderCatalog: false },
    );
    expect(info.isAdminProject).toBe(false);
  });

  it('estimates a size that grows with the content', () => {
    const small = parseTokenBody(
      { token: { user: { id: 'u' }, expires_at: '2030-01-01T00:00:00Z' } },
      { renderCatalog: false },
    );
    const big = parseTokenBody(
      { token: { user: { id: 'u'.repeat(1000) }, expires_at: '2030-01-01T00:00:00Z' } },
      { renderCatalog: false },
    );
    expect(big.sizeBytes - small.sizeBytes).toBeGreaterThanOrEqual(999);
  });
});

describe('memory sharing between identities', () => {
  it('identities of one project share their role list and catalog rendering', async () => {
    const { fixtureTokenBody } = await import('../../../src/testing.js');
    const catalog = [
      { type: 'compute', name: 'nova', endpoints: [{ interface: 'public', url: 'http://n', region: 'R' }] },
    ];
    const a = parseTokenBody(
      JSON.parse(JSON.stringify(fixtureTokenBody({ userId: 'a', roles: ['member'], catalog }))),
      {
        renderCatalog: true,
      },
    );
    const b = parseTokenBody(
      JSON.parse(JSON.stringify(fixtureTokenBody({ userId: 'b', roles: ['member'], catalog }))),
      {
        renderCatalog: true,
      },
    );
    expect(a.roleNames).toBe(b.roleNames);
    expect(a.catalogHeader).toBe(b.catalogHeader);
    expect(a.userId).not.toBe(b.userId);
    expect(Object.isFrozen(a) && Object.isFrozen(a.roleNames)).toBe(true);
  });
});
