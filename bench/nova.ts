/**
 * `npm run bench:nova`: GET /v2.1/flavors and /v2.1/servers on the real Nova 26 API (nova-api-wsgi under uwsgi,
 * 2 processes), keystonemiddleware in-process vs our sidecar in front of the trusted-auth Nova, with the same
 * cached token, plus the trusted-auth Nova alone twice: with the identity headers keystonemiddleware sets written
 * by hand (what Nova costs without any auth), and with exactly the headers our sidecar sends (what those cost
 * Nova). Each row says where the CPU went: Nova's processes, the sidecar's, wrk's and the whole machine's, per
 * request. Interleaved rounds (drift of this shared machine hits every row alike); each row is the round with the
 * median req/s, every round's figure is printed. Then Keystone validations for one new token with 32 concurrent
 * clients, counted in the local Keystone's request log. Writes bench/results/nova.json.
 *   npx tsx bench/nova.ts [--seconds 8] [--rounds 3] [--connections 8] [--paths /v2.1/flavors,/v2.1/servers]
 * Needs wrk and the local Keystone and Nova: scripts/keystone-local.sh start, scripts/nova-local.sh install
 * (it starts Nova itself when it is not running, and stops only what it started).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { endedChildrenCpuSeconds, machineBusySeconds, treeCpuSeconds } from './process-cpu.js';
import { parseWrkOutput } from './wrk-output.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const NOVA_SCRIPT = join(ROOT, 'scripts', 'nova-local.sh');
const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '3' },
    // Nova's 2 synchronous workers are the bottleneck: more connections only queue.
    connections: { type: 'string', default: '8' },
    paths: { type: 'string', default: '/v2.1/flavors,/v2.1/servers' },
  },
});
const SECONDS = Number(args.seconds);
const ROUNDS = Number(args.rounds);
const CONNECTIONS = Number(args.connections);
const PATHS = args.paths.split(',');
const exec = promisify(execFile);

interface Row {
  rps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
  errors: number;
  /** CPU milliseconds per request: Nova's uwsgi tree (master, HTTP router, workers), the sidecar's, wrk's. */
  novaCpuMs: number;
  sidecarCpuMs: number;
  wrkCpuMs: number;
  /** Every process of the machine, per request; `machineBusy` is the share of the cores that were busy. */
  machineCpuMs: number;
  machineBusy: number;
}

/** The process trees whose CPU a row accounts for. */
interface Counted {
  nova: number;
  sidecar?: number;
}

async function wrk(url: string, headers: Record<string, string>, counted: Counted): Promise<Row> {
  const head = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  await exec('wrk', ['-t1', `-c${CONNECTIONS}`, '-d2s', ...head, url]);
  const before = {
    nova: treeCpuSeconds(counted.nova),
    sidecar: counted.sidecar === undefined ? 0 : treeCpuSeconds(counted.sidecar),
    wrk: endedChildrenCpuSeconds(),
    machine: machineBusySeconds(),
  };
  const { stdout } = await exec('wrk', [
    '-t1',
    `-c${CONNECTIONS}`,
    `-d${SECONDS}s`,
    '--latency',
    ...head,
    url,
  ]);
  const spent = {
    nova: treeCpuSeconds(counted.nova) - before.nova,
    sidecar: counted.sidecar === undefined ? 0 : treeCpuSeconds(counted.sidecar) - before.sidecar,
    wrk: endedChildrenCpuSeconds() - before.wrk,
    machine: machineBusySeconds() - before.machine,
  };
  const { requests, ...report } = parseWrkOutput(stdout);
  const perRequestMs = (seconds: number): number => (seconds * 1000) / requests;
  return {
    novaCpuMs: perRequestMs(spent.nova),
    sidecarCpuMs: perRequestMs(spent.sidecar),
    wrkCpuMs: perRequestMs(spent.wrk),
    machineCpuMs: perRequestMs(spent.machine),
    machineBusy: spent.machine / SECONDS / availableParallelism(),
    ...report,
  };
}

const exportsOf = (text: string): Record<string, string> =>
  Object.fromEntries(
    [...text.matchAll(/^export (\w+)=(.*)$/gm)].map((m) => [m[1] as string, m[2] as string]),
  );

interface Fixtures {
  service: { user: string; password: string; project: string };
  demo: { user: string; password: string; projectId: string; userId: string };
}

