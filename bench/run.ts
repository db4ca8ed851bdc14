/**
 * `npm run bench`: every scenario of issue 5 measured in one run on this machine, printed as one table with the
 * ratios, and written to bench/results/bench.json. Servers under test run as child processes; the driver only
 * starts them, runs wrk (one thread) and reads the results. The Keystone emulator lives in the driver, with
 * 20 ms of validation latency, and stands in for Keystone for our proxy and for keystonemiddleware alike.
 *   npx tsx bench/run.ts [--seconds 8] [--only name,name]
 * Needs wrk (apt-get install wrk); the keystonemiddleware rows need Debian's python3-keystonemiddleware + uwsgi.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../test/helpers/keystone-emulator.js';
import { emulatorProxyYaml } from './emulator-proxy.js';
import { treeCpuSeconds } from './process-cpu.js';
import { parseWrkOutput } from './wrk-output.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    only: { type: 'string' },
    // CI: one second of two scenarios, warm-up shortened, exit 1 unless both answered 2xx without errors.
    smoke: { type: 'boolean', default: false },
  },
});
const SMOKE = args.smoke === true;
const SECONDS = SMOKE ? 1 : Number(args.seconds);
const ONLY = SMOKE ? ['bare forwarder', 'cached token (workers 1)'] : args.only?.split(',');
const WARM_UP = SMOKE ? '-d1s' : '-d2s';
const CONNECTIONS = 32;
const KEYSTONE_LATENCY_MS = 20;
const KSM_ROUNDS = SMOKE ? 1 : 3;
/** Counts (not rates) reported beside the table: Keystone validations per token. */
const counts: Record<string, number> = {};
/** Every round's req/s of the interleaved scenarios. */
const roundFigures: Record<string, number[]> = {};
const exec = promisify(execFile);

interface WrkResult {
  rps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
  errors: number;
  /** CPU used by the server under test (its process and its children, e.g. workers), in cores. */
  cores: number;
}

/** Base URL → pid of the server process under test, to account for the CPU it used. */
const serverPids = new Map<string, number>();

/** `alsoCount`: more servers (base URLs) whose CPU belongs to this scenario, e.g. the app behind the sidecar. */
async function wrk(
  url: string,
  headers: Record<string, string> = {},
  script?: string,
  alsoCount: readonly string[] = [],
  connections = CONNECTIONS,
): Promise<WrkResult> {
  const head = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const lua = script === undefined ? [] : ['-s', script];
  await exec('wrk', ['-t1', `-c${connections}`, WARM_UP, ...head, ...lua, url]);
  const pids = [url, ...alsoCount].map((u) => serverPids.get(new URL(u).origin));
  const cpu = (): number =>
    pids.reduce<number>((sum, pid) => sum + (pid === undefined ? Number.NaN : treeCpuSeconds(pid)), 0);
  const cpuBefore = cpu();
  const { stdout } = await exec('wrk', [
    '-t1',
    `-c${connections}`,
    `-d${SECONDS}s`,
    '--latency',
    ...head,
    ...lua,
    url,
  ]);
  const cores = (cpu() - cpuBefore) / SECONDS;
  const { rps, p50ms, p99ms, non2xx, errors } = parseWrkOutput(stdout);
  return { rps, p50ms, p99ms, non2xx, errors, cores };
}

const children: ChildProcess[] = [];

/** Starts a child that prints its port (or a line with it) and resolves with the base URL. */
function startChild(
  command: string,
  argv: string[],
  match: RegExp,
  env: Record<string, string> = {},
): Promise<string> {
  const child = spawn(command, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      const found = match.exec(out);
      if (found?.[1]) {
        // Stop reading what it prints (access logs): the driver must not spend the cores it is measuring.
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        const url = found[1].startsWith('http') ? found[1] : `http://127.0.0.1:${found[1]}`;
        if (child.pid !== undefined) serverPids.set(new URL(url).origin, child.pid);
        resolve(url);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => {
      if (out.length < 100_000) out += chunk.toString();
    });
    child.once('exit', (code) => reject(new Error(`${command} exited ${code}: ${out.slice(-500)}`)));
  });
}

