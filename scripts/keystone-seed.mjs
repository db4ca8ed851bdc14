// Seeds a freshly bootstrapped Keystone with the fixtures the conformance tests use, through its REST API, and
// writes their ids and secrets to a JSON file. Usage: node keystone-seed.mjs <keystone url> <admin password> <out>
import { writeFileSync } from 'node:fs';

const [url, adminPassword, out] = process.argv.slice(2);
if (!url || !adminPassword || !out) {
  console.error('usage: keystone-seed.mjs <keystone url> <admin password> <fixtures.json>');
  process.exit(2);
}

async function call(method, path, { token, body, expect = [200, 201, 204] } = {}) {
  const res = await fetch(`${url}/v3${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { 'x-auth-token': token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!expect.includes(res.status)) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

async function passwordToken(user, password, scope, domain = { id: 'default' }) {
  const identity = { methods: ['password'], password: { user: { name: user, domain, password } } };
  const res = await call('POST', '/auth/tokens?nocatalog', { body: { auth: { identity, scope } } });
  return res.headers.get('x-subject-token');
}

const admin = await passwordToken('admin', adminPassword, {
  project: { name: 'admin', domain: { id: 'default' } },
});
const list = async (path, key) => (await call('GET', path, { token: admin })).json[key];

async function ensureRole(name) {
  const found = await list(`/roles?name=${name}`, 'roles');
  return (
    found[0]?.id ?? (await call('POST', '/roles', { token: admin, body: { role: { name } } })).json.role.id
  );
}
async function ensureDomain(name) {
  const found = await list(`/domains?name=${name}`, 'domains');
  return (
    found[0]?.id ??
    (await call('POST', '/domains', { token: admin, body: { domain: { name } } })).json.domain.id
  );
}
async function ensureProject(name, domainId) {
  const found = await list(`/projects?name=${name}&domain_id=${domainId}`, 'projects');
  return (
    found[0]?.id ??
    (await call('POST', '/projects', { token: admin, body: { project: { name, domain_id: domainId } } })).json
      .project.id
  );
}
async function ensureUser(name, password, domainId, extra = {}) {
  const found = await list(`/users?name=${name}&domain_id=${domainId}`, 'users');
  if (found[0]) return found[0].id;
  const body = { user: { name, password, domain_id: domainId, ...extra } };
  return (await call('POST', '/users', { token: admin, body })).json.user.id;
}
const grantProject = (projectId, userId, roleId) =>
  call('PUT', `/projects/${projectId}/users/${userId}/roles/${roleId}`, { token: admin });
const grantDomain = (domainId, userId, roleId) =>
  call('PUT', `/domains/${domainId}/users/${userId}/roles/${roleId}`, { token: admin });
const grantSystem = (userId, roleId) =>
  call('PUT', `/system/users/${userId}/roles/${roleId}`, { token: admin });

// Zed's bootstrap makes admin, member and reader, but no service role.
const roles = {
  admin: await ensureRole('admin'),
  member: await ensureRole('member'),
  reader: await ensureRole('reader'),
  service: await ensureRole('service'),
};
const adminUser = (await list('/users?name=admin', 'users'))[0].id;
const adminProject = (await list('/projects?name=admin', 'projects'))[0].id;

// The proxy's own account: only the service role, which lets it validate others' tokens.
const serviceProject = await ensureProject('service', 'default');
const proxy = await ensureUser('proxy', 'proxy-secret', 'default');
await grantProject(serviceProject, proxy, roles.service);

// A service user without the service role: Keystone refuses to let it validate (403).
const weak = await ensureUser('weak-validator', 'weak-secret', 'default');
await grantProject(serviceProject, weak, roles.member);

const demoProject = await ensureProject('demo', 'default');
const demo = await ensureUser('demo', 'demo-secret', 'default', { default_project_id: demoProject });
await grantProject(demoProject, demo, roles.member);
await grantProject(demoProject, demo, roles.reader);

const d2 = await ensureDomain('d2');
const d2Project = await ensureProject('d2project', d2);
const d2User = await ensureUser('d2user', 'd2-secret', d2);
await grantDomain(d2, d2User, roles.member);
await grantProject(d2Project, d2User, roles.member);

const sysReader = await ensureUser('sysreader', 'sysreader-secret', 'default');
await grantSystem(sysReader, roles.reader);

const disabled = await ensureUser('disabled', 'disabled-secret', 'default', { enabled: false });
await grantProject(demoProject, disabled, roles.member);

// A catalog entry for the service type the proxy protects in the tests (access rules name it).
let echo = (await list('/services?type=echo', 'services'))[0]?.id;
if (!echo) {
  echo = (
    await call('POST', '/services', { token: admin, body: { service: { type: 'echo', name: 'echo' } } })
  ).json.service.id;
  for (const iface of ['public', 'internal']) {
    await call('POST', '/endpoints', {
      token: admin,
      body: {
        endpoint: {
          service_id: echo,
          interface: iface,
          url: 'http://127.0.0.1:8081',
          region_id: 'RegionOne',
        },
      },
    });
  }
}

// Application credentials are created by their owner, and the secret is only shown once.
const demoToken = await passwordToken('demo', 'demo-secret', { project: { id: demoProject } });
const appCred = async (name, extra = {}) =>
  (
    await call('POST', `/users/${demo}/application_credentials`, {
      token: demoToken,
      body: { application_credential: { name, secret: `${name}-secret`, ...extra } },
    })
  ).json.application_credential;
const plain = await appCred('demo-appcred');
const rules = [{ service: 'echo', method: 'GET', path: '/allowed/**' }];
const ruled = await appCred('demo-appcred-rules', { access_rules: rules });

// A trust from demo to trustee on the demo project.
const trustee = await ensureUser('trustee', 'trustee-secret', 'default');
const trust = (
  await call('POST', '/OS-TRUST/trusts', {
    token: demoToken,
    body: {
      trust: {
        trustor_user_id: demo,
        trustee_user_id: trustee,
        project_id: demoProject,
        impersonation: false,
        roles: [{ name: 'member' }],
      },
    },
  })
).json.trust;

const fixtures = {
  url,
  region: 'RegionOne',
  roles,
  admin: {
    user: 'admin',
    password: adminPassword,
    userId: adminUser,
    project: 'admin',
    projectId: adminProject,
  },
  service: {
    user: 'proxy',
    password: 'proxy-secret',
    userId: proxy,
    project: 'service',
    projectId: serviceProject,
  },
  weakValidator: { user: 'weak-validator', password: 'weak-secret', userId: weak },
  demo: { user: 'demo', password: 'demo-secret', userId: demo, project: 'demo', projectId: demoProject },
  d2: {
    domain: 'd2',
    domainId: d2,
    project: 'd2project',
    projectId: d2Project,
    user: 'd2user',
    password: 'd2-secret',
    userId: d2User,
  },
  sysReader: { user: 'sysreader', password: 'sysreader-secret', userId: sysReader },
  disabled: { user: 'disabled', password: 'disabled-secret', userId: disabled },
  appCred: { id: plain.id, name: plain.name, secret: 'demo-appcred-secret' },
  appCredRules: { id: ruled.id, name: ruled.name, secret: 'demo-appcred-rules-secret', rules },
  trust: { id: trust.id, trustee: { user: 'trustee', password: 'trustee-secret', userId: trustee } },
  serviceType: 'echo',
};
writeFileSync(out, `${JSON.stringify(fixtures, null, 2)}\n`);
console.error(`keystone-seed: wrote ${out}`);
