/**
 * A real Nova API behind our proxy, compared with the same Nova running keystonemiddleware in-process.
 * scripts/nova-local.sh starts Debian's Nova 26 twice (nova-api-wsgi under uwsgi): one in trusted-auth mode (the
 * paste pipeline without `authtoken`) behind our real CLI, one with the unmodified pipeline (keystonemiddleware
 * 10.1, [keystone_authtoken] at the same real Keystone) as the reference. Each has its own database and both get
 * the same calls in the same order, so every answer must be equal: same status, and the same body where Nova's
 * bodies are deterministic. The real `openstack` client drives both with the same token; raw requests cover what
 * the client cannot send (service tokens, microversion headers, spoofed identity headers).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parse } from 'yaml';
import { type CliRun, cliBuilt, ROOT, startCli, writeConfig } from '../helpers/cli.js';
import { OPENSTACK, type OsResult, runOpenstack } from './openstack-client.js';
import {
  adminCall,
  type Fixtures,
  fixtures,
  keystoneAvailable,
  keystoneUrl,
  passwordToken,
  revokeToken,
  shortLivedUrl,
} from './real-keystone.js';

const SCRIPT = join(ROOT, 'scripts', 'nova-local.sh');

/** config/nova.yaml's public_routes: the suite proves the example operators copy. */
function shippedPublicRoutes(): unknown {
  const shipped = parse(readFileSync(join(ROOT, 'config', 'nova.yaml'), 'utf8')) as {
    public_routes?: unknown;
  };
  if (!Array.isArray(shipped.public_routes)) throw new Error('config/nova.yaml has no public_routes');
  return shipped.public_routes;
}
/** Nova 26 speaks up to 2.93; Debian 12's python-novaclient 18.1 (under openstackclient 6.0) up to 2.92. */
const CLIENT_MICROVERSION = '2.92';
const MICROVERSION = '2.93';
const PUBLIC_KEY =
  'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJB86XRopncUQjWkRr33GcwL75Sm+pJ5ajmB+ucQYjGY kap-nova-conformance';

function skipReason(): string | undefined {
  if (!keystoneAvailable()) {
    return 'KEYSTONE_URL/KEYSTONE_FIXTURES unset (eval "$(bash scripts/keystone-local.sh env)")';
  }
  if (!existsSync('/usr/bin/nova-api-wsgi'))
    return 'Nova is not installed (bash scripts/nova-local.sh install)';
  if (!existsSync(OPENSTACK))
    return 'python3-openstackclient is not installed (bash scripts/nova-local.sh install)';
  if (!cliBuilt()) return 'dist/cli.js is missing (npm run build)';
  return undefined;
}

const skip = skipReason();
if (skip !== undefined) {
  if (process.env.CONFORMANCE_REQUIRED === '1') throw new Error(`CONFORMANCE_REQUIRED=1 but ${skip}`);
  console.warn(`nova conformance skipped: ${skip}`);
}

const run = promisify(execFile);

