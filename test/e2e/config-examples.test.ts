/**
 * The shipped examples must keep working as the schema and the header list move: every config/*.yaml loads,
 * the nginx example overwrites every identity header, and the demo runs end to end against the built CLI.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../../src/config/proxy-config.js';
import { ConfigError } from '../../src/errors.js';
import { IDENTITY_HEADERS } from '../../src/identity/headers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CONFIG_DIR = join(ROOT, 'config');
const YAML_FILES = readdirSync(CONFIG_DIR)
  .filter((name) => /\.ya?ml$/.test(name))
  .sort();
const DUMMY_URL = 'http://127.0.0.1:1';

/** Every `${VAR}` / `${VAR:-default}` the file mentions, set to a value its field accepts (*_URL: a URL). */
function dummyEnv(text: string): Record<string, string> {
  const names = [...text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}/g)].map((m) => m[1] as string);
  return Object.fromEntries(names.map((name) => [name, name.endsWith('_URL') ? DUMMY_URL : 'dummy-value']));
}

function load(name: string) {
  const file = join(CONFIG_DIR, name);
  return loadProxyConfig(file, dummyEnv(readFileSync(file, 'utf8')));
}

const EXPECTED: Record<string, { port: number; upstream: string; serviceType: string }> = {
  'keystone-auth-proxy.yaml': { port: 8774, upstream: 'http://127.0.0.1:18774', serviceType: 'compute' },
  'nova.yaml': { port: 8774, upstream: 'http://127.0.0.1:18774', serviceType: 'compute' },
  'glance.yaml': { port: 9292, upstream: 'http://127.0.0.1:19292', serviceType: 'image' },
  'demo.yaml': { port: 8780, upstream: DUMMY_URL, serviceType: 'echo' },
};

describe('config/*.yaml', () => {
  it('ships the default, Nova, Glance and demo configurations', () => {
    expect(YAML_FILES).toEqual(expect.arrayContaining(Object.keys(EXPECTED)));
  });

  it.each(YAML_FILES)('%s passes loadProxyConfig', (name) => {
    const config = load(name);
    const expected = EXPECTED[name];
    if (expected === undefined) return;
    expect(config.listen?.port).toBe(expected.port);
    expect(config.upstream?.url).toBe(expected.upstream);
    expect(config.keystone_authtoken?.service_type).toBe(expected.serviceType);
  });

  it('keeps the service password out of the default file', () => {
    const file = join(CONFIG_DIR, 'keystone-auth-proxy.yaml');
    expect(() => loadProxyConfig(file, {})).toThrow(ConfigError);
    expect(() => loadProxyConfig(file, {})).toThrow(/NOVA_SERVICE_PASSWORD/);
  });

  it('enables forward-auth in the demo config, on loopback listeners', () => {
    const config = load('demo.yaml');
    expect(config.forward_auth.enabled).toBe(true);
    expect(config.listen?.host).toBe('127.0.0.1');
    expect(config.admin_listen).toEqual({ host: '127.0.0.1', port: 9181 });
  });
});

describe('config/nginx-auth-request.conf', () => {
  const text = readFileSync(join(CONFIG_DIR, 'nginx-auth-request.conf'), 'utf8');
  const variable = (header: string): string => `$ks_${header.toLowerCase().replaceAll('-', '_')}`;
  const literal = (s: string): string => s.replace(/[$]/g, '\\$');

  // A header left out here would let a client-sent value through to the service.
  it.each([...IDENTITY_HEADERS])('captures and overwrites %s', (header) => {
    const upstreamVar = `$upstream_http_${header.toLowerCase().replaceAll('-', '_')}`;
    expect(text).toMatch(
      new RegExp(`auth_request_set\\s+${literal(variable(header))}\\s+${literal(upstreamVar)};`),
    );
    expect(text).toMatch(new RegExp(`proxy_set_header\\s+${header}\\s+${literal(variable(header))};`));
  });

  it('asks the forward-auth endpoint without the body, naming the original request', () => {
    expect(text).toContain('proxy_pass http://keystone_auth_proxy/auth;');
    expect(text).toContain('server 127.0.0.1:9180;');
    expect(text).toContain('proxy_pass_request_body off;');
    expect(text).toContain('proxy_set_header Content-Length "";');
    expect(text).toContain('proxy_set_header X-Original-URI $request_uri;');
    expect(text).toContain('proxy_set_header X-Original-Method $request_method;');
    expect(text).toMatch(/^\s*underscores_in_headers off;/m);
  });
});

describe('npm run demo -- --once', () => {
  beforeAll(() => {
    if (!existsSync(join(ROOT, 'dist', 'cli.js'))) {
      execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'ignore' });
    }
  }, 120_000);

  it('shows the 401, the confirmed identity, the stripped spoof and the metrics, and exits 0', async () => {
    const tsx = join(ROOT, 'node_modules', '.bin', 'tsx');
    const child = spawn(tsx, ['demo/run.ts', '--once'], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));

    expect(output, output).toContain('← 401 Unauthorized');
    expect(output).toMatch(/WWW-Authenticate: Keystone uri="http:\/\/127\.0\.0\.1:\d+"/);
    expect(output).toContain('← 200 OK');
    expect(output).toContain('X-Identity-Status: Confirmed');
    expect(output).toContain('X-Roles: member,reader   (client sent "admin": overwritten)');
    expect(output).toContain('X_Project_Id: (not received: stripped)');
    expect(output).toMatch(/^ {4}keystone_auth_proxy_http_requests_total\{.*\} \d+$/m);
    expect(output).toMatch(/^ {4}keystone_auth_proxy_token_cache_requests_total\{.*\} \d+$/m);
    expect(output).not.toContain('UNEXPECTED');
    expect(code, output).toBe(0);
  }, 60_000);
});
