/**
 * The shipped rules (deploy/prometheus/rules.yml) and dashboard (deploy/grafana/keystone-auth-proxy.json) read only
 * metrics the proxy exports: every metric name of every expression is checked against a real /metrics scrape of the
 * CLI (one process and `workers: 2`) and the definitions in src/observability/metrics.ts. promtool lints the
 * scrapes. Needs no Prometheus server, only promtool for the lint.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, ROOT, sidecarYaml, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { DASHBOARD_FILE, RULES_FILE, runPromtool, skipWithoutPrometheus } from '../helpers/prometheus.js';
import {
  dashboardExpressions,
  definedNames,
  exposedNames,
  metricNamesOf,
  ruleExpressions,
  type ShippedExpression,
} from '../helpers/promql-names.js';
import { createUpstream } from '../helpers/upstream.js';

const PREFIX = 'keystone_auth_proxy';
const ENV = { TEST_PROXY_PASSWORD: fixtures.users.proxy.password as string };
/** Series Prometheus writes itself for every target. */
const PROMETHEUS_SERIES = new Set(['up']);
function unknownNames(
  expressions: readonly ShippedExpression[],
  known: (name: string) => boolean,
): { where: string; name: string }[] {
  return expressions.flatMap(({ where, expr }) =>
    metricNamesOf(expr)
      .filter((name) => !known(name))
      .map((name) => ({ where, name })),
  );
}

describe('PromQL metric names', () => {
  it('finds the metrics of an expression, not its functions, labels, groupings or durations', () => {
    expect(
      metricNamesOf(
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{code_class="5xx", x=~"a|b{1}"}[5m]))) / on (job) group_left (le) b > 0 and c offset 5m',
      ),
    ).toEqual(['a_bucket', 'b', 'c']);
    expect(metricNamesOf('0 < (x_seconds - time()) < 14 * 86400')).toEqual(['x_seconds']);
    expect(metricNamesOf('sum(rate(m_total[$__rate_interval])) by (instance) or vector(0)')).toEqual([
      'm_total',
    ]);
    expect(metricNamesOf('instance:foo:rate5m > 1e3 unless absent(up)')).toEqual([
      'instance:foo:rate5m',
      'up',
    ]);
  });

  it('refuses a function it does not know instead of guessing', () => {
    expect(() => metricNamesOf('made_up(x)')).toThrow(/unknown PromQL function or aggregation "made_up"/);
  });

  it('reads the definitions of src/observability/metrics.ts, histograms as their three series', () => {
    const defined = definedNames(readFileSync(join(ROOT, 'src/observability/metrics.ts'), 'utf8'), PREFIX);
    expect(defined).toContain(`${PREFIX}_http_requests_total`);
    expect(defined).toContain(`${PREFIX}_keystone_request_duration_seconds_bucket`);
    expect(defined).toContain(`${PREFIX}_keystone_request_duration_seconds_count`);
    expect(defined).toContain(`${PREFIX}_memcached_operations_total`);
  });
});

describe('the Grafana dashboard file', () => {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a JS template
  const DATASOURCE = '${datasource}';
  interface Panel {
    id: number;
    type: string;
    title: string;
    gridPos: { x: number; y: number; w: number; h: number };
    datasource?: { uid: string };
    targets?: { datasource?: { uid: string } }[];
  }
  const dashboard = JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as {
    uid: string;
    panels: Panel[];
    templating: { list: { name: string }[] };
  };

  it('has a stable uid, the datasource/job/instance variables, and every query on the chosen data source', () => {
    expect(dashboard.uid).toBe('keystone-auth-proxy');
    expect(dashboard.templating.list.map((v) => v.name)).toEqual(['datasource', 'job', 'instance']);
    const queries = dashboard.panels.filter((p) => p.type !== 'row');
    expect(queries.filter((p) => p.datasource?.uid !== DATASOURCE).map((p) => p.title)).toEqual([]);
    const targets = queries.flatMap((p) => p.targets ?? []);
    expect(targets.filter((t) => t.datasource?.uid !== DATASOURCE)).toEqual([]);
  });

  it('panels have unique ids and fit the 24-column grid without overlapping', () => {
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Map<string, string>();
    const clashes: string[] = [];
    for (const { title, gridPos } of dashboard.panels) {
      expect({ title, fits: gridPos.x >= 0 && gridPos.x + gridPos.w <= 24 }).toEqual({ title, fits: true });
      for (let x = gridPos.x; x < gridPos.x + gridPos.w; x++) {
        for (let y = gridPos.y; y < gridPos.y + gridPos.h; y++) {
          const owner = cells.get(`${x},${y}`);
          if (owner !== undefined) clashes.push(`${title} / ${owner}`);
          cells.set(`${x},${y}`, title);
        }
      }
    }
    expect([...new Set(clashes)]).toEqual([]);
  });
});

