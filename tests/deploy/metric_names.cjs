// Every metric that the Grafana dashboard and the alert rules use must be exported by a live relay:
//   node metric_names.cjs --list DASHBOARD.json RULES.yml            the metric names and labels they use
//   node metric_names.cjs --check METRICS.txt DASHBOARD.json RULES.yml
// METRICS.txt is a scrape of a running relay's /metrics. --check fails, naming each one, on a metric without
// a sample in it, and on a label that a selector matches on but no sample of that metric has (a panel that
// would stay empty). Needs the npm package yaml (NODE_PATH). Run by scripts/check-deploy.sh metrics.
'use strict';

const fs = require('fs');
const YAML = require('yaml');

// Series that Prometheus makes itself, not the relay.
const FROM_PROMETHEUS = new Set(['up']);
const KEYWORDS = new Set([
  'and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool',
  'inf', 'nan', 'atan2',
]);
const GROUPING = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const TOKEN = new RegExp(
  [
    /"(?:\\.|[^"\\])*"/.source, // strings
    /'(?:\\.|[^'\\])*'/.source,
    /`[^`]*`/.source,
    /\{[^}]*\}/.source, // label matchers
    /\[[^\]]*\]/.source, // ranges and subqueries
    /\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*/.source, // durations (offset 15m)
    /\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/.source, // numbers
    /[A-Za-z_:][A-Za-z0-9_:]*/.source, // identifiers
    /\S/.source,
  ].join('|'),
  'g',
);

// The metric selectors of a PromQL expression: [{name, labels}], labels being the names matched on.
function selectors(expr) {
  const tokens = (expr.match(TOKEN) || []).map((t) => t);
  const out = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (!/^[A-Za-z_:][A-Za-z0-9_:]*$/.test(t)) {
      if (t.startsWith('{')) out.push({ name: null, labels: matcherLabels(t) }); // {job="x"} alone
      continue;
    }
    const next = tokens[i + 1];
    if (GROUPING.has(t)) {
      if (next === '(') i = closing(tokens, i + 1); // the label list
      continue;
    }
    // A keyword, a function, or an aggregation ("sum (", "sum by (job) (")
    if (KEYWORDS.has(t) || next === '(' || next === 'by' || next === 'without') continue;
    out.push({ name: t, labels: next && next.startsWith('{') ? matcherLabels(next) : [] });
  }
  return out.filter((s) => s.name !== null);
}

function closing(tokens, open) {
  let depth = 0;
  for (let i = open; i < tokens.length; i++) {
    if (tokens[i] === '(') depth++;
    else if (tokens[i] === ')' && --depth === 0) return i;
  }
  return tokens.length;
}

function matcherLabels(block) {
  const inner = block.slice(1, -1).replace(/"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`/g, '""');
  return [...inner.matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)/g)].map((m) => m[1]);
}

// Grafana's template variable queries: label_values(SELECTOR, LABEL), query_result(EXPR), or an expression.
function variableSelectors(query) {
  const lv = /^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$/s.exec(query);
  if (lv) return selectors(lv[1]).map((s) => ({ ...s, labels: [...s.labels, lv[2]] }));
  if (/^\s*label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$/.test(query)) return [];
  const qr = /^\s*query_result\((.*)\)\s*$/s.exec(query);
  return selectors(qr ? qr[1] : query);
}

function used(dashboardFile, rulesFile) {
  const uses = [];
  const add = (where, list) => list.forEach((s) => uses.push({ ...s, where }));
  const dashboard = JSON.parse(fs.readFileSync(dashboardFile, 'utf8'));
  const walk = (panels) => {
    for (const p of panels || []) {
      for (const t of p.targets || []) if (t.expr) add(`panel "${p.title}"`, selectors(t.expr));
      walk(p.panels); // panels of a collapsed row
    }
  };
  walk(dashboard.panels);
  for (const v of (dashboard.templating || {}).list || []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : (v.query || {}).query;
    if (q) add(`variable $${v.name}`, variableSelectors(q));
  }
  const rules = YAML.parse(fs.readFileSync(rulesFile, 'utf8'));
  for (const g of rules.groups || [])
    for (const r of g.rules || []) add(`rule ${r.alert || r.record}`, selectors(String(r.expr)));
  return uses;
}

// Sample names and the label names seen on each, from the text exposition format.
function scraped(metricsFile) {
  const labels = new Map();
  for (const line of fs.readFileSync(metricsFile, 'utf8').split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s/.exec(line);
    if (!m) continue;
    if (!labels.has(m[1])) labels.set(m[1], new Set());
    for (const l of m[2] ? matcherLabels(m[2]) : []) labels.get(m[1]).add(l);
  }
  return labels;
}

function main(argv) {
  if (argv[0] === '--list' && argv.length === 3) {
    const byName = new Map();
    for (const u of used(argv[1], argv[2])) {
      if (!byName.has(u.name)) byName.set(u.name, new Set());
      u.labels.forEach((l) => byName.get(u.name).add(l));
    }
    for (const [name, ls] of [...byName].sort()) console.log(`${name} ${[...ls].sort().join(',')}`);
    return 0;
  }
  if (argv[0] !== '--check' || argv.length !== 4) {
    console.error('usage: node metric_names.cjs --list DASHBOARD RULES | --check METRICS DASHBOARD RULES');
    return 2;
  }
  const exported = scraped(argv[1]);
  const uses = used(argv[2], argv[3]);
  const missing = new Map();
  const badLabels = new Set();
  for (const u of uses) {
    if (FROM_PROMETHEUS.has(u.name)) continue;
    const have = exported.get(u.name);
    if (!have) {
      if (!missing.has(u.name)) missing.set(u.name, new Set());
      missing.get(u.name).add(u.where);
      continue;
    }
    // job and instance are added by Prometheus at scrape time.
    for (const l of u.labels)
      if (l !== 'job' && l !== 'instance' && !have.has(l))
        badLabels.add(`${u.name}: no sample has the label "${l}" (${u.where})`);
  }
  const names = new Set(uses.map((u) => u.name));
  for (const [name, where] of missing)
    console.log(`not exported by the relay: ${name} (used by ${[...where].join(', ')})`);
  for (const b of badLabels) console.log(b);
  console.log(
    `${names.size} metric names used by the dashboard and the rules; ${missing.size} not exported, ` +
      `${badLabels.size} label problem(s)`,
  );
  return missing.size || badLabels.size ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
