/**
 * `npm run demo -- --nova`: the real thing on this machine, on loopback. Starts the local Keystone
 * (scripts/keystone-local.sh), Debian's Nova API in trusted-auth mode (scripts/nova-local.sh) and the real CLI in
 * front of it, makes the proxy Keystone's `compute` endpoint, and runs a few `openstack` commands through it.
 * Stops what it started and removes the catalog entry at the end. Needs Debian's packages:
 * `bash scripts/nova-local.sh install` (root or sudo).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli.js');
const KEYSTONE_SCRIPT = join(ROOT, 'scripts', 'keystone-local.sh');
const NOVA_SCRIPT = join(ROOT, 'scripts', 'nova-local.sh');
const OPENSTACK = '/usr/bin/openstack';
/** The proxy's port; the Nova instances use NOVA_PORT/NOVA_REFERENCE_PORT (scripts/nova-local.sh). */
const PROXY_PORT = Number(process.env.NOVA_DEMO_PROXY_PORT ?? 8874);
const ADMIN_PORT = Number(process.env.NOVA_DEMO_ADMIN_PORT ?? 8875);
/** Debian 12's python-novaclient 18.1 speaks up to 2.92 (Nova 26 itself up to 2.93). */
const MICROVERSION = '2.92';

interface Fixtures {
  region: string;
  admin: { user: string; password: string; project: string };
  service: { user: string; password: string; project: string };
  demo: { user: string; password: string; project: string };
}