const skip = !cliBuilt() || skipWithoutPrometheus();

describe.skipIf(skip)('rules and dashboard against a real /metrics scrape', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  const proxies: CliRun[] = [];
  const scrapes: { mode: string; text: string }[] = [];

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    for (const workers of [1, 2]) {
      const yaml = sidecarYaml({
        keystoneUrl: keystone.url,
        upstreamUrl: upstream.url,
        responseTimeoutSeconds: 5,
        keystoneTimeoutSeconds: 1,
        rest: `workers: ${workers}\n`,
      });
      const proxy = await startCli(['--config', writeConfig(yaml)], ENV);
      proxies.push(proxy);
      // One request through the proxy, so the labelled series a first request creates are in the scrape too.
      const token = keystone.issueToken({ user: fixtures.users.demo });
      await (await fetch(`${proxy.url}/v1`, { headers: { 'x-auth-token': token } })).text();
      const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text();
      scrapes.push({ mode: `workers: ${workers}`, text });
    }
  }, 60_000);
  afterAll(async () => {
    await Promise.all(proxies.map((proxy) => proxy.stop()));
    await upstream?.close();
    await keystone?.close();
  });

  const source = readFileSync(join(ROOT, 'src/observability/metrics.ts'), 'utf8');
  const rules = ruleExpressions(RULES_FILE);
  const dashboard = dashboardExpressions(DASHBOARD_FILE);

  function known(name: string): boolean {
    if (PROMETHEUS_SERIES.has(name) || rules.recorded.includes(name)) return true;
    if (scrapes.some(({ text }) => exposedNames(text).has(name))) return true;
    // Defined but not in these scrapes: metrics of features not configured here (memcached, TLS).
    return definedNames(source, PREFIX).has(name);
  }

  it('the shipped files have expressions to check', () => {
    expect(rules.expressions.length).toBeGreaterThanOrEqual(15);
    expect(dashboard.length).toBeGreaterThanOrEqual(30);
    expect(scrapes.map(({ mode }) => mode)).toEqual(['workers: 1', 'workers: 2']);
  });

  it('every metric name in deploy/prometheus/rules.yml is exported (or defined) by the proxy', () => {
    expect(unknownNames(rules.expressions, known)).toEqual([]);
  });

  it('every metric name in the Grafana dashboard is exported (or defined) by the proxy', () => {
    expect(unknownNames(dashboard, known)).toEqual([]);
  });

  it('the check finds a name the proxy does not export', () => {
    const made = [{ where: 'made up', expr: `sum(rate(${PREFIX}_http_requests_totl[5m]))` }];
    expect(unknownNames(made, known)).toEqual([{ where: 'made up', name: `${PREFIX}_http_requests_totl` }]);
  });

  it('every metric family of metrics.ts is on the dashboard or in the rules', () => {
    const names = [...rules.expressions, ...dashboard].flatMap(({ expr }) => metricNamesOf(expr));
    const proxyNames = new Set(names.filter((name) => name.startsWith(`${PREFIX}_`)));
    // Every metric family of metrics.ts appears in the dashboard or the rules (histograms by any of their series).
    const families = [...source.matchAll(/name: name\('(\w+)'\)/g)].map((m) => `${PREFIX}_${m[1]}`);
    const series = (family: string) => [family, `${family}_bucket`, `${family}_sum`, `${family}_count`];
    const missing = families.filter((family) => !series(family).some((name) => proxyNames.has(name)));
    expect(missing).toEqual([]);
  });

  it('promtool check metrics finds nothing to say about the proxy metrics', async () => {
    for (const { mode, text } of scrapes) {
      const { code, output } = await runPromtool(['check', 'metrics'], text);
      // prom-client's default process gauges nodejs_active_*_total break the _total convention; not ours to rename.
      const problems = output
        .split('\n')
        .filter((line) => line !== '' && !/^nodejs_active_\w+_total /.test(line));
      expect({ mode, problems }).toEqual({ mode, problems: [] });
      // 0: clean; 3: lint problems only (all of them prom-client's, above); anything else is a parse error.
      expect([0, 3]).toContain(code);
    }
  });
});
