/** The ext_oauth2_auth section: keystonemiddleware's names and defaults, our rules, every problem with its path. */
import { describe, expect, it } from 'vitest';
import { resolveAuthOptions } from '../../../src/config/auth-options.js';
import { resolveExtOAuth2Options } from '../../../src/config/ext-oauth2-options.js';
import { ConfigError } from '../../../src/errors.js';

const MINIMAL = {
  introspect_endpoint: 'https://as.example/introspect',
  audience: 'https://as.example/token',
  client_id: 'proxy',
  client_secret: 's',
  mapping_user_domain_id: 'user_domain.id',
  mapping_user_domain_name: 'user_domain.name',
  mapping_roles: 'roles',
};

describe('ext_oauth2_auth', () => {
  it("keystonemiddleware's defaults: client_secret_basic, client_id/username, 300 s cache, negative cache as long", () => {
    const { options } = resolveExtOAuth2Options(MINIMAL);
    expect(options).toMatchObject({
      authMethod: 'client_secret_basic',
      tokenCacheTimeSeconds: 300,
      negativeCacheSeconds: 300,
      thumbprintVerify: false,
      jwtBearerTimeOutSeconds: 3600,
      challenge: 'keystonemiddleware',
      localJwt: undefined,
      mapping: { userId: ['client_id'], userName: ['username'], userDomainId: ['user_domain', 'id'] },
    });
  });

  it('oslo spellings: booleans and numbers as strings', () => {
    const { options } = resolveExtOAuth2Options({
      ...MINIMAL,
      thumbprint_verify: 'True',
      token_cache_time: '60',
    });
    expect(options?.thumbprintVerify).toBe(true);
    expect(options?.tokenCacheTimeSeconds).toBe(60);
  });

  it('every problem at once, with its path', () => {
    const { issues } = resolveExtOAuth2Options({
      audience: '',
      auth_method: 'magic',
      client_id: 'p',
      mapping_roles: 'a..b',
      tenant: 'x',
    });
    const paths = issues.map((issue) => issue.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'ext_oauth2_auth.introspect_endpoint',
        'ext_oauth2_auth.audience',
        'ext_oauth2_auth.auth_method',
        'ext_oauth2_auth.mapping_roles',
        'ext_oauth2_auth.mapping_user_domain_id',
        'ext_oauth2_auth.tenant',
      ]),
    );
  });

  it.each([
    ['client_secret_post', {}, 'client_secret'],
    ['client_secret_jwt', {}, 'client_secret'],
    ['private_key_jwt', {}, 'jwt_key_file'],
    ['tls_client_auth', {}, 'certfile'],
    ['client_secret_basic', { jwks_uri: 'https://as.example/jwks' }, 'jwt_issuer'],
  ])('%s needs %s', (method, extra, path) => {
    const { client_secret: _s, ...noSecret } = MINIMAL;
    const { issues } = resolveExtOAuth2Options({
      ...noSecret,
      auth_method: method,
      ...extra,
      ...(method === 'client_secret_basic' ? { client_secret: 's' } : {}),
    });
    expect(issues.map((issue) => issue.path)).toContain(`ext_oauth2_auth.${path}`);
  });

  it('the engine options of the external filter: no Keystone credentials needed, cache from the section', () => {
    const options = resolveAuthOptions({
      filter: 'external_oauth2_token',
      ext_oauth2_auth: { ...MINIMAL, token_cache_time: 42, memcached_servers: 'm:11211' },
    });
    expect(options).toMatchObject({
      filter: 'external_oauth2_token',
      tokenCacheTimeSeconds: 42,
      negativeCacheSeconds: 42,
      wwwAuthenticateUri: 'https://as.example/token',
      revocationPollIntervalSeconds: 0,
      memcached: { servers: ['m:11211'], securityStrategy: 'None' },
      delayAuthDecision: false,
      includeServiceCatalog: false,
      ignored: [],
    });
  });

  it('memcache options are checked as in keystone_authtoken, under the section', () => {
    expect(() =>
      resolveAuthOptions({
        filter: 'external_oauth2_token',
        ext_oauth2_auth: { ...MINIMAL, memcached_servers: 'm:11211', memcache_security_strategy: 'ENCRYPT' },
      }),
    ).toThrow(
      /ext_oauth2_auth\.memcache_secret_key: is required when memcache_security_strategy is MAC or ENCRYPT/,
    );
  });

  it('the filter without its section is a ConfigError naming ext_oauth2_auth', () => {
    expect(() => resolveAuthOptions({ filter: 'external_oauth2_token' })).toThrow(ConfigError);
    try {
      resolveAuthOptions({ filter: 'external_oauth2_token' });
    } catch (error) {
      expect((error as ConfigError).issues).toEqual([
        { path: 'ext_oauth2_auth', message: 'is required when filter is external_oauth2_token' },
      ]);
    }
  });
});