/**
 * BENCH_CLI_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof": node options for the Node servers under test
 * (the CLI and the middleware apps), to profile them under this load.
 */
function serverNodeArgs(): string[] {
  return process.env.BENCH_CLI_NODE_ARGS?.split(' ').filter((arg) => arg.length > 0) ?? [];
}

function cli(keystone: string, upstream: string, extra: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'kap-bench-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(
    file,
    emulatorProxyYaml(keystone, upstream, { listen: 0, admin: 0 }, `log: { level: info }\n${extra}`),
  );
  // log level info, as operators run it: one access-log line per request, in every proxy row alike.
  const nodeArgs = serverNodeArgs();
  return startChild(
    process.execPath,
    [...nodeArgs, 'dist/cli.js', '--config', file],
    /"listen":"(http:\/\/[^"]+)"/,
    {},
  );
}

function luaTokens(tokens: string[], cachedShare: number, cached: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'kap-lua-'));
  const file = join(dir, 'tokens.lua');
  writeFileSync(
    file,
    `tokens = {${tokens.map((t) => `"${t}"`).join(',')}}
i = 0
request = function()
  i = i + 1
  local token
  if math.random() < ${cachedShare} then token = "${cached}" else token = tokens[(i % #tokens) + 1] end
  return wrk.format("GET", "/v1", { ["X-Auth-Token"] = token })
end
`,
  );
  return file;
}