interface RawResult {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The response headers compared: the ones Nova's clients read. Request ids and dates differ by nature. */
const COMPARED_HEADERS = [
  'content-type',
  'openstack-api-version',
  'x-openstack-nova-api-version',
  'vary',
  'www-authenticate',
];

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const title = 'Nova 26 behind our proxy vs Nova with keystonemiddleware in-process';
describe.skipIf(skip !== undefined)(skip === undefined ? title : `${title} (skipped: ${skip})`, () => {
  let f: Fixtures;
  let work: string;
  let proxy: CliRun;
  let novaUrl: string;
  let referenceUrl: string;
  let startedNova = false;
  let registered = false;
  /** Calls sent to both sides and found equal, for the run's summary line. */
  const compared = { openstack: 0, raw: 0 };
  /** One suffix per run: names stay unique if a run was interrupted and its state kept. */
  const runId = Date.now().toString(36);
  const flavorId = `kap-${runId}`;
  const keypair = `kap-kp-${runId}`;
  const tokens: Record<
    'admin' | 'member' | 'reader' | 'system' | 'appcred' | 'service' | 'weakService',
    string
  > = {} as never;
  let expiring: { token: string; expiresAt: number };
  let reader: { id: string; name: string; password: string } | undefined;
  let appCredId: string | undefined;

  /** Through the proxy, our endpoint names the proxy; from the reference, Nova's links name Nova. */
  const normalize = (text: string): string =>
    text
      .replaceAll(proxy.url, '<nova>')
      .replaceAll(referenceUrl, '<nova>')
      .replace(/req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, 'req-<id>')
      // Creation times: each side has its own database, written a few milliseconds apart.
      .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?/g, '<time>');

  /**
   * A 401 the proxy answers never reached Nova, so it lacks Nova's `x-compute-request-id`, which novaclient
   * quotes in its error message (README "Against the real thing: Nova", difference 2).
   */
  const withoutComputeRequestId = (stderr: string): string =>
    stderr.replace('(HTTP 401) (Request-ID: req-<id>)', '(HTTP 401)');

  /** The real client with the token as it is (auth type admin_token): no re-authentication, no catalog. */
  const osc = (base: string, token: string, args: string[]): Promise<OsResult> => {
    const auth = ['--os-auth-type', 'admin_token', '--os-endpoint', `${base}/v2.1`, '--os-token', token];
    return runOpenstack([...auth, '--os-compute-api-version', CLIENT_MICROVERSION, ...args], work);
  };

  /** The same command through the proxy and against the reference: equal exit code, output and error text. */
  const sameOsc = async (who: keyof typeof tokens, args: string[]): Promise<OsResult> => {
    const token = tokens[who];
    const [viaProxy, viaReference] = await Promise.all([
      osc(proxy.url, token, args),
      osc(referenceUrl, token, args),
    ]);
    const shape = (r: OsResult) => ({
      code: r.code,
      stdout: normalize(r.stdout),
      stderr: withoutComputeRequestId(normalize(r.stderr)),
    });
    console.log(`openstack ${args.join(' ')} (as ${who}): exit ${viaProxy.code} / ${viaReference.code}`);
    expect(shape(viaProxy), `openstack ${args.join(' ')} as ${who}`).toEqual(shape(viaReference));
    compared.openstack++;
    return viaProxy;
  };

  const raw = async (
    base: string,
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: unknown,
  ): Promise<RawResult> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const picked: Record<string, string> = {};
    for (const name of COMPARED_HEADERS) {
      const value = res.headers.get(name);
      if (value !== null) picked[name] = normalize(value);
    }
    return { status: res.status, headers: picked, body: normalize(await res.text()) };
  };

  /** The same request to both: equal status, compared headers and body; returns the proxy's answer. */
  const sameRaw = async (
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: unknown,
  ): Promise<RawResult> => {
    const viaProxy = await raw(proxy.url, method, path, headers, body);
    const viaReference = await raw(referenceUrl, method, path, headers, body);
    expect(viaProxy, `${method} ${path}`).toEqual(viaReference);
    compared.raw++;
    return viaProxy;
  };
  const auth = (who: keyof typeof tokens, extra: Record<string, string> = {}) => ({
    'x-auth-token': tokens[who],
    ...extra,
  });

