// Validates the output of `kubectl kustomize deploy/kubernetes` offline:
//   node validate.cjs RENDERED.yaml [--extract DIR]
// 1. every object against its Kubernetes schema (kubernetes-models), and no field the schema does not know
//    (the schemas accept unknown fields, so a misspelt key such as `readinesProbe` would pass them: the
//    fields each validator reads are recorded and the rest reported);
// 2. what the relay's deployment needs: the references between the objects resolve (ConfigMap, Secret and
//    its keys, the probes' port), the selectors pick the pods, two replicas, the probes and the locked-down
//    security context;
// 3. with --extract, writes the ConfigMap's appointment-relay.toml and, as NAME=value lines in env, the
//    variables the container gets from the Secret, for `appointment-relay check-config`.
// Exit 0 when everything holds, 1 with one line per problem otherwise.
'use strict';

const fs = require('fs');
const path = require('path');
const YAML = require('yaml');

const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

function modelClass(apiVersion, kind) {
  // kubernetes-models/<group>/<version>/<Kind>, the core group as kubernetes-models/v1/<Kind>.
  if (!/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion || '') || !/^[A-Z][A-Za-z0-9]*$/.test(kind || ''))
    return null;
  try {
    return require(`kubernetes-models/${apiVersion}/${kind}`)[kind];
  } catch (e) {
    if (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_PACKAGE_PATH_NOT_EXPORTED') return null;
    throw e;
  }
}

