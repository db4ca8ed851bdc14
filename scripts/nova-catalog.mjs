// Keystone's `compute` catalog entry for the local Nova (scripts/nova-local.sh register|unregister).
// Usage: node nova-catalog.mjs <keystone url> <admin password> register <compute url> | unregister
// `register` leaves exactly one `compute` service whose public and internal endpoints are <compute url>, so a
// client can only pick that one (the proxy's port changes from run to run). Other suites assert the exact
// catalog: `unregister` removes the service and its endpoints again.
const [url, adminPassword, action, computeUrl] = process.argv.slice(2);
if (
  !url ||
  !adminPassword ||
  !['register', 'unregister'].includes(action) ||
  (action === 'register') !== !!computeUrl
) {
  console.error(
    'usage: nova-catalog.mjs <keystone url> <admin password> register <compute url> | unregister',
  );
  process.exit(2);
}

async function call(method, path, token, body, expect = [200, 201, 204]) {
  const res = await fetch(`${url}/v3${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { 'x-auth-token': token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!expect.includes(res.status)) throw new Error(`${method} ${url}/v3${path}: HTTP ${res.status} ${text}`);
  return { headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

const scope = { project: { name: 'admin', domain: { id: 'default' } } };
const identity = {
  methods: ['password'],
  password: { user: { name: 'admin', domain: { id: 'default' }, password: adminPassword } },
};
const admin = (
  await call('POST', '/auth/tokens?nocatalog', undefined, { auth: { identity, scope } })
).headers.get('x-subject-token');

const services = (await call('GET', '/services?type=compute', admin)).json.services;
for (const service of services) {
  const { endpoints } = (await call('GET', `/endpoints?service_id=${service.id}`, admin)).json;
  for (const endpoint of endpoints)
    await call('DELETE', `/endpoints/${endpoint.id}`, admin, undefined, [204, 404]);
  if (action === 'unregister' || service !== services[0]) {
    await call('DELETE', `/services/${service.id}`, admin, undefined, [204, 404]);
  }
}
if (action === 'register') {
  const serviceId =
    services[0]?.id ??
    (await call('POST', '/services', admin, { service: { type: 'compute', name: 'nova' } })).json.service.id;
  const region = (await call('GET', '/regions', admin)).json.regions[0]?.id ?? 'RegionOne';
  for (const iface of ['public', 'internal']) {
    const endpoint = { service_id: serviceId, interface: iface, url: computeUrl, region_id: region };
    await call('POST', '/endpoints', admin, { endpoint });
  }
  console.error(`nova-catalog: compute -> ${computeUrl} (${region}, public and internal)`);
} else {
  console.error('nova-catalog: compute service removed');
}
