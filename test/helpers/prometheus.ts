/**
 * A real Prometheus for the monitoring suites, started through scripts/prometheus-local.sh (Debian's package) on a
 * free loopback port with a data directory of its own, and queried through its HTTP API.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from './cli.js';

const run = promisify(execFile);
export const PROMETHEUS_BIN = '/usr/bin/prometheus';
export const PROMTOOL_BIN = '/usr/bin/promtool';
export const SCRIPT = join(ROOT, 'scripts', 'prometheus-local.sh');
export const RULES_FILE = join(ROOT, 'deploy', 'prometheus', 'rules.yml');
export const RULES_TEST_FILE = join(ROOT, 'deploy', 'prometheus', 'rules.test.yml');
export const DASHBOARD_FILE = join(ROOT, 'deploy', 'grafana', 'keystone-auth-proxy.json');

export const prometheusAvailable = existsSync(PROMETHEUS_BIN) && existsSync(PROMTOOL_BIN);
/** CI (and MONITORING_REQUIRED=1) turn a missing Prometheus into a failure instead of a skipped suite. */
export const monitoringRequired = process.env.MONITORING_REQUIRED === '1' || Boolean(process.env.CI);

/** Throws when Prometheus is required but missing; true when the suite must be skipped. */
export function skipWithoutPrometheus(): boolean {
  if (prometheusAvailable) return false;
  if (monitoringRequired) {
    throw new Error(
      `MONITORING_REQUIRED=1 or CI set, but ${PROMETHEUS_BIN} or ${PROMTOOL_BIN} is missing: bash scripts/prometheus-local.sh install`,
    );
  }
  return true;
}

/** Runs promtool (its exit code and everything it printed); `stdin` for `check metrics`. */
export function runPromtool(args: string[], stdin?: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(PROMTOOL_BIN, args, { cwd: ROOT });
    let output = '';
    const collect = (chunk: Buffer): void => {
      output += chunk.toString();
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    child.on('error', (error) => resolve({ code: 127, output: String(error) }));
    child.on('close', (code) => resolve({ code: code ?? 1, output }));
    child.stdin.end(stdin ?? '');
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface Prometheus {
  readonly url: string;
  /** An instant query; throws with Prometheus' error text when the expression is refused. */
  query(expr: string): Promise<PromSample[]>;
  /** GET /api/v1/<path>, the `data` member. */
  api<T>(path: string): Promise<T>;
  stop(): Promise<void>;
}

export interface ScrapeTarget {
  /** host:port of an admin listener. */
  readonly address: string;
  readonly labels: Record<string, string>;
}

/** A Prometheus config: one job `keystone-auth-proxy` (the name rules.yml expects), scraping every second. */
export function prometheusConfig(targets: readonly ScrapeTarget[], ruleFiles: readonly string[]): string {
  const statics = targets
    .map((t) => `      - targets: ['${t.address}']\n        labels: ${JSON.stringify(t.labels)}`)
    .join('\n');
  return `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
${ruleFiles.map((file) => `  - ${JSON.stringify(file)}`).join('\n')}
scrape_configs:
  - job_name: keystone-auth-proxy
    metrics_path: /metrics
    static_configs:
${statics}
`;
}

export async function startPrometheus(config: string): Promise<Prometheus> {
  const dir = mkdtempSync(join(tmpdir(), 'kap-prom-'));
  const port = await freePort();
  const env = { ...process.env, PROMETHEUS_PORT: String(port), PROMETHEUS_LOCAL_DIR: dir };
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, config);
  try {
    await run('bash', [SCRIPT, 'start', configFile], { env, cwd: ROOT });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    const { stderr } = error as { stderr?: string };
    throw new Error(`scripts/prometheus-local.sh start ${configFile} failed: ${stderr ?? String(error)}`);
  }
  const url = `http://127.0.0.1:${port}`;
  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}/api/v1/${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`Prometheus ${path}: ${body.error ?? res.status}`);
    return body.data;
  };
  return {
    url,
    api,
    query: async (expr) => {
      const data = await api<{ resultType: string; result: PromSample[] | [number, string] }>(
        `query?query=${encodeURIComponent(expr)}`,
      );
      // A scalar result (e.g. time()) is one value without labels.
      return data.resultType === 'scalar'
        ? [{ metric: {}, value: data.result as [number, string] }]
        : (data.result as PromSample[]);
    },
    stop: async () => {
      await run('bash', [SCRIPT, 'stop'], { env, cwd: ROOT });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Polls until `check` returns a value other than undefined, or throws after `seconds` with the last value seen:
 * scrapes and rule evaluations happen on Prometheus' schedule, so tests wait for a state, never for a time.
 */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  seconds = 30,
  describeLast: () => string = () => '',
): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${what}: not within ${seconds} s. ${describeLast()} ${lastError ? String(lastError) : ''}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