// Wraps value in proxies that record which keys are read; map-like objects (labels, resources) are read by
// enumeration and marked as such.
function tracked(value, where, records) {
  if (value === null || typeof value !== 'object') return value;
  const record = { where, value, read: new Set(), enumerated: false };
  records.push(record);
  const copy = Array.isArray(value)
    ? value.map((v, i) => tracked(v, `${where}/${i}`, records))
    : Object.fromEntries(Object.entries(value).map(([k, v]) => [k, tracked(v, `${where}/${k}`, records)]));
  return new Proxy(copy, {
    get(target, key, receiver) {
      if (typeof key === 'string') record.read.add(key);
      return Reflect.get(target, key, receiver);
    },
    has(target, key) {
      if (typeof key === 'string') record.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function validateSchema(obj, name) {
  const Model = modelClass(obj.apiVersion, obj.kind);
  if (!Model) {
    problem(name, `no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    return;
  }
  const records = [];
  const plain = new Model(obj).toJSON();
  try {
    Model.prototype.validate.call(tracked(plain, '', records));
  } catch (e) {
    for (const line of String(e.message).split('\n')) if (line.trim()) problem(name, line.trim());
    return;
  }
  const unknown = [];
  for (const r of records) {
    if (r.enumerated || Array.isArray(r.value)) continue;
    for (const key of Object.keys(r.value)) if (!r.read.has(key)) unknown.push(`${r.where}/${key}`);
  }
  // Only the outermost: what lies under an unknown field is unknown too.
  for (const u of unknown)
    if (!unknown.some((o) => u.startsWith(`${o}/`))) problem(name, `unknown field ${u}`);
}

function matches(selector, labels) {
  return Object.entries(selector || {}).every(([k, v]) => (labels || {})[k] === v);
}

function checkRelay(objects) {
  const byKind = (kind) => objects.filter((o) => o.kind === kind);
  const find = (kind, name) => objects.find((o) => o.kind === kind && o.metadata && o.metadata.name === name);
  const deployments = byKind('Deployment');
  if (deployments.length !== 1) {
    problem('render', `expected one Deployment, found ${deployments.length}`);
    return null;
  }
  const d = deployments[0];
  const where = `Deployment/${d.metadata.name}`;
  const spec = d.spec || {};
  const pod = (spec.template || {}).spec || {};
  const podLabels = ((spec.template || {}).metadata || {}).labels;
  if (spec.replicas !== 2) problem(where, `replicas is ${spec.replicas}, expected 2 (a leader and a standby)`);
  if (!matches((spec.selector || {}).matchLabels, podLabels))
    problem(where, 'selector does not match the pod template labels');
  for (const kind of ['PodDisruptionBudget', 'Service']) {
    const objs = byKind(kind);
    if (objs.length === 0) problem('render', `no ${kind}`);
    for (const o of objs) {
      const sel = kind === 'Service' ? o.spec.selector : (o.spec.selector || {}).matchLabels;
      if (!sel || !matches(sel, podLabels))
        problem(`${kind}/${o.metadata.name}`, "selector does not select the Deployment's pods");
    }
  }
  for (const pdb of byKind('PodDisruptionBudget'))
    if (pdb.spec.minAvailable !== 1 && pdb.spec.maxUnavailable !== 1)
      problem(`PodDisruptionBudget/${pdb.metadata.name}`, 'expected minAvailable 1 or maxUnavailable 1');

  const podSec = pod.securityContext || {};
  if (pod.containers === undefined || pod.containers.length !== 1) {
    problem(where, 'expected one container');
    return null;
  }
  const c = pod.containers[0];
  const cw = `${where} container ${c.name}`;
  const sec = c.securityContext || {};
  if (!(sec.runAsNonRoot || podSec.runAsNonRoot)) problem(cw, 'runAsNonRoot is not set');
  if ((sec.runAsUser ?? podSec.runAsUser) === 0) problem(cw, 'runs as root');
  if (sec.readOnlyRootFilesystem !== true) problem(cw, 'readOnlyRootFilesystem is not true');
  if (sec.allowPrivilegeEscalation !== false) problem(cw, 'allowPrivilegeEscalation is not false');
  if (!((sec.capabilities || {}).drop || []).includes('ALL')) problem(cw, 'capabilities do not drop ALL');
  const res = c.resources || {};
  for (const r of ['cpu', 'memory'])
    if (!(res.requests || {})[r]) problem(cw, `no ${r} request`);
  if (!(res.limits || {}).memory) problem(cw, 'no memory limit');

  const ports = Object.fromEntries((c.ports || []).map((p) => [p.name, p.containerPort]));
  if (ports.admin !== 9187) problem(cw, 'no port named admin on 9187');
  for (const svc of byKind('Service'))
    for (const p of svc.spec.ports || []) {
      const target = p.targetPort ?? p.port;
      if (!(typeof target === 'number' ? Object.values(ports).includes(target) : target in ports))
        problem(`Service/${svc.metadata.name}`, `port ${p.name}: targetPort ${target} is no port of the container`);
    }
  for (const [probe, want] of [['livenessProbe', '/healthz'], ['readinessProbe', null]]) {
    const get = (c[probe] || {}).httpGet;
    if (!get) {
      problem(cw, `no ${probe} with httpGet`);
      continue;
    }
    if (want && get.path !== want) problem(cw, `${probe} path is ${get.path}, expected ${want}`);
    if (!['/healthz', '/readyz'].includes(get.path)) problem(cw, `${probe} path ${get.path} is not served`);
    if (get.port !== 'admin' && get.port !== 9187) problem(cw, `${probe} port ${get.port} is not the admin port`);
  }

  // References: the ConfigMap volume, and each variable from a Secret (key present).
  let configMap = null;
  for (const v of pod.volumes || []) {
    if (!v.configMap) continue;
    configMap = find('ConfigMap', v.configMap.name);
    if (!configMap) problem(where, `volume ${v.name}: no ConfigMap ${v.configMap.name} in the render`);
  }
  if (!configMap) problem(where, 'no ConfigMap volume');
  const env = {};
  for (const e of c.env || []) {
    if (!e.name.startsWith('APPOINTMENT_RELAY_')) problem(cw, `variable ${e.name} is not read by the relay`);
    if (e.value !== undefined) {
      env[e.name] = e.value;
      continue;
    }
    const ref = (e.valueFrom || {}).secretKeyRef;
    if (!ref) continue;
    const secret = find('Secret', ref.name);
    const data = secret && { ...(secret.stringData || {}), ...decoded(secret.data) };
    if (!secret) problem(cw, `${e.name}: no Secret ${ref.name} in the render`);
    else if (data[ref.key] === undefined) problem(cw, `${e.name}: Secret ${ref.name} has no key ${ref.key}`);
    else env[e.name] = data[ref.key];
  }
  const mount = (c.volumeMounts || []).find((m) => configMap && pod.volumes.some((v) => v.name === m.name && v.configMap));
  const configArg = (c.args || []).indexOf('--config');
  const configPath = configArg >= 0 ? c.args[configArg + 1] : null;
  if (!mount || !configPath || path.dirname(configPath) !== mount.mountPath)
    problem(cw, '--config does not name a file in the ConfigMap mount');
  const toml = configMap && configPath && (configMap.data || {})[path.basename(configPath)];
  if (configMap && configPath && toml === undefined)
    problem(where, `ConfigMap ${configMap.metadata.name} has no ${path.basename(configPath)}`);
  return { toml, env };
}

function decoded(data) {
  return Object.fromEntries(Object.entries(data || {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
}

function main(argv) {
  const file = argv[0];
  const extract = argv[1] === '--extract' ? argv[2] : null;
  if (!file || (argv.length > 1 && !extract)) {
    console.error('usage: node validate.cjs RENDERED.yaml [--extract DIR]');
    return 2;
  }
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'));
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      for (const e of doc.errors) problem(file, e.message);
      continue;
    }
    const obj = doc.toJS();
    if (obj !== null) objects.push(obj);
  }
  for (const obj of objects) {
    const name = `${obj.kind}/${(obj.metadata || {}).name}`;
    validateSchema(obj, name);
  }
  const relay = checkRelay(objects);
  if (extract && relay && relay.toml !== undefined) {
    fs.mkdirSync(extract, { recursive: true });
    fs.writeFileSync(path.join(extract, 'appointment-relay.toml'), relay.toml);
    fs.writeFileSync(
      path.join(extract, 'env'),
      Object.entries(relay.env).map(([k, v]) => `${k}=${v}\n`).join(''),
    );
  }
  for (const p of problems) console.log(p);
  const kinds = objects.map((o) => `${o.kind}/${(o.metadata || {}).name}`).join(', ');
  console.log(`${objects.length} objects (${kinds}): ${problems.length ? `${problems.length} problem(s)` : 'valid'}`);
  return problems.length ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
