/**
 * Soak of the real sidecar (dist/cli.js as a child process, YAML config) on loopback, in four phases:
 *   1. load: wrk with one cached token for --seconds N; throughput, latency, errors, the proxy's RSS each
 *      second;
 *   2. Keystone black-holed: uncached tokens get 503 after http_request_timeout_seconds, then at once when
 *      the circuit breaker opens;
 *   3. Keystone healed: time until the breaker lets a probe through and closes;
 *   4. SIGTERM under load: in-flight requests must all complete, the CLI must exit 0.
 * Prints a table and writes bench/results/soak.json; exits 1 when a check fails (--smoke: every phase
 * shortened). Run: `npm run build && npm run soak` (or `npm run soak:smoke`).
 * Needs wrk (Debian/Ubuntu: `apt-get install wrk`). Everything (wrk, the proxy, the upstream, the Keystone
 * emulator) shares this machine's cores.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { forEachLine } from '../test/helpers/cli.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../test/helpers/keystone-emulator.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli.js');
const RESULTS = join(ROOT, 'bench', 'results', 'soak.json');

const { values: args } = parseArgs({
  options: { seconds: { type: 'string', default: '60' }, smoke: { type: 'boolean', default: false } },
});
const SECONDS = Number(args.seconds);
if (!Number.isInteger(SECONDS) || SECONDS < 2) {
  process.stderr.write('usage: tsx bench/soak.ts [--seconds N (integer >= 2, default 60)] [--smoke]\n');
  process.exit(2);
}
const SMOKE = args.smoke === true;
const WARMUP_SECONDS = Math.min(SMOKE ? 2 : 10, Math.floor(SECONDS / 2));
// 32 connections on one wrk thread, as bench/forwarders.ts: enough to keep the proxy's event loop saturated
// on a 2-core machine; more only lengthens the queue (latency) without adding throughput.
const CONNECTIONS = 32;
const KEYSTONE_TIMEOUT_SECONDS = 1;
const BREAKER_THRESHOLD = 5;
const BREAKER_OPEN_SECONDS = 5;
const OPEN_SAMPLES = SMOKE ? 5 : 20;
const PACE_MS = 50;
const SLOW_MS = 1000;
const SLOW_REQUESTS = SMOKE ? 30 : 100;
// Longer than the slow requests, so a drain that never ends while load continues would show in the exit time.
const DRAIN_WRK_SECONDS = SMOKE ? 3 : 4;
const DRAIN_CONNECTIONS = 16;
const KEEPALIVE_CONNECTIONS = 8;
const GRACE_SECONDS = 10;
const FLAT_MB = 5;
// Requests sent this soon after SIGTERM may meet an idle connection being closed: the keep-alive race.
const RACE_MS = 50;
const PASSWORD = fixtures.users.proxy.password as string;

interface LogRecord {
  time?: string;
  msg?: string;
  [key: string]: unknown;
}
interface Answer {
  status: number;
  ms: number;
  /** performance.now() when the answer (or the error) arrived. */
  at: number;
  retryAfter?: string;
  error?: string;
}
interface WrkResult {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  non2xx3xx: number;
  socketErrors: { connect: number; read: number; write: number; timeout: number };
}
interface Check {
  name: string;
  ok: boolean;
  /** A failed check that is not gating is printed as WARN and does not change the exit code. */
  gating: boolean;
  detail: string;
}
interface Sent extends Answer {
  sentAt: number;
}

const children = new Set<ChildProcess>();
// Holds the YAML config; removed at the end and on Ctrl-C.
const configDir = mkdtempSync(join(tmpdir(), 'kap-soak-'));
function tracked(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const round = (value: number, digits = 1): number => Math.round(value * 10 ** digits) / 10 ** digits;
const quantile = (values: number[], q: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
};

function toMs(value: string, unit: string): number {
  const scale: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  return Number(value) * (scale[unit] ?? Number.NaN);
}

function parseWrk(out: string): WrkResult {
  const latency = (label: string): number => {
    const match = new RegExp(`^\\s+${label}\\s+([\\d.]+)(us|ms|s|m)\\b`, 'm').exec(out);
    return match ? toMs(match[1] ?? '', match[2] ?? '') : Number.NaN;
  };
  const max = /Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)/.exec(out);
  const total = /(\d+) requests in ([\d.]+)(us|ms|s|m),/.exec(out);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    requests: Number(total?.[1] ?? Number.NaN),
    seconds: round(toMs(total?.[2] ?? '', total?.[3] ?? '') / 1000, 2),
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? Number.NaN),
    p50Ms: latency('50%'),
    p99Ms: latency('99%'),
    maxMs: max ? toMs(max[1] ?? '', max[2] ?? '') : Number.NaN,
    non2xx3xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
    socketErrors: {
      connect: Number(errors?.[1] ?? 0),
      read: Number(errors?.[2] ?? 0),
      write: Number(errors?.[3] ?? 0),
      timeout: Number(errors?.[4] ?? 0),
    },
  };
}

