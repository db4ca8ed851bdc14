/**
 * `npm run bench:low-rate`: the sidecar's CPU per request at a service's rate (a few hundred requests a second,
 * where Nova and Glance sit), not at its own top speed: the upstream answers after `--delay-ms` (20), wrk keeps 8
 * connections busy, so about 370 requests a second reach each proxy. Variants of the proxy's configuration run at
 * the same time and take turns (interleaved rounds: drift of this shared machine hits every variant alike); each
 * figure is the median round's CPU per request (utime + stime of the proxy's process tree, /proc), and the ratio
 * is against the first variant, measured in the same run. The Keystone emulator issues and validates the token.
 *   npx tsx bench/low-rate.ts [--seconds 4] [--rounds 8] [--delay-ms 20]
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { fixtures, startKeystoneEmulator } from '../test/helpers/keystone-emulator.js';
import { emulatorProxyYaml } from './emulator-proxy.js';
import { treeCpuSeconds } from './process-cpu.js';
import { parseWrkOutput } from './wrk-output.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '8' },
    'delay-ms': { type: 'string', default: '20' },
  },
});
const SECONDS = Number(args.seconds);
const ROUNDS = Number(args.rounds);
const DELAY_MS = Number(args['delay-ms']);
const exec = promisify(execFile);

/** The baseline first: every other variant is reported against it. */
const VARIANTS: { name: string; yaml: string }[] = [
  {
    name: 'workers: 1, one write per log line (log.flush_interval_seconds: 0)',
    yaml: 'workers: 1\nlog: { level: info, flush_interval_seconds: 0 }',
  },
  { name: 'workers: 1, the defaults (log lines written together)', yaml: 'workers: 1' },
  { name: 'workers: 1, no access log (log.level: warn)', yaml: 'workers: 1\nlog: { level: warn }' },
  {
    name: 'workers: 1, no access log, no metrics',
    yaml: 'workers: 1\nlog: { level: warn }\nmetrics: { enabled: false }',
  },
  { name: 'workers: auto, the defaults', yaml: 'workers: auto' },
];

/** A Nova-sized JSON answer (a flavor list) with Nova's response headers, after DELAY_MS. */
function startUpstream(): Promise<{ url: string; close: () => void }> {
  const body = JSON.stringify({
    flavors: Array.from({ length: 6 }, (_, i) => ({
      id: String(i),
      name: `m1.flavor${i}`,
      links: [{ rel: 'self', href: `http://127.0.0.1/v2.1/flavors/${i}` }],
    })),
  });
  const server = createServer((_req, res) => {
    setTimeout(() => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'openstack-api-version': 'compute 2.1',
        'x-openstack-nova-api-version': '2.1',
        vary: 'OpenStack-API-Version, X-OpenStack-Nova-API-Version',
      });
      res.end(body);
    }, DELAY_MS);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => server.close(),
      }),
    ),
  );
}

function startProxy(keystone: string, upstream: string, yaml: string, dir: string, n: number) {
  const file = join(dir, `proxy-${n}.yaml`);
  // Fixed ports: with log.level warn there is no start-up line to read the port from.
  const port = 18_950 + 2 * n;
  writeFileSync(file, emulatorProxyYaml(keystone, upstream, { listen: port, admin: port + 1 }, yaml));
  const child: ChildProcess = spawn(process.execPath, ['dist/cli.js', '--config', file], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return { child, url: `http://127.0.0.1:${port}` };
}

async function until(url: string): Promise<void> {
  for (let i = 0; i < 150; i++) {
    try {
      await (await fetch(url)).arrayBuffer();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${url} did not start`);
}

async function wrk(url: string, token: string, seconds: number): Promise<number> {
  const { stdout } = await exec('wrk', ['-t1', '-c8', `-d${seconds}s`, '-H', `X-Auth-Token: ${token}`, url]);
  return parseWrkOutput(stdout).requests;
}

const median = (list: number[]): number =>
  [...list].sort((a, b) => a - b)[Math.floor((list.length - 1) / 2)] as number;

async function main(): Promise<void> {
  const keystone = await startKeystoneEmulator();
  const upstream = await startUpstream();
  const dir = mkdtempSync(join(tmpdir(), 'kap-bench-low-rate-'));
  const { users, projects, roles } = fixtures;
  const token = keystone.issueToken({
    user: users.demo,
    scope: { project: projects.demo },
    roles: [roles.member],
  });
  const proxies = VARIANTS.map((v, n) => ({
    ...v,
    ...startProxy(keystone.url, upstream.url, v.yaml, dir, n),
  }));
  try {
    for (const proxy of proxies) {
      await until(proxy.url);
      await wrk(`${proxy.url}/v2.1/flavors`, token, 3);
    }
    const perRequest = new Map<string, number[]>(proxies.map((p) => [p.name, []]));
    const rates = new Map<string, number[]>(proxies.map((p) => [p.name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const proxy of proxies) {
        const pid = proxy.child.pid as number;
        const before = treeCpuSeconds(pid);
        const requests = await wrk(`${proxy.url}/v2.1/flavors`, token, SECONDS);
        perRequest.get(proxy.name)?.push(((treeCpuSeconds(pid) - before) * 1000) / requests);
        rates.get(proxy.name)?.push(requests / SECONDS);
      }
      process.stderr.write(`round ${round + 1} of ${ROUNDS}\n`);
    }
    const baseline = median(perRequest.get(proxies[0]?.name as string) ?? []);
    const machine = `${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), Node ${process.version}`;
    const rows = proxies.map((p) => {
      const cpu = perRequest.get(p.name) ?? [];
      return {
        name: p.name,
        cpuMs: median(cpu),
        ratio: median(cpu) / baseline,
        rps: median(rates.get(p.name) ?? []),
        rounds: cpu,
      };
    });
    console.log(
      [
        `machine: ${machine}; upstream answers after ${DELAY_MS} ms, wrk -t1 -c8 -d${SECONDS}s, ${ROUNDS} interleaved rounds`,
        '',
        '| proxy | req/s | CPU ms per request (median round) | vs the first row | every round |',
        '|---|---|---|---|---|',
        ...rows.map(
          (r) =>
            `| ${r.name} | ${Math.round(r.rps)} | ${r.cpuMs.toFixed(3)} | ${r.ratio.toFixed(2)} | ${r.rounds.map((c) => c.toFixed(2)).join(', ')} |`,
        ),
      ].join('\n'),
    );
    mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
    writeFileSync(
      join(ROOT, 'bench', 'results', 'low-rate.json'),
      `${JSON.stringify({ date: new Date().toISOString(), machine, delayMs: DELAY_MS, seconds: SECONDS, rows }, null, 2)}\n`,
    );
  } finally {
    for (const proxy of proxies) proxy.child.kill('SIGTERM');
    upstream.close();
    await keystone.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
