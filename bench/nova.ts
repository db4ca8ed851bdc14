/**
 * `npm run bench:nova`: GET /v2.1/flavors on the real Nova 26 API (nova-api-wsgi under uwsgi, 2 processes),
 * keystonemiddleware in-process vs our sidecar in front of the trusted-auth Nova, with the same cached token,
 * plus the trusted-auth Nova alone (identity headers written by hand: what Nova costs without any auth).
 * Interleaved rounds (drift of this shared machine hits every row alike); each row is the round with the median
 * req/s, every round's figure is printed. Writes bench/results/nova.json.
 *   npx tsx bench/nova.ts [--seconds 8] [--rounds 3] [--connections 8]
 * Needs wrk and the local Keystone and Nova: scripts/keystone-local.sh start, scripts/nova-local.sh install
 * (it starts Nova itself when it is not running, and stops only what it started).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const NOVA_SCRIPT = join(ROOT, 'scripts', 'nova-local.sh');
const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '3' },
    // Nova's 2 synchronous workers are the bottleneck: more connections only queue.
    connections: { type: 'string', default: '8' },
  },
});
const SECONDS = Number(args.seconds);
const ROUNDS = Number(args.rounds);
const CONNECTIONS = Number(args.connections);
const exec = promisify(execFile);

interface Row {
  rps: number;
  p50ms: number;
  p99ms: number;
  non2xx: number;
  errors: number;
}

const ms = (text: string | undefined): number => {
  const match = /([\d.]+)(us|ms|s)/.exec(text ?? '');
  if (!match) return Number.NaN;
  const value = Number(match[1]);
  return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
};

async function wrk(url: string, headers: Record<string, string>): Promise<Row> {
  const head = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  await exec('wrk', ['-t1', `-c${CONNECTIONS}`, '-d2s', ...head, url]);
  const { stdout } = await exec('wrk', [
    '-t1',
    `-c${CONNECTIONS}`,
    `-d${SECONDS}s`,
    '--latency',
    ...head,
    url,
  ]);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1]),
    p50ms: ms(/^\s*50(?:\.0+)?%\s+(\S+)/m.exec(stdout)?.[1]),
    p99ms: ms(/^\s*99(?:\.0+)?%\s+(\S+)/m.exec(stdout)?.[1]),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0),
    errors: errors ? errors.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
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
): Promise<{ url: string; child: ChildProcess }> {
  const file = join(dir, `proxy-${workers}.yaml`);
  writeFileSync(
    file,
    `workers: ${workers}
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${novaUrl}" }
admin_listen: { host: 127.0.0.1, port: 0 }
log: { level: info }
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
        resolve({ url: found[1], child });
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

async function main(): Promise<void> {
  const keystoneEnv = exportsOf(
    (await exec('bash', [join(ROOT, 'scripts', 'keystone-local.sh'), 'env'])).stdout,
  );
  const env = { ...process.env, ...keystoneEnv };
  const keystone = env.KEYSTONE_URL as string;
  const f = JSON.parse(readFileSync(env.KEYSTONE_FIXTURES as string, 'utf8')) as Fixtures;
  const novaWasUp = await exec('bash', [NOVA_SCRIPT, 'status'], { env }).then(
    () => true,
    () => false,
  );
  await exec('bash', [NOVA_SCRIPT, 'start'], { env, timeout: 300_000 });
  const nova = exportsOf((await exec('bash', [NOVA_SCRIPT, 'env'], { env })).stdout);
  const dir = mkdtempSync(join(tmpdir(), 'kap-bench-nova-'));
  const children: ChildProcess[] = [];
  try {
    const one = await startProxy(nova.NOVA_URL as string, keystone, f, '1', dir);
    const auto = await startProxy(nova.NOVA_URL as string, keystone, f, 'auto', dir);
    children.push(one.child, auto.child);
    const { token, body } = await demoToken(keystone, f);
    const h = { 'X-Auth-Token': token };
    const path = '/v2.1/flavors';
    // Warm every cache: the token in both proxies and in each keystonemiddleware worker, Nova's workers.
    for (let i = 0; i < 20; i++) {
      for (const base of [one.url, auto.url, nova.NOVA_REFERENCE_URL as string]) {
        const res = await fetch(`${base}${path}`, { headers: h });
        if (res.status !== 200) throw new Error(`${base}${path}: HTTP ${res.status}`);
        await res.arrayBuffer();
      }
    }
    const scenarios: [string, () => Promise<Row>][] = [
      [
        'trusted-auth Nova alone (identity headers by hand, no auth)',
        () => wrk(`${nova.NOVA_URL}${path}`, handWrittenIdentity(body, token)),
      ],
      [
        'Nova + keystonemiddleware in-process, cached token',
        () => wrk(`${nova.NOVA_REFERENCE_URL}${path}`, h),
      ],
      ['our sidecar (workers: 1) + trusted-auth Nova, cached token', () => wrk(`${one.url}${path}`, h)],
      ['our sidecar (workers: auto) + trusted-auth Nova, cached token', () => wrk(`${auto.url}${path}`, h)],
    ];
    const results = new Map<string, Row[]>(scenarios.map(([name]) => [name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, work] of scenarios) {
        const row = await work();
        results.get(name)?.push(row);
        process.stderr.write(`round ${round + 1}: ${name}: ${Math.round(row.rps)} req/s\n`);
      }
    }
    const rows: Record<string, Row> = {};
    const rounds: Record<string, number[]> = {};
    for (const [name, list] of results) {
      rows[name] = [...list].sort((a, b) => a.rps - b.rps)[Math.floor((list.length - 1) / 2)] as Row;
      rounds[name] = list.map((r) => Math.round(r.rps));
    }
    const rps = (name: string): number => rows[name]?.rps ?? Number.NaN;
    const ratios = {
      'our sidecar (workers: 1) / keystonemiddleware in-process':
        rps('our sidecar (workers: 1) + trusted-auth Nova, cached token') /
        rps('Nova + keystonemiddleware in-process, cached token'),
      'our sidecar (workers: auto) / keystonemiddleware in-process':
        rps('our sidecar (workers: auto) + trusted-auth Nova, cached token') /
        rps('Nova + keystonemiddleware in-process, cached token'),
      'keystonemiddleware in-process / Nova alone':
        rps('Nova + keystonemiddleware in-process, cached token') /
        rps('trusted-auth Nova alone (identity headers by hand, no auth)'),
    };
    const machine = `${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), Node ${process.version}`;
    console.log(
      [
        `machine: ${machine}; GET ${path}, wrk -t1 -c${CONNECTIONS} -d${SECONDS}s after 2 s of warm-up, ${ROUNDS} interleaved rounds`,
        '',
        '| scenario | req/s | p50 ms | p99 ms | non-2xx | socket errors | req/s of each round |',
        '|---|---|---|---|---|---|---|',
        ...Object.entries(rows).map(
          ([name, r]) =>
            `| ${name} | ${Math.round(r.rps)} | ${r.p50ms.toFixed(1)} | ${r.p99ms.toFixed(1)} | ${r.non2xx} | ${r.errors} | ${rounds[name]?.join(', ')} |`,
        ),
        '',
        '| ratio | value |',
        '|---|---|',
        ...Object.entries(ratios).map(
          ([name, value]) => `| ${name} | ${Number.isFinite(value) ? value.toFixed(2) : 'n/a'} |`,
        ),
      ].join('\n'),
    );
    mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
    writeFileSync(
      join(ROOT, 'bench', 'results', 'nova.json'),
      `${JSON.stringify({ date: new Date().toISOString(), machine, seconds: SECONDS, connections: CONNECTIONS, rows, rounds, ratios }, null, 2)}\n`,
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
