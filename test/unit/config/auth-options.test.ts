import { describe, expect, it } from 'vitest';
import { describeAuthOptions, resolveAuthOptions } from '../../../src/config/auth-options.js';
import { ConfigError } from '../../../src/errors.js';

const minimal = {
  www_authenticate_uri: 'http://keystone:5000',
  auth_url: 'http://keystone:5000',
  username: 'nova',
  password: 'secret',
  user_domain_name: 'Default',
  project_name: 'service',
  project_domain_name: 'Default',
};

function issuesOf(input: unknown, context = {}): { path: string; message: string }[] {
  try {
    resolveAuthOptions(input, context);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).code).toBe('ERR_KSAUTH_CONFIG');
    return [...(error as ConfigError).issues];
  }
  throw new Error('expected a ConfigError');
}

describe('resolveAuthOptions', () => {
  it('applies keystonemiddleware defaults (and ours) to a minimal section', () => {
    const o = resolveAuthOptions(minimal);
    expect(o).toMatchObject({
      interface: 'internal',
      delayAuthDecision: false,
      includeServiceCatalog: true,
      serviceTokenRoles: ['service'],
      serviceTokenRolesRequired: true,
      tokenCacheTimeSeconds: 300,
      httpRequestMaxRetries: 3,
      enforceTokenBind: 'permissive',
      authType: 'password',
    });
  });

  it('accepts oslo-style strings as pasted from nova.conf', () => {
    const o = resolveAuthOptions({
      ...minimal,
      delay_auth_decision: 'True',
      include_service_catalog: 'false',
      service_token_roles: 'service, admin',
      token_cache_time: '600',
      interface: 'publicURL',
    });
    expect(o.delayAuthDecision).toBe(true);
    expect(o.includeServiceCatalog).toBe(false);
    expect(o.serviceTokenRoles).toEqual(['service', 'admin']);
    expect(o.tokenCacheTimeSeconds).toBe(600);
    expect(o.interface).toBe('public');
  });

  it('reports every problem at once, each with its path', () => {
    const issues = issuesOf(
      {
        ...minimal,
        auth_url: 'not a url',
        token_cache_time: 'five minutes',
        delay_auth_decision: 'maybe',
        interface: 'backdoor',
        memcache_servers_typo: 'x',
      },
      { pathPrefix: 'keystone_authtoken' },
    );
    expect(issues.map((i) => i.path).sort()).toEqual([
      'keystone_authtoken.auth_url',
      'keystone_authtoken.delay_auth_decision',
      'keystone_authtoken.interface',
      'keystone_authtoken.memcache_servers_typo',
      'keystone_authtoken.token_cache_time',
    ]);
    expect(issues.find((i) => i.path.endsWith('memcache_servers_typo'))?.message).toBe('unknown option');
  });

  it('lists all missing credentials together', () => {
    const issues = issuesOf({ www_authenticate_uri: 'http://k' });
    expect(issues.map((i) => i.path).sort()).toEqual(['auth_url', 'password', 'username']);
  });

  it('application credentials need a secret and an id or a name with its user', () => {
    expect(
      issuesOf({ auth_url: 'http://k', auth_type: 'v3applicationcredential' }).map((i) => i.path),
    ).toEqual(['application_credential_secret', 'application_credential_id']);
    expect(
      issuesOf({
        auth_url: 'http://k',
        auth_type: 'v3applicationcredential',
        application_credential_name: 'n',
        application_credential_secret: 's',
      }).map((i) => i.path),
    ).toEqual(['username']);
    expect(
      resolveAuthOptions({
        auth_url: 'http://k',
        auth_type: 'v3applicationcredential',
        application_credential_id: 'id',
        application_credential_secret: 's',
      }).authType,
    ).toBe('v3applicationcredential');
  });

  it('credentials are optional when a validator is injected', () => {
    expect(resolveAuthOptions({}, { credentialsOptional: true }).wwwAuthenticateUri).toBeUndefined();
  });

  it('accepts (and reports) keystonemiddleware options this engine ignores', () => {
    expect(resolveAuthOptions({ ...minimal, memcached_servers: '127.0.0.1:11211' }).ignored).toEqual([
      'memcached_servers',
    ]);
  });

  it('parses enforce_token_bind modes', () => {
    expect(resolveAuthOptions({ ...minimal, enforce_token_bind: 'Disabled' }).enforceTokenBind).toBe(
      'disabled',
    );
    expect(resolveAuthOptions({ ...minimal, enforce_token_bind: 'kerberos' }).enforceTokenBind).toEqual({
      name: 'kerberos',
    });
  });

  it('the error message lists every issue and no secret value', () => {
    try {
      resolveAuthOptions({ ...minimal, password: 42, token_cache_time: 'x' });
    } catch (error) {
      expect((error as Error).message).toMatch(/password/);
      expect((error as Error).message).toMatch(/token_cache_time/);
      expect((error as Error).message).not.toMatch(/42/);
    }
  });

  it('documents every option it accepts', () => {
    const docs = describeAuthOptions();
    const names = docs.map((d) => d.name);
    expect(names).toContain('token_cache_time');
    expect(docs.find((d) => d.name === 'token_cache_time')?.default).toBe('300');
    expect(names).not.toContain('memcached_servers');
  });
});

describe('README', () => {
  it('documents every option with its default', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
    for (const { name, default: value } of describeAuthOptions()) {
      const row = readme.split('\n').find((line) => new RegExp(`^\\|\\s*\`${name}\`\\s*\\|`).test(line));
      expect(row, name).toBeDefined();
      if (value !== '') expect(row, name).toContain(`\`${value}\``);
    }
  });
});
