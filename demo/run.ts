/**
 * `npm run demo`: the sidecar end to end on this machine, on loopback only. Starts a Keystone emulator (test
 * code, never for production), an echo upstream and the real CLI (`node dist/cli.js --config
 * config/demo.yaml`), walks through what the proxy does to requests, prints curl commands to try, and keeps
 * running until Ctrl-C. `--once`, or no terminal on stdin, stops after the walk-through. Exit code 1 if any
 * step was unexpected. `--nova`: the real Keystone and Nova with the `openstack` client instead (demo/nova.ts).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { loadProxyConfig } from '../src/config/proxy-config.js';
import { IDENTITY_HEADERS } from '../src/identity/headers.js';
import { type EchoBody, echo } from '../test/helpers/echo-app.js';
import { listen } from '../test/helpers/http.js';
import { fixtures, startKeystoneEmulator } from '../test/helpers/keystone-emulator.js';
import { runNovaDemo } from './nova.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli.js');
const CONFIG = join(ROOT, 'config', 'demo.yaml');
/** Any path that is not a public route in config/demo.yaml. */
const PROTECTED_PATH = '/v1/servers';
const STARTUP_TIMEOUT_MS = 20_000;

interface Demo {
  readonly proxyUrl: string;
  readonly adminUrl: string;
  readonly forwardAuthUrl: string;
  readonly metricsPrefix: string;
  readonly token: string;
  /** Requests the echo upstream has received so far. */
  readonly upstreamHits: () => number;
  readonly proxyLog: ProxyLog;
}

type HeaderMap = Record<string, string | string[] | undefined>;

// ------------------------------------------------------------
// Output

const colour = process.stdout.isTTY === true && process.env.NO_COLOR === undefined;
const bold = (text: string): string => (colour ? `\u001b[1m${text}\u001b[0m` : text);

function print(line = ''): void {
  process.stdout.write(`${line}\n`);
}

function heading(title: string): void {
  print();
  print(bold(`── ${title} ${'─'.repeat(Math.max(3, 100 - title.length))}`));
}

function showRequest(method: string, url: string, headers: Record<string, string> = {}): void {
  print(`→ ${method} ${url}`);
  for (const [name, value] of Object.entries(headers)) print(`    ${name}: ${shorten(value, 24)}`);
}

function showStatus(res: Response): void {
  print(`← ${res.status} ${res.statusText}`);
}

function shorten(value: string, max = 90): string {
  return value.length <= max ? value : `${value.slice(0, max)}… (${value.length} chars)`;
}

function verdict(ok: boolean, expectation: string): boolean {
  print(ok ? `  OK: ${expectation}` : `  UNEXPECTED: wanted ${expectation}`);
  return ok;
}

/** Display order: statuses, the user's identity and scope, roles, service token, legacy copies, catalog. */
const LEGACY = new Set(['X-Role', 'X-User', 'X-Tenant-Id', 'X-Tenant-Name', 'X-Tenant']);
const SHOWN_ORDER = [...IDENTITY_HEADERS].sort((a, b) => rank(a) - rank(b));
function rank(name: string): number {
  if (name.endsWith('Identity-Status')) return 0;
  if (name === 'X-Service-Catalog') return 5;
  if (LEGACY.has(name)) return 4;
  if (name.startsWith('X-Service-')) return 3;
  if (name.endsWith('-Roles') || name === 'X-Is-Admin-Project' || name === 'OpenStack-System-Scope') return 2;
  return 1;
}

/** The identity headers present in `headers` (lower-case names), under their canonical names. */
function identityLines(headers: HeaderMap): string[] {
  return SHOWN_ORDER.flatMap((name) => {
    const value = headers[name.toLowerCase()];
    return value === undefined ? [] : [`${name}: ${shorten(String(value))}`];
  });
}

// ------------------------------------------------------------
// The proxy as a child process

interface ProxyLog {
  /** true: print lines as they come (start-up, interactive use); false: keep them for flush(). */
  setLive(live: boolean): void;
  /** Waits (at most timeoutMs) for a kept line matching `until`, then prints and forgets the kept lines. */
  flush(until?: RegExp, timeoutMs?: number): Promise<void>;
}

