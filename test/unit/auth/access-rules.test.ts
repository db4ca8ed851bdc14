import { describe, expect, it } from 'vitest';
import { accessRulePathMatches, checkAccessRules } from '../../../src/auth/access-rules.js';

describe('access-rule path grammar (anchors.md §1.11 vectors)', () => {
  it.each([
    ['/v2/servers/123', '/v2/servers/{server_id}', true],
    ['/v2/servers/123/', '/v2/servers/*/', true],
    ['/v2/servers/123/456', '/v2/servers/**', true],
    ['/v2/servers', '**', true],
    ['/v2/servers/123/456', '/v2/*/*/*', true],
    ['/v2/servers/123/', '/v2/servers/{server_id}', false],
    ['/v2/servers//', '/v2/servers/{server_id}', false],
    ['/v2/servers', 'v2/servers', false],
    ['/v2/servers/123/456/789', '/v2/*/*/*', false],
  ])('%s against %s → %s', (path, pattern, expected) => {
    expect(accessRulePathMatches(path, pattern)).toBe(expected);
  });

  it('treats regex metacharacters in a rule as literals', () => {
    expect(accessRulePathMatches('/v2/serversXjson', '/v2/servers.json')).toBe(false);
    expect(accessRulePathMatches('/v2/servers.json', '/v2/servers.json')).toBe(true);
    expect(accessRulePathMatches('/a+b', '/a+b')).toBe(true);
  });
});

const catalogTypes = ['identity', 'compute'];
const rules = [
  { service: 'compute', method: 'GET', path: '/v2.1/servers/**' },
  { service: 'compute', method: 'POST', path: '/v2.1/servers' },
];
const token = { accessRules: rules, catalogTypes };
const req = (method: string, path: string, hasServiceToken = false) => ({ method, path, hasServiceToken });

describe('access-rule enforcement order', () => {
  it('a token without access rules is unrestricted', () => {
    expect(checkAccessRules(req('DELETE', '/x'), { accessRules: undefined, catalogTypes }, 'compute')).toBe(
      'unrestricted',
    );
  });

  it('allows a matching method and path, denies others', () => {
    expect(checkAccessRules(req('GET', '/v2.1/servers/abc'), token, 'compute')).toBe('allowed');
    expect(checkAccessRules(req('POST', '/v2.1/servers'), token, 'compute')).toBe('allowed');
    expect(checkAccessRules(req('DELETE', '/v2.1/servers/abc'), token, 'compute')).toBe('denied');
    expect(checkAccessRules(req('GET', '/v2.1/flavors'), token, 'compute')).toBe('denied');
  });

  it('method comparison is exact (case-sensitive), as in keystonemiddleware', () => {
    expect(checkAccessRules(req('get', '/v2.1/servers/abc'), token, 'compute')).toBe('denied');
  });

  it('denies when service_type is not configured', () => {
    expect(checkAccessRules(req('GET', '/v2.1/servers/abc'), token, undefined)).toBe('no_service_type');
  });

  it('denies when the service type is not in the token catalog', () => {
    expect(checkAccessRules(req('GET', '/v2.1/servers/abc'), token, 'image')).toBe('service_not_in_catalog');
    expect(
      checkAccessRules(
        req('GET', '/v2.1/servers/abc'),
        { accessRules: rules, catalogTypes: undefined },
        'compute',
      ),
    ).toBe('service_not_in_catalog');
  });

  it('an empty rule list denies everything', () => {
    expect(checkAccessRules(req('GET', '/'), { accessRules: [], catalogTypes }, 'compute')).toBe('denied');
  });

  it('identity may always validate the token itself', () => {
    expect(
      checkAccessRules(req('GET', '/v3/auth/tokens'), { accessRules: [], catalogTypes: [] }, 'identity'),
    ).toBe('allowed');
  });

  it('any X-Service-Token skips the rules (after the catalog check)', () => {
    expect(checkAccessRules(req('DELETE', '/v2.1/servers/abc', true), token, 'compute')).toBe('allowed');
    expect(checkAccessRules(req('DELETE', '/v2.1/servers/abc', true), token, 'image')).toBe(
      'service_not_in_catalog',
    );
  });

  it('matches the decoded path, as a WSGI app sees it', () => {
    expect(checkAccessRules(req('GET', '/v2.1/servers/a%20b'), token, 'compute')).toBe('allowed');
    expect(checkAccessRules(req('POST', '/v2.1/%73ervers'), token, 'compute')).toBe('allowed');
  });

  it('refuses dot segments and undecodable paths instead of matching them', () => {
    expect(checkAccessRules(req('GET', '/v2.1/servers/../flavors'), token, 'compute')).toBe('bad_path');
    expect(checkAccessRules(req('GET', '/v2.1/servers/%2e%2e/flavors'), token, 'compute')).toBe('bad_path');
    expect(checkAccessRules(req('GET', '/v2.1/servers/%E0%A4%A'), token, 'compute')).toBe('bad_path');
  });
});