async function ksmRows(keystone: KeystoneEmulator, token: string): Promise<Record<string, WrkResult>> {
  const uwsgi = '/usr/bin/uwsgi';
  if (!existsSync(uwsgi) || !existsSync('/usr/lib/python3/dist-packages/keystonemiddleware')) return {};
  const dir = mkdtempSync(join(tmpdir(), 'kap-ksm-'));
  writeFileSync(
    join(dir, 'ksm.conf'),
    `[keystone_authtoken]
auth_type = password
auth_url = ${keystone.url}
username = proxy
password = proxy-secret
user_domain_name = Default
project_name = service
project_domain_name = Default
www_authenticate_uri = ${keystone.url}
`,
  );
  const app = `import json
BODY = json.dumps({'servers': [{'id': 'a1b2c3', 'name': 'vm-1', 'status': 'ACTIVE'}]}).encode()
def app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(BODY)))])
    return [BODY]
`;
  writeFileSync(join(dir, 'plain.py'), `${app}application = app\n`);
  writeFileSync(
    join(dir, 'ksm.py'),
    `${app}from keystonemiddleware.auth_token import AuthProtocol
application = AuthProtocol(app, {'oslo_config_project': 'bench', 'oslo_config_file': '${join(dir, 'ksm.conf')}'})
`,
  );
  const serve = async (file: string, port: number): Promise<string> => {
    const child = spawn(
      '/usr/bin/env',
      [
        '-i',
        'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
        `HOME=${dir}`,
        uwsgi,
        '--plugins',
        'python3,http',
        '--http',
        `127.0.0.1:${port}`,
        '--http-keepalive',
        '--processes',
        '2',
        '--lazy-apps',
        '--master',
        '--die-on-term',
        '--disable-logging',
        '--wsgi-file',
        file,
      ],
      { stdio: 'ignore' },
    );
    children.push(child);
    const url = `http://127.0.0.1:${port}`;
    // env -i execs uwsgi: same pid, whose children are the uwsgi workers.
    if (child.pid !== undefined) serverPids.set(url, child.pid);
    for (let i = 0; i < 100; i++) {
      try {
        await fetch(url, { headers: { 'x-auth-token': token } });
        return url;
      } catch {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    throw new Error(`uwsgi ${file} did not start`);
  };
  const plain = await serve(join(dir, 'plain.py'), 18_901);
  const ksm = await serve(join(dir, 'ksm.py'), 18_902);
  counts[
    'Keystone validations, one new token, 32 concurrent clients: keystonemiddleware (uwsgi, 2 workers)'
  ] = await validationsPerToken(keystone, ksm);
  // Warm keystonemiddleware's per-worker cache: each of its 2 workers validates the token once.
  for (let i = 0; i < 20; i++) await fetch(`${ksm}/v1`, { headers: { 'x-auth-token': token } });
  const ours = await cli(keystone.url, plain, '');
  // A sidecar shares its pod's cores with the app: one process leaves them to uwsgi's workers.
  const oursOne = await cli(keystone.url, plain, 'workers: 1');
  const h = { 'X-Auth-Token': token };
  // Interleaved rounds, so that drift of this shared machine hits every contender alike; the row is the round
  // with the median req/s, every round's figure is printed.
  return interleaved(
    [
      ['wsgi app alone (uwsgi, 2 workers)', () => wrk(`${plain}/v1`)],
      ['keystonemiddleware + wsgi app, cached token', () => wrk(`${ksm}/v1`, h)],
      [
        'our sidecar (workers: auto) + wsgi app, cached token',
        () => wrk(`${ours}/v1`, h, undefined, [plain]),
      ],
      [
        'our sidecar (workers: 1) + wsgi app, cached token',
        () => wrk(`${oursOne}/v1`, h, undefined, [plain]),
      ],
    ],
    KSM_ROUNDS,
  );
}

async function interleaved(
  scenarios: readonly [string, () => Promise<WrkResult>][],
  rounds: number,
): Promise<Record<string, WrkResult>> {
  const results = new Map<string, WrkResult[]>(scenarios.map(([name]) => [name, []]));
  for (let round = 0; round < rounds; round++) {
    for (const [name, work] of scenarios) {
      const result = await work();
      results.get(name)?.push(result);
      process.stderr.write(`round ${round + 1}: ${name}: ${Math.round(result.rps)} req/s\n`);
    }
  }
  const rows: Record<string, WrkResult> = {};
  for (const [name, list] of results) {
    const sorted = [...list].sort((a, b) => a.rps - b.rps);
    rows[name] = sorted[Math.floor((sorted.length - 1) / 2)] as WrkResult;
    roundFigures[name] = list.map((r) => Math.round(r.rps));
  }
  return rows;
}

/** Keystone validations caused by `concurrency` clients arriving at once with one token nobody has seen. */
async function validationsPerToken(
  keystone: KeystoneEmulator,
  base: string,
  concurrency = 32,
): Promise<number> {
  const { users, projects, roles } = fixtures;
  const token = keystone.issueToken({
    user: users.demo,
    scope: { project: projects.demo },
    roles: [roles.member],
  });
  // Slow enough that every client arrives while the first validation is out.
  keystone.setFault('validate', { kind: 'delay', ms: 200 });
  const before = keystone.count('validate');
  await Promise.all(
    Array.from({ length: concurrency }, () =>
      fetch(`${base}/v1`, { headers: { 'x-auth-token': token, connection: 'close' } }).then((r) =>
        r.arrayBuffer(),
      ),
    ),
  );
  keystone.setFault('validate', undefined);
  return keystone.count('validate') - before;
}

async function main(): Promise<void> {
  if (!existsSync(join(ROOT, 'dist', 'cli.js'))) throw new Error('run npm run build first');
  const keystone = await startKeystoneEmulator();
  const { users, projects, roles } = fixtures;
  const issue = () =>
    keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });
  const token = issue();
  const upstream = await startChild(process.execPath, ['bench/servers/upstream.mjs'], /^(\d+)/m);
  const bare = await cli(
    keystone.url,
    upstream,
    'workers: 1\npublic_routes: [{ methods: ["*"], path: "/**" }]',
  );
  const one = await cli(keystone.url, upstream, 'workers: 1');
  const two = await cli(keystone.url, upstream, 'workers: 2');
  // Every request an L1 miss answered from the primary's cache: what a worker pays for a token it has not served.
  const twoNoL1 = await cli(keystone.url, upstream, 'workers: 2\nworker_cache_max_entries: 0');
  const h = { 'X-Auth-Token': token };
  if (!SMOKE) {
    counts['Keystone validations, one new token, 32 concurrent clients: our sidecar, workers 1'] =
      await validationsPerToken(keystone, one);
    counts['Keystone validations, one new token, 32 concurrent clients: our sidecar, workers 2'] =
      await validationsPerToken(keystone, two);
  }
  for (const base of [one, two, twoNoL1]) {
    for (let i = 0; i < 10; i++) await fetch(`${base}/v1`, { headers: { ...h, connection: 'close' } });
  }
  keystone.setFault('validate', { kind: 'delay', ms: KEYSTONE_LATENCY_MS });

  const rows: Record<string, WrkResult> = {};
  const run = async (name: string, work: () => Promise<WrkResult>): Promise<void> => {
    if (ONLY !== undefined && !ONLY.some((o) => name.includes(o))) return;
    rows[name] = await work();
    process.stderr.write(`${name}: ${Math.round(rows[name]?.rps ?? 0)} req/s\n`);
  };
  await run('upstream directly', () => wrk(`${upstream}/v1`));
  await run('bare forwarder (auth off, workers 1)', () => wrk(`${bare}/v1`));
  await run('sidecar, cached token (workers 1)', () => wrk(`${one}/v1`, h));
  await run('sidecar, cached token (workers 2)', () => wrk(`${two}/v1`, h));
  await run('sidecar, cached token, L1 off: the primary answers each request (workers 2)', () =>
    wrk(`${twoNoL1}/v1`, h),
  );
  await run('sidecar, cached token, one connection: L1 hit (workers 2)', () =>
    wrk(`${two}/v1`, h, undefined, [], 1),
  );
  await run('sidecar, cached token, one connection: L1 off, the primary answers (workers 2)', () =>
    wrk(`${twoNoL1}/v1`, h, undefined, [], 1),
  );
  const fresh = Array.from({ length: 30_000 }, issue);
  await run('sidecar, distinct tokens: all misses, Keystone 20 ms (workers 1)', () =>
    wrk(`${one}/v1`, {}, luaTokens(fresh.slice(0, 15_000), 0, token)),
  );
  await run('sidecar, invalid token, Keystone 20 ms (workers 1)', () =>
    wrk(`${one}/v1`, { 'X-Auth-Token': 'gAAAAABinvalid-token' }),
  );
  await run('sidecar, mix 90% cached / 10% misses (workers 1)', () =>
    wrk(`${one}/v1`, {}, luaTokens(fresh.slice(15_000), 0.9, token)),
  );
  keystone.setFault('validate', undefined);

  for (const framework of ['express', 'node'] as const) {
    for (const mode of ['bare', 'auth'] as const) {
      await run(
        `${framework} app, ${mode === 'auth' ? 'with our middleware, cached token' : 'no auth'}`,
        async () => {
          const app = await startChild(
            process.execPath,
            [...serverNodeArgs(), 'bench/servers/app.mjs', framework, mode, keystone.url],
            /^(\d+)/m,
          );
          for (let i = 0; i < 5; i++) await fetch(`${app}/v1`, { headers: h });
          return wrk(`${app}/v1`, h);
        },
      );
    }
  }
  if (ONLY === undefined || ONLY.some((o) => o.includes('ksm')))
    Object.assign(rows, await ksmRows(keystone, token));

  const rps = (name: string) => rows[name]?.rps ?? Number.NaN;
  const perCore = (name: string) => rps(name) / (rows[name]?.cores ?? Number.NaN);
  const ratios: Record<string, number> = {
    'sidecar cached / bare forwarder (target >= 0.95)':
      rps('sidecar, cached token (workers 1)') / rps('bare forwarder (auth off, workers 1)'),
    'p99 added by auth, ms (target < 1)':
      (rows['sidecar, cached token (workers 1)']?.p99ms ?? Number.NaN) -
      (rows['bare forwarder (auth off, workers 1)']?.p99ms ?? Number.NaN),
    'express + middleware / express (target >= 0.95)':
      rps('express app, with our middleware, cached token') / rps('express app, no auth'),
    'node:http + handler / node:http (target >= 0.95)':
      rps('node app, with our middleware, cached token') / rps('node app, no auth'),
    'keystonemiddleware + app / app':
      rps('keystonemiddleware + wsgi app, cached token') / rps('wsgi app alone (uwsgi, 2 workers)'),
    'our sidecar / keystonemiddleware, same wsgi app (target >= 1)':
      rps('our sidecar (workers: auto) + wsgi app, cached token') /
      rps('keystonemiddleware + wsgi app, cached token'),
    'our sidecar (workers: 1) / keystonemiddleware, same wsgi app (target >= 1)':
      rps('our sidecar (workers: 1) + wsgi app, cached token') /
      rps('keystonemiddleware + wsgi app, cached token'),
    'L1 miss answered by the primary: p50 added, µs (one connection)':
      ((rows['sidecar, cached token, one connection: L1 off, the primary answers (workers 2)']?.p50ms ??
        Number.NaN) -
        (rows['sidecar, cached token, one connection: L1 hit (workers 2)']?.p50ms ?? Number.NaN)) *
      1000,
    'L1 off / L1 on, req/s (workers 2, 32 connections)':
      rps('sidecar, cached token, L1 off: the primary answers each request (workers 2)') /
      rps('sidecar, cached token (workers 2)'),
    '2 workers / 1 worker (target >= 1.7 with an external load generator)':
      rps('sidecar, cached token (workers 2)') / rps('sidecar, cached token (workers 1)'),
    // The load generator and the upstream share the 2 cores: per core the server actually got, auth's cost
    // and the workers' scaling show without that contention.
    'sidecar cached / bare forwarder, per proxy core':
      perCore('sidecar, cached token (workers 1)') / perCore('bare forwarder (auth off, workers 1)'),
    '2 workers / 1 worker, per proxy core (1.0 = linear: N workers on N free cores give N x)':
      perCore('sidecar, cached token (workers 2)') / perCore('sidecar, cached token (workers 1)'),
    'our sidecar / keystonemiddleware, per server core (sidecar + app vs ksm in the app)':
      perCore('our sidecar (workers: auto) + wsgi app, cached token') /
      perCore('keystonemiddleware + wsgi app, cached token'),
  };

  const machine = `${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const lines = [
    `machine: ${machine}; wrk -t1 -c${CONNECTIONS} -d${SECONDS}s after 2 s of warm-up, sharing the cores`,
    '',
    '| scenario | req/s | p50 ms | p99 ms | non-2xx | socket errors | server cores | req/s per server core |',
    '|---|---|---|---|---|---|---|---|',
    ...Object.entries(rows).map(
      ([name, r]) =>
        `| ${name} | ${Math.round(r.rps)} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} | ${r.non2xx} | ${r.errors} | ${r.cores.toFixed(2)} | ${Math.round(r.rps / r.cores)} |`,
    ),
    '',
    '| ratio | value |',
    '|---|---|',
    ...Object.entries(ratios).map(
      ([name, value]) => `| ${name} | ${Number.isFinite(value) ? value.toFixed(2) : 'n/a'} |`,
    ),
    ...(Object.keys(roundFigures).length === 0
      ? []
      : [
          '',
          `| interleaved scenario | req/s of each round (${KSM_ROUNDS} rounds; the table shows the median) |`,
          '|---|---|',
          ...Object.entries(roundFigures).map(([name, figures]) => `| ${name} | ${figures.join(', ')} |`),
        ]),
    ...(Object.keys(counts).length === 0
      ? []
      : [
          '',
          '| count | value |',
          '|---|---|',
          ...Object.entries(counts).map(([name, value]) => `| ${name} | ${value} |`),
        ]),
  ];
  console.log(lines.join('\n'));
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(
    join(ROOT, 'bench', 'results', 'bench.json'),
    `${JSON.stringify({ date: new Date().toISOString(), machine, seconds: SECONDS, rows, ratios, roundFigures, counts }, null, 2)}\n`,
  );
  await keystone.close();
  if (SMOKE) {
    const bad = Object.entries(rows).filter(([, r]) => !(r.rps > 0) || r.non2xx > 0 || r.errors > 0);
    if (Object.keys(rows).length !== 2 || bad.length > 0) {
      console.error(`bench smoke failed: ${JSON.stringify(bad.length > 0 ? bad : rows)}`);
      process.exitCode = 1;
    } else {
      console.log('bench smoke: ok');
    }
  }
}

main()
  .catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const child of children) child.kill('SIGTERM');
  });
