/** scripts/prometheus-rule.mjs: deploy/prometheus/rules.yml as a PrometheusRule, bad input named by its path. */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ROOT } from '../helpers/cli.js';

const SCRIPT = join(ROOT, 'scripts', 'prometheus-rule.mjs');
const dir = mkdtempSync(join(tmpdir(), 'kap-rules-'));

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT, ...args], (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout, stderr });
    });
  });
}

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('scripts/prometheus-rule.mjs', () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('wraps the groups of a rules file, unchanged, in a PrometheusRule', async () => {
    const rules = file(
      'rules.yml',
      'groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n',
    );
    const { code, stdout } = await run([rules, '--name', 'kap']);
    expect(code).toBe(0);
    const rule = parse(stdout);
    expect(rule).toMatchObject({ apiVersion: 'monitoring.coreos.com/v1', kind: 'PrometheusRule' });
    expect(rule.metadata.name).toBe('kap');
    expect(rule.spec.groups).toEqual([{ name: 'g', rules: [{ alert: 'A', expr: 'up == 0', for: '5m' }] }]);
  });

  it('names the file when it is missing or has no groups', async () => {
    const missing = join(dir, 'absent.yml');
    const absent = await run([missing]);
    expect([absent.code, absent.stderr]).toEqual([1, expect.stringContaining(`cannot read ${missing}`)]);
    const empty = file('empty.yml', 'rules: []\n');
    const noGroups = await run([empty]);
    expect([noGroups.code, noGroups.stderr]).toEqual([1, expect.stringContaining(`${empty}: expected`)]);
  });

  it.skipIf(!existsSync(join(ROOT, 'deploy', 'prometheus', 'rules.yml')))(
    "converts the project's own deploy/prometheus/rules.yml",
    async () => {
      const { code, stdout, stderr } = await run([]);
      expect(code, stderr).toBe(0);
      expect(parse(stdout).spec.groups.length).toBeGreaterThan(0);
    },
  );
});