async function demoToken(
  keystone: string,
  f: Fixtures,
): Promise<{ token: string; body: Record<string, unknown> }> {
  const identity = {
    methods: ['password'],
    password: { user: { name: f.demo.user, domain: { id: 'default' }, password: f.demo.password } },
  };
  const res = await fetch(`${keystone}/v3/auth/tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ auth: { identity, scope: { project: { id: f.demo.projectId } } } }),
  });
  if (res.status !== 201) throw new Error(`token request failed: HTTP ${res.status}`);
  return {
    token: res.headers.get('x-subject-token') as string,
    body: (await res.json()) as Record<string, unknown>,
  };
}

function startProxy(
  novaUrl: string,
  keystone: string,
  f: Fixtures,
  workers: string,
  dir: string,
  name = `proxy-${workers}`,
  log = 'log: { level: info }',
): Promise<{ url: string; child: ChildProcess; pid: number }> {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    `workers: ${workers}
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${novaUrl}" }
admin_listen: { host: 127.0.0.1, port: 0 }
${log}
keystone_authtoken:
  www_authenticate_uri: "${keystone}"
  auth_url: "${keystone}"
  username: ${f.service.user}
  password: "\${NOVA_BENCH_PROXY_PASSWORD}"
  user_domain_id: default
  project_name: ${f.service.project}
  project_domain_id: default
  service_type: compute
`,
    { mode: 0o600 },
  );
  const child = spawn(process.execPath, ['dist/cli.js', '--config', file], {
    cwd: ROOT,
    env: { ...process.env, NOVA_BENCH_PROXY_PASSWORD: f.service.password },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      const found = /"listen":"(http:\/\/[^"]+)"/.exec(out);
      if (found?.[1]) {
        // Stop reading its access log: the driver must not spend the cores it is measuring.
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        resolve({ url: found[1], child, pid: child.pid as number });
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`the proxy exited ${code}: ${out.slice(-500)}`)));
  });
}

/** The identity headers keystonemiddleware would set for this token: Nova alone, no auth in front. */
function handWrittenIdentity(body: Record<string, unknown>, token: string): Record<string, string> {
  const t = body.token as {
    user: { id: string; name: string; domain: { id: string; name: string } };
    project: { id: string; name: string; domain: { id: string; name: string } };
    roles: { name: string }[];
  };
  return {
    'X-Auth-Token': token,
    'X-Identity-Status': 'Confirmed',
    'X-User-Id': t.user.id,
    'X-User-Name': t.user.name,
    'X-User-Domain-Id': t.user.domain.id,
    'X-User-Domain-Name': t.user.domain.name,
    'X-Project-Id': t.project.id,
    'X-Project-Name': t.project.name,
    'X-Project-Domain-Id': t.project.domain.id,
    'X-Project-Domain-Name': t.project.domain.name,
    'X-Roles': t.roles.map((r) => r.name).join(','),
  };
}

/**
 * The headers our sidecar sends upstream for this token, as an upstream sees them: a proxy in front of a server
 * that records one request. Host and Connection are wrk's own.
 */
async function sidecarHeaders(
  keystone: string,
  f: Fixtures,
  dir: string,
  token: string,
  path: string,
): Promise<Record<string, string>> {
  let seen: IncomingHttpHeaders | undefined;
  const recorder = createServer((req, res) => {
    seen = req.headers;
    res.end('{}');
  });
  await new Promise<void>((resolve) => recorder.listen(0, '127.0.0.1', resolve));
  const { port } = recorder.address() as AddressInfo;
  const proxy = await startProxy(`http://127.0.0.1:${port}`, keystone, f, '1', dir, 'recorder');
  try {
    // node:http sends only Host and Connection of its own, as wrk does (fetch adds Accept, User-Agent and more).
    const status = await new Promise<number | undefined>((resolve, reject) => {
      request(`${proxy.url}${path}`, { headers: { 'X-Auth-Token': token } }, (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode));
      })
        .once('error', reject)
        .end();
    });
    if (status !== 200 || seen === undefined)
      throw new Error(`recording the sidecar's headers: HTTP ${status}`);
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(seen)) {
      if (name === 'host' || name === 'connection' || value === undefined) continue;
      headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    return headers;
  } finally {
    proxy.child.kill('SIGTERM');
    recorder.close();
  }
}

/** GET /v3/auth/tokens lines in the local Keystone's uwsgi request log: one per validation it answered. */
function keystoneValidations(keystoneDir: string): number {
  const log = readFileSync(join(keystoneDir, 'keystone.log'), 'utf8');
  return log.match(/\] GET \/v3\/auth\/tokens /g)?.length ?? 0;
}

/** Keystone validations caused by `concurrency` clients arriving at once with one token nobody has seen. */
async function validationsPerToken(
  keystone: string,
  keystoneDir: string,
  f: Fixtures,
  base: string,
  path: string,
  concurrency = 32,
): Promise<number> {
  const { token } = await demoToken(keystone, f);
  const before = keystoneValidations(keystoneDir);
  const statuses = await Promise.all(
    Array.from({ length: concurrency }, () =>
      fetch(`${base}${path}`, { headers: { 'X-Auth-Token': token, connection: 'close' } }).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      }),
    ),
  );
  if (statuses.some((status) => status !== 200)) throw new Error(`${base}${path}: ${statuses.join(',')}`);
  // uwsgi writes its log line after the answer: give it a moment.
  await new Promise((r) => setTimeout(r, 500));
  return keystoneValidations(keystoneDir) - before;
}