  beforeAll(async () => {
    f = fixtures();
    work = mkdtempSync(join(tmpdir(), 'kap-nova-'));
    startedNova = !(await run('bash', [SCRIPT, 'status']).then(
      () => true,
      () => false,
    ));
    const started = performance.now();
    await run('bash', [SCRIPT, 'start'], { timeout: 170_000 });
    const env = (await run('bash', [SCRIPT, 'env'])).stdout;
    const value = (name: string): string => {
      const found = new RegExp(`^export ${name}=(.*)$`, 'm').exec(env)?.[1];
      if (found === undefined) throw new Error(`scripts/nova-local.sh env printed no ${name}`);
      return found;
    };
    novaUrl = value('NOVA_URL');
    referenceUrl = value('NOVA_REFERENCE_URL');
    console.log(
      `Nova at ${novaUrl} (trusted-auth), ${referenceUrl} (keystonemiddleware), ready in ${Math.round(performance.now() - started)} ms`,
    );

    const config = `
workers: 1
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${novaUrl}" }
admin_listen: { host: 127.0.0.1, port: 0 }
# Nova's version documents, outside keystonemiddleware's pipelines there too: the shipped example's routes.
public_routes: ${JSON.stringify(shippedPublicRoutes())}
keystone_authtoken:
  www_authenticate_uri: "${keystoneUrl()}"
  auth_url: "${keystoneUrl()}"
  auth_type: password
  username: ${f.service.user}
  password: "\${NOVA_TEST_PROXY_PASSWORD}"
  user_domain_id: default
  project_name: ${f.service.project}
  project_domain_id: default
  service_type: compute
log: { level: info }
`;
    proxy = await startCli(['--config', writeConfig(config)], {
      NOVA_TEST_PROXY_PASSWORD: f.service.password,
    });
    // The catalog's compute endpoints name the proxy; tokens issued from now on carry them (access rules need it).
    await run('bash', [SCRIPT, 'register', `${proxy.url}/v2.1`]);
    registered = true;

    const project = (id: string) => ({ project: { id } });
    tokens.admin = (await passwordToken(f.admin.user, f.admin.password, project(f.admin.projectId))).token;
    tokens.member = (await passwordToken(f.demo.user, f.demo.password, project(f.demo.projectId))).token;
    tokens.system = (
      await passwordToken(f.sysReader.user, f.sysReader.password, { system: { all: true } })
    ).token;
    tokens.service = (
      await passwordToken(f.service.user, f.service.password, project(f.service.projectId))
    ).token;
    tokens.weakService = (
      await passwordToken(f.weakValidator.user, f.weakValidator.password, {
        project: { name: f.service.project, domain: { id: 'default' } },
      })
    ).token;

    const name = `kap-nova-reader-${runId}`;
    const created = (await adminCall('POST', '/users', {
      user: { name, password: `${name}-pw`, domain_id: 'default' },
    })) as { user: { id: string } };
    reader = { id: created.user.id, name, password: `${name}-pw` };
    await adminCall('PUT', `/projects/${f.demo.projectId}/users/${reader.id}/roles/${f.roles.reader}`);
    tokens.reader = (await passwordToken(reader.name, reader.password, project(f.demo.projectId))).token;

    // An application credential of demo's that may only list flavors (GET /v2.1/flavors, nothing below it).
    const res = await fetch(`${keystoneUrl()}/v3/users/${f.demo.userId}/application_credentials`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-auth-token': tokens.member },
      body: JSON.stringify({
        application_credential: {
          name: `kap-nova-rules-${runId}`,
          access_rules: [{ service: 'compute', method: 'GET', path: '/v2.1/flavors' }],
        },
      }),
    });
    expect(res.status).toBe(201);
    const appCred = ((await res.json()) as { application_credential: { id: string; secret: string } })
      .application_credential;
    appCredId = appCred.id;
    const issued = await fetch(`${keystoneUrl()}/v3/auth/tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        auth: {
          identity: {
            methods: ['application_credential'],
            application_credential: { id: appCred.id, secret: appCred.secret },
          },
        },
      }),
    });
    expect(issued.status).toBe(201);
    tokens.appcred = issued.headers.get('x-subject-token') as string;

    // A short-lived token, left unused until it has expired (neither side may have cached it while valid).
    const short = await passwordToken(f.demo.user, f.demo.password, project(f.demo.projectId), {
      base: shortLivedUrl(),
    });
    expiring = { token: short.token, expiresAt: Date.parse(short.body.token.expires_at as string) };
    // A first start syncs four databases (about a minute here, more on a busy machine).
  }, 300_000);

  afterAll(async () => {
    console.log(
      `equal through the proxy and from the reference: ${compared.openstack} openstack commands, ${compared.raw} raw requests`,
    );
    // Every step runs even if one fails, so no process, catalog entry or fixture outlives the run.
    const failures: unknown[] = [];
    const attempt = async (step: () => Promise<unknown>): Promise<void> => {
      await step().catch((error: unknown) => failures.push(error));
    };
    // Other conformance files assert the exact catalog: leave no compute service behind.
    if (registered) await attempt(() => run('bash', [SCRIPT, 'unregister']));
    const credential = appCredId;
    if (credential !== undefined) {
      await attempt(() =>
        adminCall(
          'DELETE',
          `/users/${f.demo.userId}/application_credentials/${credential}`,
          undefined,
          [204, 404],
        ),
      );
    }
    const user = reader;
    if (user !== undefined)
      await attempt(() => adminCall('DELETE', `/users/${user.id}`, undefined, [204, 404]));
    if (proxy !== undefined) await attempt(() => proxy.stop());
    if (startedNova) await attempt(() => run('bash', [SCRIPT, 'stop'], { timeout: 30_000 }));
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
    if (failures.length > 0) throw new AggregateError(failures, 'nova conformance cleanup failed');
  });

  it('1. version documents (GET /, /v2, /v2.1) are public on both, with the same body', async () => {
    for (const path of ['/', '/v2', '/v2.1', '/v2.1/']) {
      const answer = await sameRaw('GET', path, {});
      expect(answer.status).toBe(200);
    }
    const { version } = JSON.parse((await sameRaw('GET', '/v2.1', {})).body) as {
      version: { version: string };
    };
    expect(version.version).toBe(MICROVERSION);
  });

  it('2. admin: flavor create, list, show, set --property, show', async () => {
    const create = ['flavor', 'create', '--id', flavorId, '--ram', '512', '--disk', '1', '--vcpus', '1'];
    expect((await sameOsc('admin', [...create, '-f', 'json', flavorId])).code).toBe(0);
    const listed = await sameOsc('admin', ['flavor', 'list', '--all', '-f', 'json']);
    expect(JSON.parse(listed.stdout)).toContainEqual(expect.objectContaining({ ID: flavorId, RAM: 512 }));
    expect((await sameOsc('admin', ['flavor', 'show', flavorId, '-f', 'json'])).code).toBe(0);
    expect(
      (await sameOsc('admin', ['flavor', 'set', '--property', 'kap:conformance=yes', flavorId])).code,
    ).toBe(0);
    const shown = await sameOsc('admin', ['flavor', 'show', flavorId, '-f', 'json']);
    expect(JSON.parse(shown.stdout).properties).toEqual({ 'kap:conformance': 'yes' });
  });

  it("3. member, reader: flavor list and show allowed, create refused by Nova's policy; system: refused", async () => {
    for (const who of ['member', 'reader'] as const) {
      expect((await sameOsc(who, ['flavor', 'list', '-f', 'json'])).code).toBe(0);
      expect((await sameOsc(who, ['flavor', 'show', flavorId, '-f', 'json'])).code).toBe(0);
    }
    for (const who of ['member', 'reader', 'system'] as const) {
      const refused = await sameOsc(who, [
        'flavor',
        'create',
        '--ram',
        '64',
        '--disk',
        '0',
        `kap-${who}-${runId}`,
      ]);
      // Nova's policy engine answers (the request was authenticated): the identity headers drove it.
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/403: Client Error .*os-flavor-manage:create/);
    }
    // enforce_scope: the client reads each flavor's extra specs, a project-scoped policy, so a system token is
    // refused there; showing one flavor is refused outright (403 Forbidden).
    const listed = await sameOsc('system', ['flavor', 'list', '-f', 'json']);
    expect(listed.stderr).toMatch(/403: Client Error .*os-flavor-extra-specs:index/);
    const shown = await sameOsc('system', ['flavor', 'show', flavorId, '-f', 'json']);
    expect(shown.stderr).toMatch(/403: Client Error .*Forbidden/);
  });

  it('4. member: keypair create, list, show, delete; reader: keypair create as Nova allows it', async () => {
    const keyFile = join(work, 'key.pub');
    writeFileSync(keyFile, `${PUBLIC_KEY}\n`);
    const created = await sameOsc('member', [
      'keypair',
      'create',
      '--public-key',
      keyFile,
      '-f',
      'json',
      keypair,
    ]);
    expect(created.code).toBe(0);
    // The keypair belongs to the user of the token: the proxy's X-User-Id reached Nova.
    expect(JSON.parse(created.stdout)).toMatchObject({ name: keypair, user_id: f.demo.userId });
    const listed = await sameOsc('member', ['keypair', 'list', '-f', 'json']);
    expect(JSON.parse(listed.stdout)).toContainEqual(expect.objectContaining({ Name: keypair }));
    await sameOsc('member', ['keypair', 'show', keypair, '-f', 'json']);
    // The reader sees none of demo's keypairs (they are per user).
    await sameOsc('reader', ['keypair', 'list', '-f', 'json']);
    await sameOsc('reader', [
      'keypair',
      'create',
      '--public-key',
      keyFile,
      '-f',
      'json',
      `${keypair}-reader`,
    ]);
    await sameOsc('reader', ['keypair', 'delete', `${keypair}-reader`]);
    expect((await sameOsc('member', ['keypair', 'delete', keypair])).code).toBe(0);
    expect(
      JSON.parse((await sameOsc('member', ['keypair', 'list', '-f', 'json'])).stdout),
    ).not.toContainEqual(expect.objectContaining({ Name: keypair }));
  });

  it('5. server list, limits show --absolute, availability zone list for every kind of token', async () => {
    for (const who of ['admin', 'member', 'reader'] as const) {
      expect(JSON.parse((await sameOsc(who, ['server', 'list', '-f', 'json'])).stdout)).toEqual([]);
      const limits = JSON.parse((await sameOsc(who, ['limits', 'show', '--absolute', '-f', 'json'])).stdout);
      expect(limits).toContainEqual({ Name: 'maxTotalInstances', Value: 10 });
      expect((await sameOsc(who, ['availability', 'zone', 'list', '-f', 'json'])).code).toBe(0);
    }
    await sameOsc('admin', ['server', 'list', '--all-projects', '-f', 'json']);
    // enforce_scope: Nova's project APIs refuse a system-scoped token (403), on both sides alike.
    const system = await sameOsc('system', ['server', 'list', '-f', 'json']);
    expect(system.stderr).toMatch(/HTTP 403/);
  });

  it(`6. raw microversion requests (OpenStack-API-Version: compute ${MICROVERSION}, latest, too new, none)`, async () => {
    const at = (version: string) => auth('admin', { 'openstack-api-version': `compute ${version}` });
    const current = await sameRaw('GET', '/v2.1/flavors/detail', at(MICROVERSION));
    expect(current.status).toBe(200);
    expect(current.headers['openstack-api-version']).toBe(`compute ${MICROVERSION}`);
    expect(JSON.parse(current.body).flavors).toContainEqual(
      expect.objectContaining({ id: flavorId, extra_specs: { 'kap:conformance': 'yes' } }),
    );
    const latest = await sameRaw('GET', `/v2.1/flavors/${flavorId}`, at('latest'));
    expect(latest.headers['openstack-api-version']).toBe(`compute ${MICROVERSION}`);
    expect((await sameRaw('GET', '/v2.1/flavors', at('2.999'))).status).toBe(406);
    expect((await sameRaw('GET', '/v2.1/flavors', at('two'))).status).toBe(400);
    const legacy = await sameRaw(
      'GET',
      '/v2.1/servers/detail',
      auth('member', { 'x-openstack-nova-api-version': '2.47' }),
    );
    expect(legacy.headers['x-openstack-nova-api-version']).toBe('2.47');
    const none = await sameRaw('GET', '/v2.1/limits', auth('member'));
    expect(none.headers['openstack-api-version']).toBe('compute 2.1');
    await sameRaw('GET', `/v2.1/os-keypairs`, at(MICROVERSION));
    await sameRaw('GET', '/v2.1/os-availability-zone', at(MICROVERSION));
  });

  it('7. quota sets: Nova asks Keystone itself (the trusted-auth Nova through its [keystone] endpoint)', async () => {
    const quotas = await sameRaw('GET', `/v2.1/os-quota-sets/${f.admin.projectId}`, auth('admin'));
    expect(quotas.status).toBe(200);
    expect((await sameRaw('GET', '/v2.1/os-quota-sets/not-a-project', auth('admin'))).status).toBe(400);
    await sameRaw('GET', `/v2.1/os-quota-sets/${f.demo.projectId}/detail`, auth('member'));
  });

  it('8. application credential limited to GET /v2.1/flavors: that call only', async () => {
    expect((await sameRaw('GET', '/v2.1/flavors', auth('appcred'))).status).toBe(200);
    expect((await sameRaw('GET', '/v2.1/flavors/detail', auth('appcred'))).status).toBe(401);
    expect((await sameRaw('GET', '/v2.1/servers', auth('appcred'))).status).toBe(401);
    const body = { flavor: { name: `kap-ac-${runId}`, ram: 64, vcpus: 1, disk: 0 } };
    expect((await sameRaw('POST', '/v2.1/flavors', auth('appcred'), body)).status).toBe(401);
    // openstack flavor list asks for /v2.1/flavors/detail, which the rule does not cover.
    const listed = await sameOsc('appcred', ['flavor', 'list', '-f', 'json']);
    expect(listed.stderr).toMatch(/401: Client Error .*requires authentication/);
  });

  it('9. service token pair: both valid, either one bad, expired user token with a service token', async () => {
    const pair = auth('member', { 'x-service-token': tokens.service });
    expect((await sameRaw('GET', '/v2.1/flavors', pair)).status).toBe(200);
    expect((await sameRaw('GET', '/v2.1/os-keypairs', pair)).status).toBe(200);
    expect(
      (await sameRaw('GET', '/v2.1/flavors', auth('member', { 'x-service-token': 'garbage' }))).status,
    ).toBe(401);
    const badUser = { 'x-auth-token': 'garbage', 'x-service-token': tokens.service };
    expect((await sameRaw('GET', '/v2.1/flavors', badUser)).status).toBe(401);
    expect((await sameRaw('GET', '/v2.1/flavors', { 'x-service-token': tokens.service })).status).toBe(401);
    // The access rule is skipped when a valid service token comes along (a service acting for the user).
    expect(
      (await sameRaw('GET', '/v2.1/flavors/detail', auth('appcred', { 'x-service-token': tokens.service })))
        .status,
    ).toBe(200);
  });

  it('10. expired and revoked tokens: 401 from both, with the same body and WWW-Authenticate', async () => {
    const wait = expiring.expiresAt + 1000 - Date.now();
    if (wait > 0) await sleep(wait);
    const expired = await sameRaw('GET', '/v2.1/flavors', { 'x-auth-token': expiring.token });
    expect(expired.status).toBe(401);
    expect(expired.headers['www-authenticate']).toBe(`Keystone uri="${keystoneUrl()}"`);
    // An expired user token with a valid service token is accepted (re-validated with allow_expired).
    const withService = { 'x-auth-token': expiring.token, 'x-service-token': tokens.service };
    expect((await sameRaw('GET', '/v2.1/flavors', withService)).status).toBe(200);
    expect(await osc(proxy.url, expiring.token, ['server', 'list'])).toMatchObject({ code: 1 });

    const revoked = (await passwordToken(f.demo.user, f.demo.password, { project: { id: f.demo.projectId } }))
      .token;
    await revokeToken(revoked);
    expect((await sameRaw('GET', '/v2.1/servers', { 'x-auth-token': revoked })).status).toBe(401);
    const listed = await Promise.all([
      osc(proxy.url, revoked, ['server', 'list']),
      osc(referenceUrl, revoked, ['server', 'list']),
    ]);
    expect(listed.map((r) => r.code)).toEqual([1, 1]);
    const [viaProxy, viaReference] = listed.map((r) => normalize(r.stderr));
    // Difference 2: the reference's 401 passed Nova's request-id middleware, the proxy's never reached Nova.
    expect(viaReference).toMatch(/\(HTTP 401\) \(Request-ID: req-<id>\)/);
    expect(viaProxy).toBe(withoutComputeRequestId(viaReference as string));
  });

  it('11. no token or a garbage token: 401, same body; spoofed identity headers do not reach Nova', async () => {
    const none = await sameRaw('GET', '/v2.1/servers', {});
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body)).toEqual({
      error: {
        code: 401,
        title: 'Unauthorized',
        message: 'The request you have made requires authentication.',
      },
    });
    expect((await sameRaw('GET', '/v2.1/servers', { 'x-auth-token': 'garbage' })).status).toBe(401);
    // A member claiming admin: Nova's policy must see the member's real roles.
    const forged = auth('member', {
      'x-roles': 'admin,member,reader',
      'x-identity-status': 'Confirmed',
      'x-project-id': f.admin.projectId,
      'x-user-id': f.admin.userId,
    });
    const body = { flavor: { name: `kap-forged-${runId}`, ram: 64, vcpus: 1, disk: 0 } };
    expect((await sameRaw('POST', '/v2.1/flavors', forged, body)).status).toBe(403);
    const mine = await sameRaw('GET', '/v2.1/os-keypairs', forged);
    expect(mine.status).toBe(200);
    // Identity headers without any token: still 401.
    expect(
      (await sameRaw('GET', '/v2.1/servers', { 'x-user-id': f.admin.userId, 'x-roles': 'admin' })).status,
    ).toBe(401);
  });

  it('12. deliberate difference: a service token without the service role (keystonemiddleware 10.1 takes it)', async () => {
    const headers = auth('member', { 'x-service-token': tokens.weakService });
    const viaProxy = await raw(proxy.url, 'GET', '/v2.1/flavors', headers);
    const viaReference = await raw(referenceUrl, 'GET', '/v2.1/flavors', headers);
    // README "Defaults that differ": service_token_roles_required is true here, false in keystonemiddleware 10.1.
    expect(viaProxy.status).toBe(401);
    expect(viaReference.status).toBe(200);
  });

  it('13. openstack with a password finds Nova in the catalog: the proxy, not Nova itself', async () => {
    const args = [
      ...['--os-auth-url', keystoneUrl(), '--os-identity-api-version', '3', '--os-region-name', f.region],
      ...['--os-username', f.demo.user, '--os-password', f.demo.password, '--os-user-domain-id', 'default'],
      ...['--os-project-name', f.demo.project, '--os-project-domain-id', 'default'],
      // Not `server list`: it looks for an image endpoint too, and this catalog has none.
      ...['--os-compute-api-version', CLIENT_MICROVERSION, 'flavor', 'list', '-f', 'json'],
    ];
    const result = await runOpenstack(args, work);
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toContainEqual(expect.objectContaining({ ID: flavorId }));
    await vi.waitFor(() =>
      expect(proxy.logs).toContainEqual(
        expect.objectContaining({
          msg: 'request',
          path: expect.stringMatching(/^\/v2\.1\/flavors\/detail/),
          status: 200,
          decision: 'confirmed',
        }),
      ),
    );
  });

  it('14. admin: flavor delete; the flavor is gone from both', async () => {
    expect((await sameOsc('admin', ['flavor', 'delete', flavorId])).code).toBe(0);
    const gone = await sameOsc('admin', ['flavor', 'show', flavorId]);
    expect(gone.code).not.toBe(0);
    expect((await sameRaw('GET', `/v2.1/flavors/${flavorId}`, auth('admin'))).status).toBe(404);
  });
});
