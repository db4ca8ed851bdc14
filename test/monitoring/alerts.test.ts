/**
 * The shipped alerts fire on what a real proxy exports when things really go wrong, not only on promtool's
 * synthetic series: a real Prometheus evaluates deploy/prometheus/rules.yml (with every `for:` shortened to 0 s, the
 * only change, so the test waits for seconds instead of minutes) against a running CLI while the Keystone emulator
 * turns slow, then fails, and finally the proxy stops; and on listeners whose certificates (made with openssl) expire
 * in 5 days or expired yesterday. Each step polls Prometheus' /api/v1/alerts until the alert
 * fires (deadline 30 s); nothing sleeps to assert timing.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { opensslAvailable, TestPki } from '../helpers/certificates.js';
import { type CliRun, cliBuilt, sidecarYaml, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import {
  eventually,
  type Prometheus,
  prometheusConfig,
  RULES_FILE,
  skipWithoutPrometheus,
  startPrometheus,
} from '../helpers/prometheus.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };

interface Alert {
  labels: Record<string, string>;
  state: 'pending' | 'firing';
}

const skip = !cliBuilt() || skipWithoutPrometheus();

describe.skipIf(skip)(
  'the shipped alerts against a real proxy and a real Prometheus',
  { timeout: 60_000 },
  () => {
    let keystone: KeystoneEmulator;
    let upstream: Running;
    let prometheus: Prometheus;
    let proxy: CliRun;
    let rulesDir: string;

    beforeAll(async () => {
      keystone = await startKeystoneEmulator();
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      const yaml = sidecarYaml({
        keystoneUrl: keystone.url,
        upstreamUrl: upstream.url,
        responseTimeoutSeconds: 5,
        // Room for the slow validations below (1.2 s) to succeed rather than time out.
        keystoneTimeoutSeconds: 3,
        authtoken: ['revocation_poll_interval_seconds: 0'],
        rest: 'workers: 1\n',
      });
      proxy = await startCli(['--config', writeConfig(yaml)], ENV);
      rulesDir = mkdtempSync(join(tmpdir(), 'kap-alerts-'));
      const rules = readFileSync(RULES_FILE, 'utf8');
      const immediate = rules.replace(/^(\s+)for: \S+$/gm, '$1for: 0s');
      expect(immediate).not.toBe(rules);
      writeFileSync(join(rulesDir, 'rules.yml'), immediate);
      const target = { address: new URL(proxy.adminUrl).host, labels: {} };
      prometheus = await startPrometheus(prometheusConfig([target], [join(rulesDir, 'rules.yml')]));
    }, 90_000);
    afterAll(async () => {
      await prometheus?.stop();
      await proxy?.stop();
      await upstream?.close();
      await keystone?.close();
      if (rulesDir) rmSync(rulesDir, { recursive: true, force: true });
    });

    async function firing(): Promise<string[]> {
      const { alerts } = await prometheus.api<{ alerts: Alert[] }>('alerts');
      return [
        ...new Set(alerts.filter((a) => a.state === 'firing').map((a) => a.labels.alertname as string)),
      ].sort();
    }

    /** Requests with new tokens (each one a Keystone validation); returns the statuses. */
    async function newTokenRequests(count: number): Promise<number[]> {
      const statuses: number[] = [];
      for (let i = 0; i < count; i++) {
        const token = keystone.issueToken({
          user: users.demo,
          scope: { project: projects.demo },
          roles: [roles.member],
        });
        const res = await fetch(`${proxy.url}/v1`, { headers: { 'x-auth-token': token } });
        await res.text();
        statuses.push(res.status);
      }
      return statuses;
    }

    /** Sends traffic in rounds until every alert in `expected` fires (rate() needs increments between scrapes). */
    async function driveUntilFiring(expected: string[], round: () => Promise<unknown>): Promise<string[]> {
      let last: string[] = [];
      return eventually(
        `alerts ${expected.join(', ')} firing`,
        async () => {
          await round();
          last = await firing();
          return expected.every((name) => last.includes(name)) ? last : undefined;
        },
        30,
        () => `firing: ${JSON.stringify(last)}`,
      );
    }

    it('a healthy proxy with traffic: nothing fires', async () => {
      expect(await newTokenRequests(3)).toEqual([200, 200, 200]);
      await eventually('the target scraped', async () =>
        (await prometheus.query('up == 1')).length ? true : undefined,
      );
      // Every rule evaluated at least once since the scrape, with nothing firing.
      await eventually('rules evaluated', async () => {
        const { groups } = await prometheus.api<{ groups: { rules: { lastEvaluation: string }[] }[] }>(
          'rules',
        );
        return groups.flatMap((g) => g.rules).every((r) => !r.lastEvaluation.startsWith('0001-'))
          ? true
          : undefined;
      });
      expect(await firing()).toEqual([]);
    });

    it('Keystone validations taking 1.2 s fire KeystoneAuthProxyValidationSlow, and only that', async () => {
      keystone.setFault('validate', { kind: 'delay', ms: 1200 });
      const alerts = await driveUntilFiring(['KeystoneAuthProxyValidationSlow'], () => newTokenRequests(1));
      expect(alerts).toEqual(['KeystoneAuthProxyValidationSlow']);
    });

    it('Keystone answering 503 fires Keystone unavailable, Keystone errors, breaker open and 5xx ratio', async () => {
      keystone.setFault('validate', { kind: 'status', status: 503 });
      const expected = [
        'KeystoneAuthProxyCircuitOpen',
        'KeystoneAuthProxyHigh5xxRatio',
        'KeystoneAuthProxyKeystoneErrors',
        'KeystoneAuthProxyKeystoneUnavailable',
      ];
      // 5xx ratio needs more than 0.1 requests/s over 5 minutes: 10 requests a round (503 at once once the breaker
      // has opened).
      const alerts = await driveUntilFiring(expected, async () => {
        const statuses = await newTokenRequests(10);
        expect(new Set(statuses)).toEqual(new Set([503]));
      });
      expect(alerts).toEqual(expect.arrayContaining(expected));
      expect(alerts).not.toContain('KeystoneAuthProxyDown');
    });

    it('the proxy stopped fires KeystoneAuthProxyDown', async () => {
      keystone.setFault('validate', undefined);
      await proxy.stop();
      const alerts = await driveUntilFiring(['KeystoneAuthProxyDown'], async () => undefined);
      expect(alerts).toContain('KeystoneAuthProxyDown');
    });
  },
);

