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
    const resolved = resolveAuthOptions({
      ...minimal,
      memcached_servers: '127.0.0.1:11211',
      memcache_pool_unused_timeout: 60,
    });
    expect(resolved.ignored).toEqual(['memcache_pool_unused_timeout']);
    expect(resolved.memcached?.servers).toEqual(['127.0.0.1:11211']);
  });

  it('memcached options: keystonemiddleware names, its spelling rules, every problem at once', () => {
    const mc = (extra: Record<string, unknown>) =>
      resolveAuthOptions({ ...minimal, memcached_servers: 'a:11211,[::1]:11212', ...extra }).memcached;
    expect(mc({})).toMatchObject({ servers: ['a:11211', '[::1]:11212'], securityStrategy: 'None' });
    expect(resolveAuthOptions({ ...minimal, memcache_servers: ['m:1'] }).memcached?.servers).toEqual(['m:1']);
    expect(resolveAuthOptions(minimal).memcached).toBeUndefined();
    const secret = { memcache_secret_key: 's' };
    expect(mc({ memcache_security_strategy: 'ENCRYPT', ...secret })?.securityStrategy).toBe('ENCRYPT');
    // keystonemiddleware encrypts only for the exact spelling; the text keys the derivation either way.
    expect(mc({ memcache_security_strategy: 'encrypt', ...secret })).toMatchObject({
      securityStrategy: 'MAC',
      securityStrategyText: 'encrypt',
    });
    expect(mc({ memcache_security_strategy: 'mac', ...secret })?.securityStrategy).toBe('MAC');
    const issues = (() => {
      try {
        resolveAuthOptions(
          {
            ...minimal,
            memcached_servers: 'unix:/run/memcached.sock, ok:1, bare-host, inet6:[::1]:11211',
            memcache_security_strategy: 'AES',
            memcache_tls_enabled: true,
            memcache_sasl_enabled: 'yes',
            memcache_pool_socket_timeout: 0,
          },
          { pathPrefix: 'keystone_authtoken' },
        );
      } catch (error) {
        return (error as ConfigError).issues.map((i) => i.path).sort();
      }
      return [];
    })();
    expect(issues).toEqual([
      'keystone_authtoken.memcache_pool_socket_timeout',
      'keystone_authtoken.memcache_sasl_enabled',
      'keystone_authtoken.memcache_security_strategy',
      'keystone_authtoken.memcache_tls_enabled',
    ]);
    expect(() => mc({ memcache_security_strategy: 'MAC' })).toThrow(/memcache_secret_key/);
    expect(() => mc({ memcached_servers: 'a b:1' })).toThrow(/"a b:1" is not host:port/);
    expect(() => mc({ memcached_servers: 'unix:/run/memcached.sock' })).toThrow(/is not host:port/);
    expect(mc({ memcached_servers: 'bare-host, inet6:[::1]:11211' })?.servers).toEqual([
      'bare-host',
      'inet6:[::1]:11211',
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
    expect(names).toContain('memcached_servers');
    expect(names).not.toContain('memcache_pool_unused_timeout');
  });
});

describe('README', () => {
  it('documents every option with its default', async () => {
    const { readFileSync } = await import('node:fs');
    const whole = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
    // The options table, not the Filters section's comparison tables (whose rows also start with option names).
    const readme = whole.slice(whole.indexOf('\n## Options\n'));
    for (const { name, default: value, description } of describeAuthOptions()) {
      const row = readme.split('\n').find((line) => new RegExp(`^\\|\\s*\`${name}\`\\s*\\|`).test(line));
      expect(row, name).toBeDefined();
      if (value !== '') expect(row, name).toContain(`\`${value}\``);
      // The table is generated (npm run docs:options): a changed description must be regenerated too.
      expect(row, name).toContain(description);
    }
  });
});
