/**
 * The metric names a PromQL expression reads, and the expressions of the shipped rules and dashboard, so the
 * monitoring suites can check every name against what the proxy really exports.
 *
 * Prometheus 2.42 has no API that returns a parsed expression, so this is a small tokenizer. It fails on any
 * function it does not know rather than guess: a name it cannot classify must never pass unchecked.
 */
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

const FUNCTIONS = new Set([
  // aggregation operators
  'sum',
  'min',
  'max',
  'avg',
  'group',
  'stddev',
  'stdvar',
  'count',
  'count_values',
  'bottomk',
  'topk',
  'quantile',
  // functions used, or likely to be, in proxy dashboards
  'abs',
  'absent',
  'absent_over_time',
  'avg_over_time',
  'ceil',
  'changes',
  'clamp',
  'clamp_max',
  'clamp_min',
  'count_over_time',
  'delta',
  'deriv',
  'floor',
  'histogram_quantile',
  'idelta',
  'increase',
  'irate',
  'label_replace',
  'last_over_time',
  'max_over_time',
  'min_over_time',
  'predict_linear',
  'rate',
  'resets',
  'round',
  'scalar',
  'sort',
  'sort_desc',
  'sum_over_time',
  'time',
  'timestamp',
  'vector',
]);
/** Keywords that look like names: binary set operators, `bool`, `offset`, number literals. */
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/** Every metric name `expr` selects (recording rule names included), in order of first appearance. */
export function metricNamesOf(expr: string): string[] {
  const stripped = expr
    // strings first: a label value may hold braces, brackets or parentheses
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    // label lists of grouping and vector matching: label names, not metrics
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\b(?:group_left|group_right)\b/g, ' ');
  const names: string[] = [];
  for (const match of stripped.matchAll(/(?<![\w.$:])[a-zA-Z_:][\w:]*/g)) {
    const word = match[0];
    const after = stripped.slice((match.index ?? 0) + word.length);
    if (/^\s*\(/.test(after)) {
      if (!FUNCTIONS.has(word))
        throw new Error(`unknown PromQL function or aggregation "${word}" in: ${expr}`);
      continue;
    }
    if (KEYWORDS.has(word.toLowerCase())) continue;
    if (!names.includes(word)) names.push(word);
  }
  return names;
}

export interface ShippedExpression {
  /** Where it comes from, for messages: `rules.yml alert KeystoneAuthProxyDown`, `dashboard panel "…" A`. */
  readonly where: string;
  readonly expr: string;
}

interface RuleFile {
  groups: { name: string; rules: { record?: string; alert?: string; expr: string }[] }[];
}

export function ruleExpressions(file: string): { expressions: ShippedExpression[]; recorded: string[] } {
  let doc: RuleFile;
  try {
    doc = parse(readFileSync(file, 'utf8')) as RuleFile;
  } catch (error) {
    throw new Error(`${file}: not a readable YAML rule file: ${String(error)}`);
  }
  const expressions: ShippedExpression[] = [];
  const recorded: string[] = [];
  for (const group of doc.groups ?? []) {
    for (const rule of group.rules ?? []) {
      if (typeof rule.expr !== 'string') throw new Error(`${file}: group ${group.name}: a rule without expr`);
      if (rule.record) recorded.push(rule.record);
      const kind = rule.record ? `record ${rule.record}` : `alert ${rule.alert}`;
      expressions.push({ where: `${file} ${kind}`, expr: rule.expr });
    }
  }
  return { expressions, recorded };
}

interface DashboardPanel {
  title?: string;
  panels?: DashboardPanel[];
  targets?: { expr?: string; refId?: string }[];
}
interface Dashboard {
  panels?: DashboardPanel[];
  templating?: { list?: { name: string; query?: string | { query?: string } }[] };
}

/** Grafana's `$__rate_interval`, `$job`, `$instance` replaced by what a query can run with. */
export function withGrafanaVariables(expr: string, values: Record<string, string>): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, values.__rate_interval ?? '1m')
    .replace(/\$\{?(\w+)\}?/g, (whole, name: string) => values[name] ?? whole);
}

export function dashboardExpressions(file: string): ShippedExpression[] {
  let doc: Dashboard;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8')) as Dashboard;
  } catch (error) {
    throw new Error(`${file}: not valid JSON: ${String(error)}`);
  }
  const expressions: ShippedExpression[] = [];
  const walk = (panels: DashboardPanel[] | undefined): void => {
    for (const panel of panels ?? []) {
      for (const target of panel.targets ?? []) {
        if (typeof target.expr !== 'string' || target.expr.trim() === '') {
          throw new Error(`${file}: panel "${panel.title}" target ${target.refId}: no expr`);
        }
        expressions.push({ where: `${file} panel "${panel.title}" ${target.refId}`, expr: target.expr });
      }
      walk(panel.panels);
    }
  };
  walk(doc.panels);
  for (const variable of doc.templating?.list ?? []) {
    const query = typeof variable.query === 'string' ? variable.query : variable.query?.query;
    // label_values(<series selector>, <label>) is Grafana's, not PromQL: its selector is the expression.
    const selector = query?.match(/^label_values\((.+),\s*\w+\)$/)?.[1];
    if (selector !== undefined) {
      expressions.push({ where: `${file} variable ${variable.name}`, expr: selector });
    }
  }
  return expressions;
}

/** Series names a /metrics exposition text serves: histograms and summaries as Prometheus stores them. */
export function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const match of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = match as unknown as [string, string, string];
    if (type === 'histogram') {
      for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
    } else if (type === 'summary') {
      for (const suffix of ['', '_sum', '_count']) names.add(name + suffix);
    } else {
      names.add(name);
    }
  }
  return names;
}

/** Series names that have at least one sample in a /metrics text (a TYPE line alone is not data). */
export function sampledNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const match of text.matchAll(/^([a-zA-Z_:][\w:]*)(?:\{| )/gm)) names.add(match[1] as string);
  return names;
}

/**
 * Metric names defined in src/observability/metrics.ts (`new Histogram({ name: name('…') …`), with the prefix:
 * the metrics the proxy can export, also those that only appear once a feature (TLS, memcached) is configured.
 */
export function definedNames(source: string, prefix: string): Set<string> {
  const names = new Set<string>();
  for (const match of source.matchAll(/new (Counter|Gauge|Histogram|Summary)\(\{\s*name: name\('(\w+)'\)/g)) {
    const [, type, suffix] = match as unknown as [string, string, string];
    const name = `${prefix}_${suffix}`;
    if (type === 'Histogram') {
      for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    } else {
      names.add(name);
    }
  }
  return names;
}