describe.skipIf(skip || !opensslAvailable())(
  'the certificate alerts against real TLS listeners',
  { timeout: 60_000 },
  () => {
    let keystone: KeystoneEmulator;
    let upstream: Running;
    let prometheus: Prometheus;
    let proxy: CliRun;
    let rulesDir: string;

    beforeAll(async () => {
      keystone = await startKeystoneEmulator();
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      const pki = new TestPki();
      const soon = pki.issue('expires-soon', { days: 5 });
      const expired = pki.issue('expired', { days: -1 });
      const yaml = sidecarYaml({
        keystoneUrl: keystone.url,
        upstreamUrl: upstream.url,
        responseTimeoutSeconds: 5,
        keystoneTimeoutSeconds: 1,
        authtoken: ['revocation_poll_interval_seconds: 0'],
        // The admin listener stays plain http: Prometheus scrapes it without a CA.
        rest: `workers: 1
forward_auth:
  enabled: true
  listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${expired.cert}, keyfile: ${expired.key} } }
`,
      }).replace(
        /^listen: \{ host: 127\.0\.0\.1, port: 0 \}$/m,
        `listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${soon.cert}, keyfile: ${soon.key} } }`,
      );
      expect(yaml).toContain(soon.cert);
      proxy = await startCli(['--config', writeConfig(yaml)], ENV);
      rulesDir = mkdtempSync(join(tmpdir(), 'kap-alerts-'));
      writeFileSync(
        join(rulesDir, 'rules.yml'),
        readFileSync(RULES_FILE, 'utf8').replace(/^(\s+)for: \S+$/gm, '$1for: 0s'),
      );
      const target = { address: new URL(proxy.adminUrl).host, labels: {} };
      prometheus = await startPrometheus(prometheusConfig([target], [join(rulesDir, 'rules.yml')]));
    }, 90_000);
    afterAll(async () => {
      await prometheus?.stop();
      await proxy?.stop();
      await upstream?.close();
      await keystone?.close();
      if (rulesDir) rmSync(rulesDir, { recursive: true, force: true });
    });

    it('5 days left on the proxied port fires ExpiresSoon for it; expired on forward-auth fires Expired for that one', async () => {
      let last: Alert[] = [];
      const alerts = await eventually(
        'both certificate alerts firing',
        async () => {
          const { alerts: all } = await prometheus.api<{ alerts: Alert[] }>('alerts');
          last = all.filter((a) => a.state === 'firing');
          return last.length >= 2 ? last : undefined;
        },
        30,
        () => `firing: ${JSON.stringify(last.map((a) => a.labels))}`,
      );
      expect(alerts.map((a) => [a.labels.alertname, a.labels.listener]).sort()).toEqual([
        ['KeystoneAuthProxyCertificateExpired', 'forward_auth'],
        ['KeystoneAuthProxyCertificateExpiresSoon', 'proxy'],
      ]);
    });
  },
);
