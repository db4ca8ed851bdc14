import { describe, expect, it } from 'vitest';
import { resolveProxyConfig, substituteEnv } from '../../../src/config/proxy-config.js';
import { ConfigError, type ConfigIssue } from '../../../src/errors.js';

const minimal = {
  listen: { host: '0.0.0.0', port: 8774 },
  upstream: { url: 'http://127.0.0.1:18774' },
  admin_listen: { host: '127.0.0.1', port: 9180 },
  keystone_authtoken: {
    www_authenticate_uri: 'http://keystone.example:5000',
    auth_url: 'http://keystone.example:5000',
    auth_type: 'password',
    username: 'nova',
    password: '${NOVA_SERVICE_PASSWORD}',
    user_domain_name: 'Default',
    project_name: 'service',
    project_domain_name: 'Default',
    service_type: 'compute',
  },
};

function issues(raw: unknown, env: Record<string, string> = { NOVA_SERVICE_PASSWORD: 'pw' }): ConfigIssue[] {
  try {
    resolveProxyConfig(raw, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return [...(error as ConfigError).issues];
  }
  throw new Error('expected a ConfigError');
}

describe('proxy configuration', () => {
  it('accepts the minimal sidecar config of the issue and fills the defaults', () => {
    const config = resolveProxyConfig(minimal, { NOVA_SERVICE_PASSWORD: 's3cret' });
    expect(config.keystone_authtoken?.password).toBe('s3cret');
    expect(config.upstream).toMatchObject({ connect_timeout_seconds: 5, response_timeout_seconds: 120 });
    expect(config.log).toEqual({ level: 'info', format: 'json', flush_interval_seconds: 0.2 });
    expect(config.metrics).toEqual({ enabled: true, prefix: 'keystone_auth_proxy' });
    expect(config.shutdown.grace_period_seconds).toBe(25);
    expect(config.public_routes).toEqual([]);
    expect(config.forward_auth.enabled).toBe(false);
  });

  it('substitutes ${VAR} and ${VAR:-default} and reports unset variables with their path', () => {
    const found: ConfigIssue[] = [];
    expect(substituteEnv({ a: ['x-${A}-${B:-dflt}'], n: 3 }, { A: '1' }, found)).toEqual({
      a: ['x-1-dflt'],
      n: 3,
    });
    expect(found).toEqual([]);
    substituteEnv({ k: { p: '${MISSING}' } }, {}, found);
    expect(found).toEqual([{ path: 'k.p', message: 'environment variable MISSING is not set' }]);
  });

  it('an environment variable can fill a number', () => {
    const config = resolveProxyConfig(
      { ...minimal, listen: { host: '0.0.0.0', port: '${PORT}' } },
      {
        NOVA_SERVICE_PASSWORD: 'x',
        PORT: '8775',
      },
    );
    expect(config.listen?.port).toBe(8775);
  });

  it('reports every problem at once with its path, engine options included', () => {
    const found = issues({
      ...minimal,
      listen: { host: '0.0.0.0', port: 70000 },
      upstream: { url: 'http://u/?q=1', surprise: 1 },
      keystone_authtoken: { ...minimal.keystone_authtoken, token_cache_time: 'x', bogus_option: 1 },
      metrics: { prefix: 'bad-prefix' },
      log: { flush_interval_seconds: 11 },
    });
    expect(found.map((i) => i.path).sort()).toEqual([
      'keystone_authtoken.bogus_option',
      'keystone_authtoken.token_cache_time',
      'listen.port',
      'log.flush_interval_seconds',
      'metrics.prefix',
      'upstream.surprise',
      'upstream.url',
    ]);
  });

  it('listeners must not share a port', () => {
    expect(issues({ ...minimal, admin_listen: { host: '127.0.0.1', port: 8774 } })).toEqual([
      { path: 'admin_listen.port', message: 'must differ from listen.port' },
    ]);
  });

  it('listen and upstream go together; forward-auth alone is allowed', () => {
    const { listen: _l, upstream: _u, ...noProxy } = minimal;
    expect(issues(noProxy).map((i) => i.path)).toEqual(['listen']);
    expect(
      resolveProxyConfig({ ...noProxy, forward_auth: { enabled: true } }, { NOVA_SERVICE_PASSWORD: 'x' })
        .listen,
    ).toBe(undefined);
    expect(issues({ ...minimal, upstream: undefined }).map((i) => i.path)).toContain('upstream');
  });

  it('the error message lists every path', () => {
    try {
      resolveProxyConfig({ listen: 1 }, {});
    } catch (error) {
      expect((error as Error).message).toMatch(/listen/);
      expect((error as Error).message).toMatch(/keystone_authtoken/);
    }
  });
});

describe('README', () => {
  it('documents every key of the file with its default', async () => {
    const { readFileSync } = await import('node:fs');
    const { describeProxyConfig } = await import('../../../src/config/proxy-config.js');
    const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
    const rows = describeProxyConfig();
    expect(rows.length).toBeGreaterThan(15);
    for (const { path, default: value } of rows) {
      const escaped = path.replace(/[.[\]]/g, '\\$&');
      const row = readme.split('\n').find((line) => new RegExp(`^\\|\\s*\`${escaped}\`\\s*\\|`).test(line));
      expect(row, path).toBeDefined();
      if (value !== '') expect(row, path).toContain(`\`${value}\``);
    }
  });
});