// Spawned, never execFileSync: the upstream and the Keystone emulator live in this process and must keep
// serving.
function runWrk(wrkArgs: string[]): { pid: number | undefined; done: Promise<WrkResult> } {
  const child = tracked(spawn('wrk', wrkArgs, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const done = new Promise<WrkResult>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve(parseWrk(out)) : reject(new Error(`wrk exited with ${code}: ${out}`)),
    );
  });
  return { pid: child.pid, done };
}

function wrkVersion(): Promise<string | undefined> {
  return new Promise((resolve) => {
    const child = spawn('wrk', ['-v'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.once('error', () => resolve(undefined));
    child.once('exit', () =>
      resolve(
        out
          .split('\n')[0]
          ?.replace(/\s*Copyright.*$/, '')
          .trim(),
      ),
    );
  });
}

/** One GET; never rejects: a failure is an Answer with status 0 and the error code. */
function get(url: string, token: string, agent: Agent | false, timeoutMs = 15_000): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve) => {
    const done = (answer: Omit<Answer, 'ms' | 'at'>): void => {
      const at = performance.now();
      resolve({ ...answer, ms: at - started, at });
    };
    const req = request(url, { agent, headers: { 'x-auth-token': token } }, (res) => {
      res.resume();
      const retryAfter = res.headers['retry-after'];
      res.once('end', () =>
        done(
          retryAfter === undefined
            ? { status: res.statusCode ?? 0 }
            : { status: res.statusCode ?? 0, retryAfter },
        ),
      );
      res.once('error', (error: NodeJS.ErrnoException) =>
        done({ status: 0, error: error.code ?? error.message }),
      );
      res.once('close', () => {
        if (!res.complete) done({ status: 0, error: 'incomplete body' });
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('client timeout')));
    req.once('error', (error: NodeJS.ErrnoException) =>
      done({ status: 0, error: error.code ?? error.message }),
    );
    req.end();
  });
}

/**
 * A closed-loop keep-alive client like wrk, but one that keeps each request's send time and outcome, so a
 * request written to an open connection and never answered can be told apart from a refused new connection.
 */
async function keepAliveLoop(url: string, token: string, connections: number, stop: () => boolean) {
  const loopAgent = new Agent({ keepAlive: true, maxSockets: connections });
  const sent: Sent[] = [];
  const worker = async (): Promise<void> => {
    while (!stop()) {
      const sentAt = performance.now();
      const answer = await get(url, token, loopAgent, 5000);
      sent.push({ ...answer, sentAt });
      // Refused once the listener is closed: do not spin.
      if (answer.status === 0) await sleep(PACE_MS);
    }
  };
  await Promise.all(Array.from({ length: connections }, worker));
  loopAgent.destroy();
  return sent;
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return round(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024);
}

/** utime + stime of a process, all threads, in seconds (USER_HZ is 100 on Linux). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Cli {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly url: string;
  readonly adminUrl: string;
  /** Every log line except the per-request ones, parsed. */
  readonly events: LogRecord[];
  /** Per-request lines are only counted: at load they are too many to parse here without stealing the CPU. */
  readonly lines: { requests: number; non200: number; cut: number };
  readonly exited: Promise<number | null>;
  stderr(): string;
}