/** Keeps the proxy's log apart from the walk-through, so each step shows the log lines it caused. */
function followProxyLog(child: ChildProcess): ProxyLog {
  let live = true;
  const kept: string[] = [];
  let onKept: (() => void) | undefined;
  const onLine = (line: string): void => {
    if (live) {
      print(`  proxy | ${line}`);
      return;
    }
    kept.push(line);
    onKept?.();
  };
  for (const stream of [child.stdout, child.stderr]) {
    if (stream !== null) createInterface({ input: stream }).on('line', onLine);
  }
  return {
    setLive(value) {
      live = value;
    },
    async flush(until, timeoutMs = 2_000) {
      if (until !== undefined) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            onKept = undefined;
            resolve();
          };
          const timer = setTimeout(done, timeoutMs);
          onKept = () => {
            if (kept.some((line) => until.test(line))) done();
          };
          onKept();
        });
      }
      for (const line of kept.splice(0)) print(`  proxy log | ${line}`);
    },
  };
}

/** A fresh clone has no dist/: build it once, as `npm run build` would. */
function ensureBuilt(): void {
  if (existsSync(CLI)) return;
  print('dist/cli.js is missing: running `npm run build` first.');
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const result = spawnSync(npm, ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  if (result.status !== 0) throw new Error('npm run build failed');
}

function spawnProxy(env: Record<string, string>): ChildProcess {
  print('Starting the proxy: node dist/cli.js --config config/demo.yaml');
  const child = spawn(process.execPath, [CLI, '--config', CONFIG], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: Ctrl-C reaches the demo only, which then stops the proxy with SIGTERM.
    detached: true,
  });
  // Detached, it would outlive a demo that crashed: never leave it behind.
  process.once('exit', () => {
    if (!hasExited(child)) child.kill('SIGTERM');
  });
  return child;
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function waitReady(adminUrl: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (hasExited(child)) {
      throw new Error(
        `the proxy exited (${child.exitCode ?? child.signalCode}) before it was ready; ` +
          'are the listen and admin_listen ports of config/demo.yaml in use?',
      );
    }
    try {
      const res = await fetch(`${adminUrl}/readyz`);
      await res.body?.cancel();
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    await delay(100);
  }
  throw new Error(`the proxy was not ready within ${STARTUP_TIMEOUT_MS / 1000} s`);
}

/** SIGTERM, then SIGKILL if it has not drained in 10 s. Resolves with its exit code (null if killed). */
async function stopProxy(child: ChildProcess): Promise<number | null> {
  if (!hasExited(child)) {
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(force);
  }
  return child.exitCode;
}

/** Resolves on the first SIGINT/SIGTERM; later ones are ignored (tsx relays Ctrl-C a second time). */
function stopSignal(): Promise<void> {
  return new Promise((resolve) => {
    const stop = (): void => resolve();
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

// ------------------------------------------------------------
// The walk-through

async function noToken(demo: Demo): Promise<boolean> {
  heading('(a) No token: the proxy answers 401 itself');
  const url = `${demo.proxyUrl}${PROTECTED_PATH}`;
  const before = demo.upstreamHits();
  showRequest('GET', url);
  const res = await fetch(url);
  const body = await res.text();
  const challenge = res.headers.get('www-authenticate') ?? '(none)';
  showStatus(res);
  print(`    WWW-Authenticate: ${challenge}`);
  print(`    body: ${body.trim()}`);
  const reached = demo.upstreamHits() - before;
  print(`    the echo upstream received ${reached} request(s)`);
  await demo.proxyLog.flush(/ request /);
  return verdict(
    res.status === 401 && challenge.startsWith('Keystone uri=') && reached === 0,
    '401 with WWW-Authenticate: Keystone uri=…, and nothing forwarded',
  );
}

async function validToken(demo: Demo): Promise<boolean> {
  heading('(b) A valid token: forwarded with the identity headers set');
  const url = `${demo.proxyUrl}${PROTECTED_PATH}`;
  const headers = { 'X-Auth-Token': demo.token };
  showRequest('GET', url, headers);
  const res = await fetch(url, { headers });
  const seen = ((await res.json()) as EchoBody).headers;
  showStatus(res);
  print('    identity headers the upstream saw:');
  for (const line of identityLines(seen)) print(`    ${line}`);
  await demo.proxyLog.flush(/ request /);
  return verdict(
    res.status === 200 && seen['x-identity-status'] === 'Confirmed' && seen['x-roles'] === 'member,reader',
    '200 with X-Identity-Status: Confirmed and X-Roles: member,reader',
  );
}

async function spoofedHeaders(demo: Demo): Promise<boolean> {
  heading('(c) The same token plus spoofed identity headers: stripped, then set from the token');
  const url = `${demo.proxyUrl}${PROTECTED_PATH}`;
  const headers = { 'X-Auth-Token': demo.token, 'X-Roles': 'admin', X_Project_Id: 'evil' };
  showRequest('GET', url, headers);
  const res = await fetch(url, { headers });
  const body = (await res.json()) as EchoBody;
  showStatus(res);
  const underscored = body.rawHeaders.filter((_, i) => i % 2 === 0 && body.rawHeaders[i]?.includes('_'));
  const values = body.rawHeaders.filter((_, i) => i % 2 === 1);
  print('    what the upstream saw:');
  print(`    X-Roles: ${body.headers['x-roles']}   (client sent "admin": overwritten)`);
  print(`    X-Project-Id: ${body.headers['x-project-id']}   (the token's project)`);
  print(
    `    X_Project_Id: ${underscored.length === 0 ? '(not received: stripped)' : underscored.join(', ')}`,
  );
  const clean =
    res.status === 200 &&
    underscored.length === 0 &&
    !values.includes('evil') &&
    body.headers['x-roles'] === 'member,reader';
  if (clean) print('    spoof stripped: no "admin" role and no "evil" project reached the upstream');
  await demo.proxyLog.flush(/ request /);
  return verdict(clean, 'the spoofed X-Roles and X_Project_Id kept from the upstream');
}

async function forwardAuth(demo: Demo): Promise<boolean> {
  heading('(d) The forward-auth endpoint (nginx auth_request, Envoy ext_authz, Traefik ForwardAuth)');
  const headers = {
    'X-Auth-Token': demo.token,
    'X-Original-Method': 'GET',
    'X-Original-URI': PROTECTED_PATH,
  };
  showRequest('GET', demo.forwardAuthUrl, headers);
  const res = await fetch(demo.forwardAuthUrl, { headers });
  await res.body?.cancel();
  showStatus(res);
  print('    identity response headers (nginx copies them onto the request with auth_request_set):');
  for (const line of identityLines(Object.fromEntries(res.headers))) print(`    ${line}`);
  await demo.proxyLog.flush(/ request /);
  return verdict(
    res.status === 200 && res.headers.get('x-identity-status') === 'Confirmed',
    '200 with X-Identity-Status: Confirmed',
  );
}

async function metricsExcerpt(demo: Demo): Promise<boolean> {
  heading('(e) Metrics (excerpt)');
  const url = `${demo.adminUrl}/metrics`;
  showRequest('GET', url);
  const res = await fetch(url);
  const text = await res.text();
  showStatus(res);
  const wanted = [
    `${demo.metricsPrefix}_http_requests_total`,
    `${demo.metricsPrefix}_token_cache_requests_total`,
  ];
  const lines = text.split('\n').filter((line) => wanted.some((name) => line.startsWith(name)));
  for (const line of lines) print(`    ${line}`);
  await demo.proxyLog.flush();
  return verdict(
    res.status === 200 && wanted.every((name) => lines.some((line) => line.startsWith(name))),
    'request and token-cache counters',
  );
}

function printCurlCommands(demo: Demo, stillRunning: boolean): void {
  heading(stillRunning ? 'Try it yourself' : 'Try it yourself (run `npm run demo` without --once first)');
  const target = `${demo.proxyUrl}${PROTECTED_PATH}`;
  const auth = '-H "X-Auth-Token: $TOKEN"';
  const forwardAuth = demo.forwardAuthUrl;
  print(`export TOKEN='${demo.token}'`);
  print(`curl -i ${target}`);
  print(`curl -s ${auth} ${target}`);
  print(`curl -s ${auth} -H 'X-Roles: admin' -H 'X_Project_Id: evil' ${target}`);
  print(`curl -i ${auth} -H 'X-Original-URI: ${PROTECTED_PATH}' -H 'X-Original-Method: GET' ${forwardAuth}`);
  print(`curl -s ${demo.proxyUrl}/    # a public route: no token needed`);
  print(`curl -s ${demo.adminUrl}/metrics | grep '^${demo.metricsPrefix}_'`);
  print('(the token is valid for an hour)');
}

async function walkThrough(demo: Demo): Promise<boolean> {
  const steps = [noToken, validToken, spoofedHeaders, forwardAuth, metricsExcerpt];
  let allOk = true;
  for (const step of steps) allOk = (await step(demo)) && allOk;
  return allOk;
}

function banner(keystoneUrl: string): void {
  const rule = '='.repeat(100);
  print(rule);
  print(bold(` DEMO Keystone emulator listening on ${keystoneUrl}`));
  print(' An in-process stand-in for Keystone (test/helpers/keystone-emulator.ts), with well-known');
  print(' test users and passwords. For this demo and the tests only: NEVER use it, or config/demo.yaml,');
  print(' in production.');
  print(rule);
}

// ------------------------------------------------------------

async function main(argv: readonly string[]): Promise<number> {
  // The real Keystone and Nova instead of the emulator and the echo upstream (demo/nova.ts).
  if (argv.includes('--nova')) {
    ensureBuilt();
    return (await runNovaDemo()) ? 0 : 1;
  }
  const runOnce = argv.includes('--once') || process.stdin.isTTY !== true;
  ensureBuilt();
  const keystone = await startKeystoneEmulator();
  banner(keystone.url);
  let hits = 0;
  const upstream = await listen((req, res) => {
    hits++;
    echo(req, res);
  });
  print(`Echo upstream (answers with the request it received): ${upstream.url}`);
  const env = { DEMO_KEYSTONE_URL: keystone.url, DEMO_UPSTREAM_URL: upstream.url };
  const stopped = stopSignal();
  let child: ChildProcess | undefined;
  let ok = false;
  try {
    const config = loadProxyConfig(CONFIG, { ...process.env, ...env });
    const adminUrl = `http://${config.admin_listen.host}:${config.admin_listen.port}`;
    child = spawnProxy(env);
    const proxyLog = followProxyLog(child);
    await waitReady(adminUrl, child);
    proxyLog.setLive(false);
    const demo: Demo = {
      proxyUrl: `http://${config.listen?.host}:${config.listen?.port}`,
      adminUrl,
      forwardAuthUrl: `${adminUrl}${config.forward_auth.path}`,
      metricsPrefix: config.metrics.prefix,
      token: keystone.issueToken({
        user: fixtures.users.demo,
        scope: { project: fixtures.projects.demo },
        roles: [fixtures.roles.member, fixtures.roles.reader],
      }),
      upstreamHits: () => hits,
      proxyLog,
    };
    ok = await walkThrough(demo);
    printCurlCommands(demo, !runOnce);
    proxyLog.setLive(true);
    if (!runOnce) {
      print();
      print(bold('Running. Press Ctrl-C to stop.'));
      await Promise.race([stopped, hasExited(child) ? undefined : once(child, 'exit')]);
    }
  } catch (error) {
    print(`demo failed: ${(error as Error).message}`);
    ok = false;
  } finally {
    const code = child === undefined ? 0 : await stopProxy(child);
    if (code !== 0) print(`the proxy exited with ${code ?? child?.signalCode}`);
    await upstream.close();
    await keystone.close();
    ok &&= code === 0;
  }
  print();
  print(ok ? 'Demo finished: every step behaved as expected.' : 'Demo finished with UNEXPECTED results.');
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`demo: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