const pidOf = (file: string): number => Number(readFileSync(file, 'utf8').trim());

async function main(): Promise<void> {
  const keystoneEnv = exportsOf(
    (await exec('bash', [join(ROOT, 'scripts', 'keystone-local.sh'), 'env'])).stdout,
  );
  const env = { ...process.env, ...keystoneEnv };
  const keystone = env.KEYSTONE_URL as string;
  const keystoneDir = env.KEYSTONE_LOCAL_DIR as string;
  const f = JSON.parse(readFileSync(env.KEYSTONE_FIXTURES as string, 'utf8')) as Fixtures;
  const novaWasUp = await exec('bash', [NOVA_SCRIPT, 'status'], { env }).then(
    () => true,
    () => false,
  );
  await exec('bash', [NOVA_SCRIPT, 'start'], { env, timeout: 300_000 });
  const nova = exportsOf((await exec('bash', [NOVA_SCRIPT, 'env'], { env })).stdout);
  const trustedPid = pidOf(join(nova.NOVA_LOCAL_DIR as string, 'trusted', 'uwsgi.pid'));
  const referencePid = pidOf(join(nova.NOVA_LOCAL_DIR as string, 'reference', 'uwsgi.pid'));
  const dir = mkdtempSync(join(tmpdir(), 'kap-bench-nova-'));
  const children: ChildProcess[] = [];
  try {
    const one = await startProxy(nova.NOVA_URL as string, keystone, f, '1', dir);
    const auto = await startProxy(nova.NOVA_URL as string, keystone, f, 'auto', dir);
    // The baseline of the log batching, in the same run: one write per access-log line, as before it.
    const unbatched = await startProxy(
      nova.NOVA_URL as string,
      keystone,
      f,
      '1',
      dir,
      'proxy-unbatched',
      'log: { level: info, flush_interval_seconds: 0 }',
    );
    children.push(one.child, auto.child, unbatched.child);
    const { token, body } = await demoToken(keystone, f);
    const h = { 'X-Auth-Token': token };
    const counts: Record<string, number> = {};
    const first = PATHS[0] as string;
    counts[
      'Keystone validations, one new token, 32 concurrent clients: keystonemiddleware (uwsgi, 2 processes)'
    ] = await validationsPerToken(keystone, keystoneDir, f, nova.NOVA_REFERENCE_URL as string, first);
    counts['Keystone validations, one new token, 32 concurrent clients: our sidecar, workers 1'] =
      await validationsPerToken(keystone, keystoneDir, f, one.url, first);
    counts['Keystone validations, one new token, 32 concurrent clients: our sidecar, workers auto'] =
      await validationsPerToken(keystone, keystoneDir, f, auto.url, first);
    const sent = await sidecarHeaders(keystone, f, dir, token, first);
    // Warm every cache: the token in both proxies and in each keystonemiddleware worker, Nova's workers.
    for (let i = 0; i < 20; i++) {
      for (const base of [one.url, auto.url, unbatched.url, nova.NOVA_REFERENCE_URL as string]) {
        for (const path of PATHS) {
          const res = await fetch(`${base}${path}`, { headers: h });
          if (res.status !== 200) throw new Error(`${base}${path}: HTTP ${res.status}`);
          await res.arrayBuffer();
        }
      }
    }
    const trusted = { nova: trustedPid };
    const scenarios: [string, string, () => Promise<Row>][] = PATHS.flatMap((path) => [
      [
        path,
        'trusted-auth Nova alone, the identity headers keystonemiddleware sets, by hand',
        () => wrk(`${nova.NOVA_URL}${path}`, handWrittenIdentity(body, token), trusted),
      ],
      [
        path,
        "trusted-auth Nova alone, the sidecar's request headers, by hand",
        () => wrk(`${nova.NOVA_URL}${path}`, sent, trusted),
      ],
      [
        path,
        'Nova + keystonemiddleware in-process, cached token',
        () => wrk(`${nova.NOVA_REFERENCE_URL}${path}`, h, { nova: referencePid }),
      ],
      [
        path,
        'our sidecar (workers: 1) + trusted-auth Nova, cached token',
        () => wrk(`${one.url}${path}`, h, { ...trusted, sidecar: one.pid }),
      ],
      [
        path,
        'our sidecar (workers: auto) + trusted-auth Nova, cached token',
        () => wrk(`${auto.url}${path}`, h, { ...trusted, sidecar: auto.pid }),
      ],
      [
        path,
        'our sidecar (workers: 1, one write per log line: flush_interval_seconds 0) + trusted-auth Nova',
        () => wrk(`${unbatched.url}${path}`, h, { ...trusted, sidecar: unbatched.pid }),
      ],
    ]);
    const key = (path: string, name: string): string => `${path} ${name}`;
    const results = new Map<string, Row[]>(scenarios.map(([path, name]) => [key(path, name), []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [path, name, work] of scenarios) {
        const row = await work();
        results.get(key(path, name))?.push(row);
        process.stderr.write(`round ${round + 1}: ${path} ${name}: ${Math.round(row.rps)} req/s\n`);
      }
    }
    const rows: Record<string, Row> = {};
    const rounds: Record<string, number[]> = {};
    for (const [name, list] of results) {
      rows[name] = [...list].sort((a, b) => a.rps - b.rps)[Math.floor((list.length - 1) / 2)] as Row;
      rounds[name] = list.map((r) => Math.round(r.rps));
    }
    const rps = (path: string, name: string): number => rows[key(path, name)]?.rps ?? Number.NaN;
    const ratios: Record<string, number> = {};
    for (const path of PATHS) {
      const ksm = rps(path, 'Nova + keystonemiddleware in-process, cached token');
      ratios[`${path} our sidecar (workers: 1) / keystonemiddleware in-process`] =
        rps(path, 'our sidecar (workers: 1) + trusted-auth Nova, cached token') / ksm;
      ratios[`${path} our sidecar (workers: auto) / keystonemiddleware in-process`] =
        rps(path, 'our sidecar (workers: auto) + trusted-auth Nova, cached token') / ksm;
      ratios[`${path} our sidecar (workers: 1), one write per log line / keystonemiddleware in-process`] =
        rps(
          path,
          'our sidecar (workers: 1, one write per log line: flush_interval_seconds 0) + trusted-auth Nova',
        ) / ksm;
      ratios[`${path} keystonemiddleware in-process / Nova alone`] =
        ksm / rps(path, 'trusted-auth Nova alone, the identity headers keystonemiddleware sets, by hand');
      ratios[`${path} Nova alone: the sidecar's headers / keystonemiddleware's`] =
        rps(path, "trusted-auth Nova alone, the sidecar's request headers, by hand") /
        rps(path, 'trusted-auth Nova alone, the identity headers keystonemiddleware sets, by hand');
    }
    const machine = `${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), Node ${process.version}`;
    const cpu = (value: number): string => (value > 0 ? value.toFixed(2) : '0');
    console.log(
      [
        `machine: ${machine}; wrk -t1 -c${CONNECTIONS} -d${SECONDS}s after 2 s of warm-up, ${ROUNDS} interleaved rounds`,
        '',
        '| path, scenario | req/s | p50 ms | p99 ms | non-2xx | socket errors | CPU ms per request: Nova, sidecar, wrk, machine | cores busy | req/s of each round |',
        '|---|---|---|---|---|---|---|---|---|',
        ...Object.entries(rows).map(
          ([name, r]) =>
            `| ${name} | ${Math.round(r.rps)} | ${r.p50ms.toFixed(1)} | ${r.p99ms.toFixed(1)} | ${r.non2xx} | ${r.errors} | ${cpu(r.novaCpuMs)}, ${cpu(r.sidecarCpuMs)}, ${cpu(r.wrkCpuMs)}, ${cpu(r.machineCpuMs)} | ${(r.machineBusy * 100).toFixed(0)} % | ${rounds[name]?.join(', ')} |`,
        ),
        '',
        '| ratio | value |',
        '|---|---|',
        ...Object.entries(ratios).map(
          ([name, value]) => `| ${name} | ${Number.isFinite(value) ? value.toFixed(2) : 'n/a'} |`,
        ),
        '',
        '| count | value |',
        '|---|---|',
        ...Object.entries(counts).map(([name, value]) => `| ${name} | ${value} |`),
        '',
        `The sidecar's request headers: ${Object.keys(sent).sort().join(', ')} (${Object.entries(sent).reduce((n, [k, v]) => n + k.length + v.length + 4, 0)} bytes)`,
      ].join('\n'),
    );
    mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
    writeFileSync(
      join(ROOT, 'bench', 'results', 'nova.json'),
      `${JSON.stringify({ date: new Date().toISOString(), machine, seconds: SECONDS, connections: CONNECTIONS, rows, rounds, ratios, counts, sidecarHeaderNames: Object.keys(sent).sort() }, null, 2)}\n`,
    );
  } finally {
    for (const child of children) child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
    if (!novaWasUp) await exec('bash', [NOVA_SCRIPT, 'stop'], { env });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