function startCli(configFile: string): Promise<Cli> {
  const child = tracked(
    spawn(process.execPath, [CLI, '--config', configFile], {
      cwd: ROOT,
      env: { ...process.env, SOAK_PROXY_PASSWORD: PASSWORD },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const events: LogRecord[] = [];
  const lines = { requests: 0, non200: 0, cut: 0 };
  let errText = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`CLI did not start within 10 s: ${errText}`)), 10_000);
    child.stderr?.on('data', (chunk: Buffer) => {
      errText += chunk.toString();
    });
    forEachLine(child.stdout, (line) => {
      // Access-log lines are only counted: parsing 10k of them a second would take CPU from the run.
      if (line.includes('"msg":"request"')) {
        lines.requests++;
        if (!line.includes('"status":200,')) lines.non200++;
        if (line.includes('"completed":false')) lines.cut++;
        return;
      }
      let record: LogRecord;
      try {
        record = JSON.parse(line) as LogRecord;
      } catch {
        return;
      }
      events.push(record);
      if (record.msg === 'keystone-auth-proxy started') {
        clearTimeout(timer);
        resolve({
          child,
          pid: child.pid as number,
          url: String(record.listen),
          adminUrl: String(record.admin),
          events,
          lines,
          exited,
          stderr: () => errText,
        });
      }
    });
    exited.then(
      (code) => {
        clearTimeout(timer);
        reject(new Error(`CLI exited with ${code} before starting: ${errText}`));
      },
      () => undefined,
    );
  });
}

function configYaml(keystoneUrl: string, upstreamUrl: string): string {
  // One process: the RSS figures are this process's.
  return `
workers: 1
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${upstreamUrl}", connect_timeout_seconds: 2, response_timeout_seconds: 10 }
admin_listen: { host: 127.0.0.1, port: 0 }
keystone_authtoken:
  www_authenticate_uri: "http://keystone.example:5000"
  auth_url: "${keystoneUrl}"
  auth_type: password
  username: proxy
  password: "\${SOAK_PROXY_PASSWORD}"
  user_domain_name: Default
  project_name: service
  project_domain_name: Default
  service_type: echo
  http_request_timeout_seconds: ${KEYSTONE_TIMEOUT_SECONDS}
  circuit_breaker_failure_threshold: ${BREAKER_THRESHOLD}
  circuit_breaker_open_seconds: ${BREAKER_OPEN_SECONDS}
shutdown: { grace_period_seconds: ${GRACE_SECONDS} }
log: { level: info }
`;
}

const stats = (answers: Answer[]) => {
  const ms = answers.map((a) => a.ms);
  const statuses: Record<string, number> = {};
  for (const a of answers) {
    const key = a.status === 0 ? (a.error ?? 'error') : String(a.status);
    statuses[key] = (statuses[key] ?? 0) + 1;
  }
  return {
    count: answers.length,
    statuses,
    minMs: round(Math.min(...ms)),
    p50Ms: round(quantile(ms, 0.5)),
    maxMs: round(Math.max(...ms)),
    retryAfter: [...new Set(answers.map((a) => a.retryAfter ?? '-'))],
  };
};

const eventTime = (record: LogRecord | undefined): number | undefined =>
  record?.time === undefined ? undefined : Date.parse(record.time);

