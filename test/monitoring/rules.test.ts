/**
 * deploy/prometheus/rules.yml through Prometheus' own tool: `promtool check rules` (syntax, templates) and
 * `promtool test rules deploy/prometheus/rules.test.yml` (each alert fires on its input series and stays quiet on
 * the healthy ones). A failing unit test shows promtool's expected/got in the assertion message.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { RULES_FILE, RULES_TEST_FILE, runPromtool, skipWithoutPrometheus } from '../helpers/prometheus.js';
import { ruleExpressions } from '../helpers/promql-names.js';

interface RulesTest {
  tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[];
}

describe.skipIf(skipWithoutPrometheus())('Prometheus rules (promtool)', () => {
  it('promtool check rules accepts deploy/prometheus/rules.yml', async () => {
    const { code, output } = await runPromtool(['check', 'rules', RULES_FILE]);
    expect({ code, output }).toMatchObject({
      code: 0,
      output: expect.stringMatching(/SUCCESS: 15 rules found/),
    });
  });

  it('promtool test rules passes deploy/prometheus/rules.test.yml', async () => {
    const { code, output } = await runPromtool(['test', 'rules', RULES_TEST_FILE]);
    expect({ code, output }).toMatchObject({ code: 0, output: expect.stringMatching(/SUCCESS/) });
  });

  it('the unit tests make every alert fire at least once and stay quiet at least once', () => {
    const alerts = ruleExpressions(RULES_FILE)
      .expressions.map(({ where }) => where.match(/ alert (\w+)$/)?.[1])
      .filter((name): name is string => name !== undefined);
    const cases = (parse(readFileSync(RULES_TEST_FILE, 'utf8')) as RulesTest).tests.flatMap(
      (test) => test.alert_rule_test ?? [],
    );
    const coverage = alerts.map((alert) => ({
      alert,
      fires: cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0),
      quiet: cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0),
    }));
    expect(coverage).toEqual(alerts.map((alert) => ({ alert, fires: true, quiet: true })));
    expect(alerts.length).toBe(8);
  });

  it('promtool test rules fails when an alert does not fire as expected', async () => {
    // The same tests with one expectation turned around: proves the suite above can fail.
    const broken = readFileSync(RULES_TEST_FILE, 'utf8').replace(
      /(alertname: KeystoneAuthProxyCircuitOpen\n\s+exp_alerts:) \[\]/,
      '$1\n          - exp_labels: { severity: critical, job: keystone-auth-proxy, instance: bad }',
    );
    expect(broken).not.toBe(readFileSync(RULES_TEST_FILE, 'utf8'));
    const dir = mkdtempSync(join(tmpdir(), 'kap-rules-'));
    try {
      copyFileSync(RULES_FILE, join(dir, 'rules.yml'));
      writeFileSync(join(dir, 'rules.test.yml'), broken);
      const { code, output } = await runPromtool(['test', 'rules', join(dir, 'rules.test.yml')]);
      expect(code).not.toBe(0);
      expect(output).toMatch(/FAILED[\s\S]*KeystoneAuthProxyCircuitOpen, time: 2m/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