function print(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** Runs a helper script with the caller's environment; its own messages go to the terminal. */
function script(path: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const result = spawnSync('bash', [path, ...args], { cwd: ROOT, env, encoding: 'utf8', stdio: 'pipe' });
  const messages = result.stderr.trimEnd();
  if (messages) print(messages.replace(/^/gm, '  | '));
  if (result.status !== 0) throw new Error(`bash ${path} ${args.join(' ')} exited ${result.status}`);
  return result.stdout;
}

/** `export NAME=value` lines, as the scripts' `env` commands print them. */
function exports(text: string): Record<string, string> {
  return Object.fromEntries([...text.matchAll(/^export (\w+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
}

function answers(path: string, args: string[], env: NodeJS.ProcessEnv): boolean {
  return spawnSync('bash', [path, ...args], { cwd: ROOT, env, stdio: 'ignore' }).status === 0;
}

function proxyConfig(novaUrl: string, keystoneUrl: string, f: Fixtures): string {
  return `# written by demo/nova.ts
listen: { host: 127.0.0.1, port: ${PROXY_PORT} }
upstream: { url: "${novaUrl}" }
admin_listen: { host: 127.0.0.1, port: ${ADMIN_PORT} }
# Nova's version documents are public, as in Nova's own paste pipeline.
public_routes:
  - { methods: [GET, HEAD], path: / }
  - { methods: [GET, HEAD], path: /v2.1 }
  - { methods: [GET, HEAD], path: /v2.1/ }
keystone_authtoken:
  www_authenticate_uri: "${keystoneUrl}"
  auth_url: "${keystoneUrl}"
  auth_type: password
  username: ${f.service.user}
  password: "\${NOVA_DEMO_PROXY_PASSWORD}"
  user_domain_id: default
  project_name: ${f.service.project}
  project_domain_id: default
  service_type: compute
`;
}

async function waitReady(child: ChildProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null)
      throw new Error(`the proxy exited (${child.exitCode}); is port ${PROXY_PORT} in use?`);
    const ok = await fetch(`http://127.0.0.1:${ADMIN_PORT}/readyz`).then(
      (res) => res.ok,
      () => false,
    );
    if (ok) return;
    await delay(100);
  }
  throw new Error('the proxy was not ready within 20 s');
}

/** One `openstack` command as a user with a password: the client finds Nova in Keystone's catalog. */
function openstack(
  keystoneUrl: string,
  f: Fixtures,
  who: 'admin' | 'demo',
  args: string[],
  home: string,
): boolean {
  const user = f[who];
  print();
  print(`$ openstack --os-compute-api-version ${MICROVERSION} ${args.join(' ')}    # as ${user.user}`);
  const auth = [
    ...['--os-auth-url', keystoneUrl, '--os-identity-api-version', '3', '--os-region-name', f.region],
    ...['--os-username', user.user, '--os-password', user.password, '--os-user-domain-id', 'default'],
    ...['--os-project-name', user.project, '--os-project-domain-id', 'default'],
    ...['--os-compute-api-version', MICROVERSION],
  ];
  // A clean environment: no OS_* variable, clouds.yaml or pyenv python leaks in.
  const result = spawnSync(OPENSTACK, [...auth, ...args], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, LANG: 'C.UTF-8' },
    encoding: 'utf8',
  });
  process.stdout.write(result.stdout);
  process.stdout.write(result.stderr);
  return result.status === 0;
}

export async function runNovaDemo(): Promise<boolean> {
  const keystoneUp = answers(KEYSTONE_SCRIPT, ['status'], process.env);
  print('Starting the local Keystone: bash scripts/keystone-local.sh start');
  script(KEYSTONE_SCRIPT, ['start']);
  const env = { ...process.env, ...exports(script(KEYSTONE_SCRIPT, ['env'])) };
  const f = JSON.parse(readFileSync(env.KEYSTONE_FIXTURES as string, 'utf8')) as Fixtures;
  const keystoneUrl = env.KEYSTONE_URL as string;
  const novaUp = answers(NOVA_SCRIPT, ['status'], env);
  const work = mkdtempSync(join(tmpdir(), 'kap-nova-demo-'));
  let child: ChildProcess | undefined;
  let registered = false;
  let ok = true;
  try {
    print(
      'Starting Nova (trusted-auth, and the keystonemiddleware reference): bash scripts/nova-local.sh start',
    );
    script(NOVA_SCRIPT, ['start'], env);
    const nova = exports(script(NOVA_SCRIPT, ['env'], env));
    const configFile = join(work, 'proxy.yaml');
    writeFileSync(configFile, proxyConfig(nova.NOVA_URL as string, keystoneUrl, f), { mode: 0o600 });
    print(
      `Starting the proxy: node dist/cli.js --config ${configFile}  (http://127.0.0.1:${PROXY_PORT} -> ${nova.NOVA_URL})`,
    );
    child = spawn(process.execPath, [CLI, '--config', configFile], {
      cwd: ROOT,
      env: { ...env, NOVA_DEMO_PROXY_PASSWORD: f.service.password },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await waitReady(child);
    const computeUrl = `http://127.0.0.1:${PROXY_PORT}/v2.1`;
    print(`Keystone's compute endpoint -> the proxy: bash scripts/nova-local.sh register ${computeUrl}`);
    script(NOVA_SCRIPT, ['register', computeUrl], env);
    registered = true;

    const flavor = `kap-demo-${Date.now().toString(36)}`;
    const step = (who: 'admin' | 'demo', args: string[]): void => {
      ok = openstack(keystoneUrl, f, who, args, work) && ok;
    };
    step('admin', ['flavor', 'create', '--ram', '256', '--disk', '1', '--vcpus', '1', flavor]);
    step('demo', ['flavor', 'list']);
    step('demo', ['limits', 'show', '--absolute']);
    // --compute: without it the client also asks for network zones, and this catalog has no network service.
    step('admin', ['availability', 'zone', 'list', '--compute']);
    // Not `server list`: the client also looks for an image endpoint, and this catalog has only compute.
    step('demo', ['keypair', 'list']);
    // Nova's policy, fed by the identity headers the proxy set: a member may not create flavors.
    const refused = !openstack(
      keystoneUrl,
      f,
      'demo',
      ['flavor', 'create', '--ram', '64', `${flavor}-x`],
      work,
    );
    print(
      refused
        ? '  OK: refused by Nova (403), the user is a member'
        : '  UNEXPECTED: a member created a flavor',
    );
    ok &&= refused;
    step('admin', ['flavor', 'delete', flavor]);
    const res = await fetch(`${computeUrl}/flavors`);
    print();
    print(`$ curl ${computeUrl}/flavors    # no token`);
    print(`${res.status} ${await res.text()}`);
    ok &&= res.status === 401;
  } catch (error) {
    print(`demo failed: ${(error as Error).message}`);
    ok = false;
  } finally {
    if (registered) script(NOVA_SCRIPT, ['unregister'], env);
    if (child !== undefined && child.exitCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    }
    if (!novaUp) script(NOVA_SCRIPT, ['stop'], env);
    if (!keystoneUp) script(KEYSTONE_SCRIPT, ['stop'], env);
    rmSync(work, { recursive: true, force: true });
  }
  print();
  print(
    ok
      ? 'Nova demo finished: every step behaved as expected.'
      : 'Nova demo finished with UNEXPECTED results.',
  );
  return ok;
}
