#!/usr/bin/env node
// Prints deploy/prometheus/rules.yml (or the file given) as a Prometheus Operator PrometheusRule, so the rules
// have one source: `node scripts/prometheus-rule.mjs | kubectl apply -f -`.
//   node scripts/prometheus-rule.mjs [rules.yml] [--name keystone-auth-proxy]
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function fail(message) {
  process.stderr.write(`prometheus-rule: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const options = { file: join(root, 'deploy', 'prometheus', 'rules.yml'), name: 'keystone-auth-proxy' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--name') options.name = argv[++i] ?? fail('--name needs a value');
    else options.file = argv[i];
  }
  return options;
}

function readGroups(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    fail(`cannot read ${file}: ${error.message}`);
  }
  let doc;
  try {
    doc = parse(text);
  } catch (error) {
    fail(`${file}: invalid YAML: ${error.message.split('\n')[0]}`);
  }
  if (!Array.isArray(doc?.groups) || doc.groups.length === 0)
    fail(`${file}: expected a non-empty "groups" list`);
  for (const [i, group] of doc.groups.entries()) {
    if (typeof group?.name !== 'string' || !Array.isArray(group.rules)) {
      fail(`${file}: groups[${i}] needs a name and a rules list`);
    }
  }
  return doc.groups;
}

const { file, name } = parseArgs(process.argv.slice(2));
const rule = {
  apiVersion: 'monitoring.coreos.com/v1',
  kind: 'PrometheusRule',
  metadata: { name, labels: { 'app.kubernetes.io/name': 'nova-api', 'app.kubernetes.io/component': name } },
  spec: { groups: readGroups(file) },
};
process.stdout.write(
  `# Generated from ${file.startsWith(root) ? file.slice(root.length + 1) : file}\n${stringify(rule)}`,
);
