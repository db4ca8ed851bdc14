/**
 * A real Prometheus (Debian's, through scripts/prometheus-local.sh) scrapes the admin listener of two running CLIs,
 * one process and a `workers: 2` host, with deploy/prometheus/rules.yml loaded. Everything is read back through
 * Prometheus' HTTP API: the targets are up, the rules evaluate without error, the request, validation and cache
 * counters moved by exactly the traffic sent (with workers, the primary's /metrics counts the host once), the
 * recording rules produce series, and every dashboard and rule expression is a query Prometheus accepts.
 * Scrapes every second; the assertions poll the API until the state holds (deadline 30 s), never sleep.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, sidecarYaml, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import {
  DASHBOARD_FILE,
  eventually,
  type Prometheus,
  prometheusConfig,
  RULES_FILE,
  skipWithoutPrometheus,
  startPrometheus,
} from '../helpers/prometheus.js';
import {
  dashboardExpressions,
  metricNamesOf,
  ruleExpressions,
  sampledNames,
  withGrafanaVariables,
} from '../helpers/promql-names.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const JOB = 'keystone-auth-proxy';
const MODES = ['single', 'cluster'] as const;
type Mode = (typeof MODES)[number];
const VALID = 5;
const INVALID = 3;

const skip = !cliBuilt() || skipWithoutPrometheus();

describe.skipIf(skip)(
  'a real Prometheus scraping the proxy (one process and workers: 2)',
  { timeout: 60_000 },
  () => {
    let keystone: KeystoneEmulator;
    let upstream: Running;
    let prometheus: Prometheus;
    const proxies = new Map<Mode, CliRun>();

    beforeAll(async () => {
      keystone = await startKeystoneEmulator();
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      for (const mode of MODES) {
        const yaml = sidecarYaml({
          keystoneUrl: keystone.url,
          upstreamUrl: upstream.url,
          responseTimeoutSeconds: 5,
          keystoneTimeoutSeconds: 1,
          // Polls every second, so the revocation panels have data.
          authtoken: ['revocation_poll_interval_seconds: 1'],
          rest: `workers: ${mode === 'single' ? 1 : 2}\n`,
        });
        proxies.set(mode, await startCli(['--config', writeConfig(yaml)], ENV));
      }
      const targets = MODES.map((mode) => ({
        address: new URL(proxy(mode).adminUrl).host,
        labels: { deployment: mode },
      }));
      prometheus = await startPrometheus(prometheusConfig(targets, [RULES_FILE]));
    }, 90_000);
    afterAll(async () => {
      await prometheus?.stop();
      await Promise.all([...proxies.values()].map((p) => p.stop()));
      await upstream?.close();
      await keystone?.close();
    });

    function proxy(mode: Mode): CliRun {
      const run = proxies.get(mode);
      if (run === undefined) throw new Error(`no proxy for ${mode}`);
      return run;
    }

    /** One value per deployment label of an instant query (absent deployments: undefined). */
    async function byDeployment(expr: string): Promise<Partial<Record<Mode, number>>> {
      const samples = await prometheus.query(`sum by (deployment) (${expr})`);
      return Object.fromEntries(samples.map((s) => [s.metric.deployment, Number(s.value[1])]));
    }

    /** Waits until Prometheus holds the series for both deployments, and returns their values. */
    async function scrapedValues(expr: string): Promise<Record<Mode, number>> {
      return eventually(`both deployments of ${expr}`, async () => {
        const values = await byDeployment(expr);
        return MODES.every((mode) => values[mode] !== undefined)
          ? (values as Record<Mode, number>)
          : undefined;
      });
    }

    it('both admin listeners are up targets of job keystone-auth-proxy', async () => {
      interface Target {
        labels: Record<string, string>;
        scrapeUrl: string;
        health: string;
        lastError: string;
      }
      const targets = await eventually('both targets up', async () => {
        const { activeTargets } = await prometheus.api<{ activeTargets: Target[] }>('targets?state=active');
        return activeTargets.length === 2 && activeTargets.every((t) => t.health === 'up')
          ? activeTargets
          : undefined;
      });
      expect(
        targets.map((t) => ({ job: t.labels.job, deployment: t.labels.deployment, url: t.scrapeUrl })),
      ).toEqual(
        expect.arrayContaining(
          MODES.map((mode) => ({ job: JOB, deployment: mode, url: `${proxy(mode).adminUrl}/metrics` })),
        ),
      );
      expect(await scrapedValues(`up{job="${JOB}"}`)).toEqual({ single: 1, cluster: 1 });
      // One build for both; with workers: 2 the workers' build_info is aggregated as one series ("first").
      expect(await scrapedValues(`keystone_auth_proxy_build_info{job="${JOB}"}`)).toEqual({
        single: 1,
        cluster: 1,
      });
    });

    it('every rule of deploy/prometheus/rules.yml is loaded and evaluates without error', async () => {
      interface Rule {
        name: string;
        health: string;
        lastError?: string;
        lastEvaluation: string;
      }
      const rules = await eventually('every rule evaluated', async () => {
        const { groups } = await prometheus.api<{ groups: { name: string; rules: Rule[] }[] }>('rules');
        const all = groups.flatMap((g) => g.rules);
        return all.length === 15 && all.every((r) => !r.lastEvaluation.startsWith('0001-')) ? all : undefined;
      });
      expect(rules.filter((r) => r.health !== 'ok')).toEqual([]);
      // A healthy pair of proxies: nothing is firing.
      const firing = await prometheus.query('ALERTS{alertstate="firing"}');
      expect(firing.map((s) => s.metric.alertname)).toEqual([]);
    });

    it('request, validation and cache counters move by exactly the traffic sent, counted once per host', async () => {
      const series = {
        confirmed: 'keystone_auth_proxy_http_requests_total{decision="confirmed", code_class="2xx"}',
        rejected: 'keystone_auth_proxy_http_requests_total{decision="rejected", code_class="4xx"}',
        authConfirmed: 'keystone_auth_proxy_auth_decisions_total{result="confirmed"}',
        notFound: 'keystone_auth_proxy_auth_decisions_total{result="not_found"}',
        validations: 'keystone_auth_proxy_keystone_requests_total{operation="validate"}',
        validationDurations:
          'keystone_auth_proxy_keystone_request_duration_seconds_count{operation="validate"}',
        requestDurations: 'keystone_auth_proxy_http_request_duration_seconds_count',
        cacheHits: 'keystone_auth_proxy_token_cache_requests_total{result=~"hit"}',
      };
      // Values as Prometheus last scraped them, before the traffic (absent series count as 0).
      await scrapedValues(`up{job="${JOB}"}`);
      const before: Record<string, Partial<Record<Mode, number>>> = {};
      for (const [key, expr] of Object.entries(series)) before[key] = await byDeployment(expr);

      for (const mode of MODES) {
        const tokens = Array.from({ length: VALID }, () =>
          keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] }),
        );
        // Each valid token twice: the second request of each is a cache hit (the host's cache or a worker's L1).
        for (const token of [...tokens, ...tokens]) {
          const res = await fetch(`${proxy(mode).url}/v1`, {
            headers: { 'x-auth-token': token, connection: 'close' },
          });
          await res.text();
          expect(res.status).toBe(200);
        }
        for (let i = 0; i < INVALID; i++) {
          const res = await fetch(`${proxy(mode).url}/v1`, {
            headers: { 'x-auth-token': `gAAAAA-not-a-token-${mode}-${i}`, connection: 'close' },
          });
          await res.text();
          expect(res.status).toBe(401);
        }
      }

      // Both workers of the cluster served some of it: the host's figures below add up two processes' counters.
      await eventually('request log lines of both workers', async () => {
        const pids = new Set(
          proxy('cluster')
            .logs.filter((l) => l.msg === 'request')
            .map((l) => l.pid),
        );
        return pids.size === 2 ? pids : undefined;
      });

      const expected: Record<keyof typeof series, number> = {
        confirmed: 2 * VALID,
        rejected: INVALID,
        authConfirmed: 2 * VALID,
        notFound: INVALID,
        // One Keystone validation per token for the host, also through two workers.
        validations: VALID + INVALID,
        validationDurations: VALID + INVALID,
        requestDurations: 2 * VALID + INVALID,
        cacheHits: VALID,
      };
      let last: Record<string, Partial<Record<Mode, number>>> = {};
      const moved = async (): Promise<Record<string, Partial<Record<Mode, number>>>> => {
        const deltas: Record<string, Partial<Record<Mode, number>>> = {};
        for (const [key, expr] of Object.entries(series)) {
          const now = await byDeployment(expr);
          deltas[key] = Object.fromEntries(
            MODES.map((mode) => [mode, (now[mode] ?? 0) - (before[key]?.[mode] ?? 0)]),
          );
        }
        last = deltas;
        return deltas;
      };
      const want = Object.fromEntries(
        Object.entries(expected).map(([key, value]) => [key, { single: value, cluster: value }]),
      );
      await eventually(
        'counters moved by the traffic',
        async () => {
          const deltas = await moved();
          return JSON.stringify(deltas) === JSON.stringify(want) ? deltas : undefined;
        },
        30,
        () => `last deltas: ${JSON.stringify(last)}`,
      );
      expect(last).toEqual(want);
    });

    it('the recording rules produce series for both deployments', async () => {
      for (const record of [
        'instance:keystone_auth_proxy_http_requests:rate5m',
        'instance:keystone_auth_proxy_http_requests_5xx:ratio_rate5m',
        'instance:keystone_auth_proxy_keystone_validate_duration_seconds:p99_rate5m',
        'instance:keystone_auth_proxy_token_cache_hit:ratio_rate5m',
      ]) {
        const samples = await eventually(`${record} for both instances`, async () => {
          const result = await prometheus.query(record);
          return result.length === 2 ? result : undefined;
        });
        expect(samples.map((s) => s.metric.job)).toEqual([JOB, JOB]);
      }
      // rate() sees increments between two scrapes only: the requests above created their series (the first
      // scrape may already hold all of them), so send more now and wait for both rates to rise above zero.
      for (const mode of MODES) {
        const token = keystone.issueToken({
          user: users.demo,
          scope: { project: projects.demo },
          roles: [roles.member],
        });
        for (let i = 0; i < 3; i++) {
          const res = await fetch(`${proxy(mode).url}/v1`, {
            headers: { 'x-auth-token': token, connection: 'close' },
          });
          await res.text();
        }
      }
      const rates = await eventually('request rate above zero for both', async () => {
        const result = await prometheus.query('instance:keystone_auth_proxy_http_requests:rate5m > 0');
        return result.length === 2 ? result : undefined;
      });
      expect(rates.length).toBe(2);
    });

    it('every dashboard and rule expression is a query Prometheus accepts; those on exported metrics have data', async () => {
      const scraped = new Set<string>();
      for (const mode of MODES) {
        for (const name of sampledNames(await (await fetch(`${proxy(mode).adminUrl}/metrics`)).text()))
          scraped.add(name);
      }
      const recorded = ruleExpressions(RULES_FILE).recorded;
      const expressions = [
        ...dashboardExpressions(DASHBOARD_FILE),
        ...ruleExpressions(RULES_FILE).expressions,
      ];
      const refused: { where: string; error: string }[] = [];
      const empty: string[] = [];
      for (const { where, expr } of expressions) {
        const query = withGrafanaVariables(expr, { job: JOB, instance: '.*', __rate_interval: '1m' });
        try {
          const result = await prometheus.query(query);
          // Alert expressions are empty while healthy; panels on series with samples (not memcached or TLS here,
          // neither is configured) must show data.
          const names = metricNamesOf(expr);
          const hasData = names.every(
            (name) => scraped.has(name) || name === 'up' || recorded.includes(name),
          );
          if (!where.includes(' alert ') && hasData && result.length === 0) empty.push(where);
        } catch (error) {
          refused.push({ where, error: String(error) });
        }
      }
      expect(refused).toEqual([]);
      expect(empty).toEqual([]);
    });
  },
);