async function main(): Promise<number> {
  if (!existsSync(CLI)) {
    process.stderr.write('dist/cli.js is missing: run `npm run build` first.\n');
    return 2;
  }
  const wrk = await wrkVersion();
  if (wrk === undefined) {
    process.stderr.write('wrk is not installed. On Debian/Ubuntu: `apt-get install wrk` (then rerun).\n');
    return 2;
  }
  const machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: round(totalmem() / 2 ** 30),
    node: process.version,
    kernel: release(),
    wrk,
    // Anything else running here (other test suites) takes cores from this run: say so.
    loadAverage1m: round(loadavg()[0] ?? 0, 2),
  };
  console.log(
    `soak${SMOKE ? ' (smoke)' : ''}: ${machine.cpus} CPUs (${machine.cpuModel}), ${machine.memoryGiB} GiB, ` +
      `Node ${machine.node}, ${machine.wrk}; load average before the run ${machine.loadAverage1m}`,
  );
  console.log(
    `load generator: wrk -t1 -c${CONNECTIONS}, on the same machine as the proxy, the upstream and Keystone`,
  );

  const results: Record<string, unknown> = {
    startedAt: new Date().toISOString(),
    mode: SMOKE ? 'smoke' : 'full',
    machine,
    config: {
      loadSeconds: SECONDS,
      warmupSeconds: WARMUP_SECONDS,
      connections: CONNECTIONS,
      keystoneTimeoutSeconds: KEYSTONE_TIMEOUT_SECONDS,
      breakerThreshold: BREAKER_THRESHOLD,
      breakerOpenSeconds: BREAKER_OPEN_SECONDS,
      slowRequests: SLOW_REQUESTS,
      slowMs: SLOW_MS,
      graceSeconds: GRACE_SECONDS,
    },
  };
  const rows: Row[] = [];
  const checks: Check[] = [];
  const check = (name: string, ok: boolean, detail: string, gating = true): void => {
    checks.push({ name, ok, gating, detail });
  };

  const body = JSON.stringify({
    servers: Array.from({ length: 8 }, (_, i) => ({ id: `server-${i}`, status: 'ACTIVE' })),
  });
  let slowActive = 0;
  const upstream = createServer((req, res) => {
    if (req.url?.startsWith('/slow')) {
      slowActive++;
      const timer = setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      }, SLOW_MS);
      res.once('close', () => {
        clearTimeout(timer);
        slowActive--;
      });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  // Longer than any pause between phases: the proxy's pooled sockets are not closed under it mid-run.
  upstream.keepAliveTimeout = 120_000;
  const agent = new Agent({ keepAlive: true });
  let keystone: KeystoneEmulator | undefined;
  try {
    keystone = await startKeystoneEmulator();
    const ks = keystone;
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    const configFile = join(configDir, 'soak.yaml');
    // The config names the password only as ${SOAK_PROXY_PASSWORD}; the file is still private and removed.
    writeFileSync(configFile, configYaml(ks.url, upstreamUrl), { mode: 0o600 });
    // Killed in the finally below with every other child, whatever happens.
    const proxy = await startCli(configFile);
    for (let i = 0; i < 50; i++) {
      const ready = await get(`${proxy.adminUrl}/readyz`, '', false, 2000);
      if (ready.status === 200) break;
      await sleep(100);
    }
    const { users, projects, roles } = fixtures;
    const token = ks.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member, roles.reader],
    });
    const fresh = (): string => ks.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const target = `${proxy.url}/v1/servers`;

    // 1. Load with a cached token.
    const primed = await get(target, token, agent);
    if (primed.status !== 200)
      throw new Error(`priming request answered ${primed.status} ${primed.error ?? ''}`);
    const validatesBefore = ks.count('validate');
    const linesBefore = { ...proxy.lines };
    const idleRss = rssMb(proxy.pid);
    const samples: { t: number; rssMb: number }[] = [];
    const cpuBefore = cpuSeconds(proxy.pid);
    const selfBefore = process.cpuUsage();
    const loadStart = performance.now();
    const loadWrk = runWrk([
      '-t1',
      `-c${CONNECTIONS}`,
      `-d${SECONDS}s`,
      '--latency',
      '-H',
      `X-Auth-Token: ${token}`,
      target,
    ]);
    // wrk's own CPU time, read while it runs (it is gone once it has printed its figures).
    let wrkCpu = { seconds: 0, wall: 1 };
    const sampler = setInterval(() => {
      const t = (performance.now() - loadStart) / 1000;
      samples.push({ t: round(t), rssMb: rssMb(proxy.pid) });
      try {
        wrkCpu = { seconds: cpuSeconds(loadWrk.pid ?? 0), wall: t };
      } catch {
        // wrk has just exited
      }
    }, 1000);
    let load: WrkResult;
    try {
      load = await loadWrk.done;
    } finally {
      clearInterval(sampler);
    }
    const loadWall = (performance.now() - loadStart) / 1000;
    samples.push({ t: round(loadWall), rssMb: rssMb(proxy.pid) });
    const proxyCpu = (cpuSeconds(proxy.pid) - cpuBefore) / loadWall;
    const self = process.cpuUsage(selfBefore);
    const harnessCpu = (self.user + self.system) / 1e6 / loadWall;
    const afterWarmup = samples.find((s) => s.t >= WARMUP_SECONDS) ?? samples[0];
    const endRss = samples[samples.length - 1]?.rssMb ?? Number.NaN;
    const maxRss = Math.max(...samples.map((s) => s.rssMb));
    const growth = round(endRss - (afterWarmup?.rssMb ?? Number.NaN));
    // The heap grows for the first 5-15 s of load until V8's major collections settle it, so one sample can
    // land just before a collection: the second half's range shows the plateau.
    const secondHalf = samples.filter((s) => s.t >= SECONDS / 2).map((s) => s.rssMb);
    const verdict =
      SECONDS < 30
        ? 'not judged: under 30 s of load'
        : Math.abs(growth) <= FLAT_MB
          ? 'flat'
          : growth < 0
            ? 'fell: collected after the warm-up sample, no growth'
            : 'GREW';
    const socketErrors = Object.values(load.socketErrors).reduce((a, b) => a + b, 0);
    const loadResult = {
      wrk: load,
      validateCallsDuringLoad: ks.count('validate') - validatesBefore,
      proxyLogLines: proxy.lines.requests - linesBefore.requests,
      proxyLogLinesNon200: proxy.lines.non200 - linesBefore.non200,
      proxyCpuCores: round(proxyCpu, 2),
      harnessCpuCores: round(harnessCpu, 2),
      wrkCpuCores: round(wrkCpu.seconds / wrkCpu.wall, 2),
      rss: {
        idleMb: idleRss,
        afterWarmupMb: afterWarmup?.rssMb,
        warmupSeconds: afterWarmup?.t,
        endMb: endRss,
        maxMb: maxRss,
        growthMb: growth,
        verdict,
        secondHalfMinMb: Math.min(...secondHalf),
        secondHalfMaxMb: Math.max(...secondHalf),
        samples,
      },
    };
    results.load = loadResult;
    rows.push(
      ['load', `requests in ${load.seconds} s`, String(load.requests)],
      ['load', 'req/s', String(Math.round(load.rps))],
      ['load', 'latency p50 / p99 / max', `${load.p50Ms} / ${load.p99Ms} / ${load.maxMs} ms`],
      ['load', 'non-2xx/3xx', String(load.non2xx3xx)],
      [
        'load',
        'socket errors (connect/read/write/timeout)',
        `${socketErrors} (${Object.values(load.socketErrors).join('/')})`,
      ],
      ['load', 'Keystone validate calls during load', String(loadResult.validateCallsDuringLoad)],
      [
        'load',
        'CPU: proxy / wrk / harness (upstream, Keystone)',
        `${loadResult.proxyCpuCores} / ${loadResult.wrkCpuCores} / ${loadResult.harnessCpuCores} cores`,
      ],
      ['load', 'RSS idle before load', `${idleRss} MB`],
      ['load', `RSS after ${afterWarmup?.t} s warm-up / at end`, `${afterWarmup?.rssMb} / ${endRss} MB`],
      ['load', 'RSS max during load', `${maxRss} MB`],
      ['load', 'RSS end - after warm-up', `${growth} MB (${verdict})`],
      [
        'load',
        `RSS range from ${Math.ceil(SECONDS / 2)} s to the end`,
        `${Math.min(...secondHalf)} - ${Math.max(...secondHalf)} MB`,
      ],
    );
    check(
      'load: every request 2xx, no socket error',
      load.non2xx3xx === 0 && socketErrors === 0 && load.requests > 0,
      `${load.requests} requests, ${load.non2xx3xx} non-2xx/3xx, ${socketErrors} socket errors`,
    );

    // 2. Keystone black-holed: uncached tokens wait out the timeout until the breaker opens, then fail at
    // once.
    ks.setFault('validate', { kind: 'blackhole' });
    const outageStartWall = Date.now();
    const wave = await Promise.all(
      Array.from({ length: BREAKER_THRESHOLD }, () => get(target, fresh(), agent)),
    );
    const whileOpen: Answer[] = [];
    for (let i = 0; i < OPEN_SAMPLES; i++) {
      whileOpen.push(await get(target, fresh(), agent));
      await sleep(PACE_MS);
    }
    const cachedDuringOutage = await get(target, token, agent);
    const openedLog = proxy.events.find(
      (e) => e.msg === 'Keystone circuit breaker open' && (eventTime(e) ?? 0) >= outageStartWall - 1000,
    );
    const waveStats = stats(wave);
    const openStats = stats(whileOpen);
    results.blackhole = {
      firstWave: waveStats,
      whileOpen: openStats,
      cachedTokenDuringOutage: cachedDuringOutage,
    };
    rows.push(
      ['black hole', `first ${BREAKER_THRESHOLD} (concurrent) statuses`, JSON.stringify(waveStats.statuses)],
      [
        'black hole',
        'first 503s latency min / p50 / max',
        `${waveStats.minMs} / ${waveStats.p50Ms} / ${waveStats.maxMs} ms`,
      ],
      ['black hole', 'first 503s Retry-After', waveStats.retryAfter.join(', ')],
      ['black hole', `breaker open: next ${OPEN_SAMPLES} statuses`, JSON.stringify(openStats.statuses)],
      [
        'black hole',
        'breaker open: latency min / p50 / max',
        `${openStats.minMs} / ${openStats.p50Ms} / ${openStats.maxMs} ms`,
      ],
      ['black hole', 'breaker open: Retry-After values', openStats.retryAfter.join(', ')],
      [
        'black hole',
        'cached token during outage',
        `${cachedDuringOutage.status} in ${round(cachedDuringOutage.ms)} ms`,
      ],
    );
    const opened =
      openedLog !== undefined &&
      whileOpen.every((a) => a.status === 503 && a.retryAfter !== undefined) &&
      openStats.p50Ms < 100;
    check(
      'black hole: first 503s after the timeout',
      wave.every((a) => a.status === 503) && waveStats.minMs >= KEYSTONE_TIMEOUT_SECONDS * 1000 * 0.9,
      JSON.stringify(waveStats),
    );
    check(
      'black hole: the breaker opens (instant 503 with Retry-After)',
      opened,
      `open logged: ${openedLog !== undefined}, ${JSON.stringify(openStats)}`,
    );

    // 3. Heal Keystone while the breaker is open; a steady stream of uncached tokens measures when it closes.
    const healAt = performance.now();
    const healWall = Date.now();
    ks.setFault('validate', undefined);
    const pending: Promise<Answer & { sentMs: number }>[] = [];
    let first200: number | undefined;
    let afterFirst = 0;
    for (let i = 0; ; i++) {
      await sleep(healAt + i * PACE_MS - performance.now());
      if (performance.now() - healAt > (BREAKER_OPEN_SECONDS + 3) * 1000) break;
      if (first200 !== undefined && ++afterFirst > 5) break;
      const sentMs = performance.now() - healAt;
      pending.push(
        get(target, fresh(), agent).then((a) => {
          if (a.status === 200 && first200 === undefined) first200 = a.at - healAt;
          return { ...a, sentMs };
        }),
      );
    }
    const healed = await Promise.all(pending);
    await sleep(100);
    const closedLog = proxy.events.find(
      (e) => e.msg === 'Keystone circuit breaker closed' && (eventTime(e) ?? 0) >= healWall - 1000,
    );
    const openTime = eventTime(openedLog);
    const closeTime = eventTime(closedLog);
    const firstOk = healed.findIndex((a) => a.status === 200);
    const afterClose = firstOk === -1 ? [] : healed.slice(firstOk);
    const breaker = {
      openedBeforeHealMs: openTime === undefined ? undefined : healWall - openTime,
      healToFirst200Ms: first200 === undefined ? undefined : round(first200),
      openToClosedMs: openTime === undefined || closeTime === undefined ? undefined : closeTime - openTime,
      healToClosedLogMs: closeTime === undefined ? undefined : closeTime - healWall,
      statusesAfterHeal: stats(healed).statuses,
      afterFirst200: stats(afterClose).statuses,
      halfOpenLogged: proxy.events.some((e) => e.msg === 'Keystone circuit breaker half-open'),
    };
    results.breaker = breaker;
    rows.push(
      ['breaker', 'opened before healing', `${breaker.openedBeforeHealMs} ms`],
      ['breaker', `heal -> first 200 (a request every ${PACE_MS} ms)`, `${breaker.healToFirst200Ms} ms`],
      ['breaker', 'open -> closed (proxy log times)', `${breaker.openToClosedMs} ms`],
      ['breaker', 'statuses after healing', JSON.stringify(breaker.statusesAfterHeal)],
      ['breaker', 'from the first 200 on', JSON.stringify(breaker.afterFirst200)],
    );
    check(
      'breaker: closes once Keystone heals, within circuit_breaker_open_seconds',
      first200 !== undefined &&
        closedLog !== undefined &&
        (breaker.openToClosedMs ?? Number.POSITIVE_INFINITY) <= BREAKER_OPEN_SECONDS * 1000 + 1000 &&
        afterClose.every((a) => a.status === 200),
      JSON.stringify(breaker),
    );

    // 4. SIGTERM under load: wrk and a keep-alive client on the fast path, slow requests held ~1 s upstream.
    const drainLines = { ...proxy.lines };
    const exit: { code: number | null | 'timeout'; at: number } = { code: 'timeout', at: Number.NaN };
    const loop = keepAliveLoop(target, token, KEEPALIVE_CONNECTIONS, () => !Number.isNaN(exit.at));
    const drainWrk = runWrk([
      '-t1',
      `-c${DRAIN_CONNECTIONS}`,
      `-d${DRAIN_WRK_SECONDS}s`,
      '-H',
      `X-Auth-Token: ${token}`,
      target,
    ]);
    await sleep(500);
    const slow = Array.from({ length: SLOW_REQUESTS }, () => get(`${proxy.url}/slow`, token, false, 20_000));
    // In flight for sure: authenticated and forwarded, the upstream holds every one of them.
    const waitUntil = performance.now() + 5000;
    while (slowActive < SLOW_REQUESTS && performance.now() < waitUntil) await sleep(5);
    const slowHeld = slowActive;
    const sigtermAt = performance.now();
    const linesAtSigterm = proxy.lines.requests;
    proxy.child.kill('SIGTERM');
    const exitWatch = proxy.exited.then((code) => {
      exit.code = code;
      exit.at = performance.now();
    });
    // New connections after SIGTERM: the listener is closed, so these are expected to be refused.
    const probes: Promise<Answer>[] = [];
    while (Number.isNaN(exit.at) && performance.now() - sigtermAt < (GRACE_SECONDS + 5) * 1000) {
      probes.push(get(target, token, false, 5000));
      await sleep(PACE_MS);
    }
    await Promise.race([exitWatch, sleep(1000)]);
    if (exit.code === 'timeout') proxy.child.kill('SIGKILL');
    const slowAnswers = await Promise.all(slow);
    const probeAnswers = await Promise.all(probes);
    const drainLoad = await drainWrk.done;
    const looped = await loop;
    const before = looped.filter((a) => a.sentAt < sigtermAt);
    const after = looped.filter((a) => a.sentAt >= sigtermAt);
    // Refused: a new connection after the listener closed (expected). Anything else that is not a 200 was
    // written to a connection the proxy had accepted and then closed without an answer: lost.
    const lost = looped.filter((a) => a.status !== 200 && a.error !== 'ECONNREFUSED');
    const draining = proxy.events.find((e) => e.msg === 'draining');
    const stopped = proxy.events.find((e) => e.msg === 'stopped');
    const slowOk = slowAnswers.filter((a) => a.status === 200).length;
    const sigterm = {
      slowHeldByUpstreamAtSigterm: slowHeld,
      proxyInFlightAtSigterm: draining?.inFlight,
      slow: stats(slowAnswers),
      slowOk,
      slowFailed: slowAnswers.length - slowOk,
      proxyLinesCut: proxy.lines.cut - drainLines.cut,
      proxyRequestsCompletedAfterSigterm: proxy.lines.requests - linesAtSigterm,
      stoppedUnfinished: stopped?.unfinished,
      sigtermToExitMs: round(exit.at - sigtermAt),
      exitCode: exit.code,
      newConnectionsAfterSigterm: stats(probeAnswers).statuses,
      keepAlive: {
        connections: KEEPALIVE_CONNECTIONS,
        sentBeforeSigterm: stats(before).statuses,
        sentAfterSigterm: stats(after).statuses,
        lost: lost.length,
        lostRequests: lost.map((a) => ({
          sentMsAfterSigterm: round(a.sentAt - sigtermAt),
          failedAfterMs: round(a.ms),
          error: a.error,
        })),
      },
      wrk: drainLoad,
    };
    results.sigterm = sigterm;
    const drainErrors = drainLoad.socketErrors;
    rows.push(
      [
        'SIGTERM',
        'in flight at SIGTERM (proxy / slow ones held upstream)',
        `${sigterm.proxyInFlightAtSigterm} / ${slowHeld}`,
      ],
      ['SIGTERM', `slow requests (${SLOW_MS} ms) OK / failed`, `${slowOk} / ${sigterm.slowFailed}`],
      ['SIGTERM', 'slow requests latency min / max', `${sigterm.slow.minMs} / ${sigterm.slow.maxMs} ms`],
      ['SIGTERM', 'requests cut by the proxy (log: completed false)', String(sigterm.proxyLinesCut)],
      [
        'SIGTERM',
        'requests answered after SIGTERM (proxy log)',
        String(sigterm.proxyRequestsCompletedAfterSigterm),
      ],
      ['SIGTERM', '"stopped" unfinished', String(sigterm.stoppedUnfinished)],
      ['SIGTERM', 'SIGTERM -> exit / exit code', `${sigterm.sigtermToExitMs} ms / ${String(exit.code)}`],
      [
        'SIGTERM',
        `new connections after SIGTERM (every ${PACE_MS} ms)`,
        JSON.stringify(sigterm.newConnectionsAfterSigterm),
      ],
      [
        'SIGTERM',
        `wrk -c${DRAIN_CONNECTIONS}: requests / non-2xx`,
        `${drainLoad.requests} / ${drainLoad.non2xx3xx}`,
      ],
      ['SIGTERM', 'wrk socket errors connect/read/write/timeout', Object.values(drainErrors).join('/')],
      [
        'SIGTERM',
        `keep-alive client (${KEEPALIVE_CONNECTIONS} conns): sent before SIGTERM`,
        JSON.stringify(sigterm.keepAlive.sentBeforeSigterm),
      ],
      [
        'SIGTERM',
        'keep-alive client: sent after SIGTERM',
        JSON.stringify(sigterm.keepAlive.sentAfterSigterm),
      ],
      ['SIGTERM', 'keep-alive client: lost (accepted, never answered)', String(lost.length)],
    );
    check(
      'SIGTERM: every in-flight request completes',
      slowHeld === SLOW_REQUESTS &&
        slowOk === SLOW_REQUESTS &&
        sigterm.proxyLinesCut === 0 &&
        sigterm.stoppedUnfinished === 0,
      `${slowOk}/${SLOW_REQUESTS} slow OK, ${sigterm.proxyLinesCut} cut, ` +
        `unfinished ${sigterm.stoppedUnfinished}`,
    );
    // A request written in the same instant the proxy closes an idle keep-alive connection at SIGTERM is the
    // HTTP/1.1 race every client must retry; anything lost later means answers kept connections alive while
    // draining (they must say `Connection: close`).
    const lostLater = lost.filter((a) => a.sentAt - sigtermAt > RACE_MS);
    check(
      `SIGTERM: no request lost on a keep-alive connection later than ${RACE_MS} ms after the signal`,
      lostLater.length === 0,
      `${lostLater.length} written to an open connection and never answered: ` +
        `${JSON.stringify(stats(lostLater).statuses)}` +
        `; answered on kept-alive connections after SIGTERM: ${after.filter((a) => a.status === 200).length}`,
    );
    check(
      'SIGTERM: the CLI exits 0',
      exit.code === 0,
      `exit ${String(exit.code)}, stderr: ${proxy.stderr().trim()}`,
    );
  } catch (error) {
    check('the run completed', false, (error as Error).stack ?? String(error));
  } finally {
    for (const child of children) child.kill('SIGKILL');
    agent.destroy();
    upstream.closeAllConnections();
    await new Promise<void>((resolve) => upstream.close(() => resolve()));
    await keystone?.close();
  }

  printTable(rows);
  const passed = checks.every((c) => c.ok || !c.gating);
  for (const c of checks) {
    console.log(`${c.ok ? 'ok  ' : c.gating ? 'FAIL' : 'WARN'} ${c.name}${c.ok ? '' : `: ${c.detail}`}`);
  }
  results.checks = checks;
  results.passed = passed;
  results.finishedAt = new Date().toISOString();
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(RESULTS, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nwritten: bench/results/soak.json${passed ? '' : ' (FAILED)'}`);
  return passed ? 0 : 1;
}

type Row = [string, string, string];

function printTable(rows: Row[]): void {
  const width = (i: 0 | 1 | 2): number => Math.max(...rows.map((r) => r[i].length), 5);
  const line = (r: Row): string =>
    `| ${r[0].padEnd(width(0))} | ${r[1].padEnd(width(1))} | ${r[2].padEnd(width(2))} |`;
  console.log(`\n${line(['phase', 'figure', 'value'])}`);
  console.log(`|${'-'.repeat(width(0) + 2)}|${'-'.repeat(width(1) + 2)}|${'-'.repeat(width(2) + 2)}|`);
  for (const r of rows) console.log(line(r));
  console.log('');
}

// Ctrl-C: leave no proxy or wrk behind (the servers of this process go with it).
process.once('SIGINT', () => {
  for (const child of children) child.kill('SIGKILL');
  rmSync(configDir, { recursive: true, force: true });
  process.exit(130);
});

const started = performance.now();
let code = 1;
try {
  code = await main();
} finally {
  rmSync(configDir, { recursive: true, force: true });
}
console.log(`soak finished in ${round((performance.now() - started) / 1000)} s`);
process.exit(code);
