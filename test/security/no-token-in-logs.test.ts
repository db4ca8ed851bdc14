/**
 * No secret in the logs: the real CLI (dist/cli.js) at log level trace, every byte of its stdout and stderr
 * kept from the first, driven through valid, invalid, revoked and expired tokens, service tokens,
 * forward-auth, WebSocket upgrades, hostile requests (oversized, malformed, smuggled, stalled), upstream
 * timeouts, and Keystone faults (500, black hole, reset, refused, the proxy's own credentials rejected, the
 * circuit breaker). Then none of the tokens used, not the proxy's own service tokens, and not the service
 * password may appear anywhere.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { get as httpGet } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cliBuilt, ROOT, sidecarYaml, singleProcess, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const PASSWORD = users.proxy.password as string;
const ENV = { TEST_PROXY_PASSWORD: PASSWORD };

function configYaml(keystoneUrl: string, upstreamUrl: string): string {
  const rest = `public_routes:
  - { methods: [GET, HEAD], path: / }
forward_auth: { enabled: true, path: /auth }
limits: { max_header_bytes: 8192, headers_timeout_seconds: 1, idle_timeout_seconds: 2 }
shutdown: { grace_period_seconds: 2 }
log: { level: trace }
`;
  return sidecarYaml({
    keystoneUrl,
    upstreamUrl,
    responseTimeoutSeconds: 1,
    keystoneTimeoutSeconds: 1,
    authtoken: [
      'circuit_breaker_failure_threshold: 3',
      'circuit_breaker_open_seconds: 1',
      'stale_if_error_seconds: 30',
    ],
    rest,
  });
}

interface CapturedCli {
  readonly child: ChildProcess;
  /** Everything written on stdout and stderr so far, from the first byte. */
  output(): string;
  url: string;
  adminUrl: string;
  forwardAuthUrl: string;
  stop(): Promise<number | null>;
}

/** Like test/helpers/cli.ts startCli, but keeps the raw bytes of both streams (non-JSON lines included). */
function startCapturedCli(configFile: string): Promise<CapturedCli> {
  const child = spawn(process.execPath, [CLI, '--config', configFile], {
    cwd: ROOT,
    env: { ...process.env, ...ENV },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const chunks: Buffer[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const run: CapturedCli = {
      child,
      output: () => Buffer.concat(chunks).toString('utf8'),
      url: '',
      adminUrl: '',
      forwardAuthUrl: '',
      stop() {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        return exited;
      },
    };
    let pending = '';
    child.stderr?.on('data', (chunk: Buffer) => chunks.push(chunk));
    child.stdout?.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.includes('keystone-auth-proxy started')) continue;
        const record = JSON.parse(line) as Record<string, string>;
        run.url = String(record.listen);
        run.adminUrl = String(record.admin);
        run.forwardAuthUrl = String(record.forwardAuth);
        resolve(run);
      }
    });
    exited.then(
      (code) => reject(new Error(`CLI exited with ${code} before starting: ${run.output()}`)),
      reject,
    );
  });
}

/** Writes raw bytes, returns what came back when the proxy closes (or after `waitMs`). */
function raw(url: string, parts: string[], pauseMs = 0, waitMs = 4_000): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    let data = '';
    const socket = connect(Number(port), hostname, async () => {
      for (const part of parts) {
        if (socket.destroyed) return;
        socket.write(part);
        if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      }
    });
    const timer = setTimeout(() => socket.destroy(), waitMs);
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

const statusOf = (answer: string): number => Number(answer.slice(9, 12));

/**
 * GET without a connection pool (Connection: close): the short idle timeout configured here would otherwise
 * race a pooled connection's reuse.
 */
function statusAt(url: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    httpGet(url, { agent: false, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    }).on('error', reject);
  });
}

describe.skipIf(!cliBuilt())('no token or password in the logs (real CLI, log level trace)', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let proxy: CapturedCli;
  /** Every token string a client sent (or could have), whatever became of it. */
  const secrets = new Set<string>();

  const remember = (token: string): string => {
    secrets.add(token);
    return token;
  };
  const userToken = (extra: Partial<Parameters<KeystoneEmulator['issueToken']>[0]> = {}): string =>
    remember(
      keystone.issueToken({
        user: users.demo,
        scope: { project: projects.demo },
        roles: [roles.member, roles.reader],
        ...extra,
      }),
    );
  const serviceToken = (): string =>
    remember(
      keystone.issueToken({
        user: users.proxy,
        scope: { project: projects.service },
        roles: [roles.service],
      }),
    );
  const status = (path: string, headers: Record<string, string> = {}): Promise<number> =>
    statusAt(`${proxy.url}${path}`, headers);

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    proxy = await startCapturedCli(writeConfig(singleProcess(configYaml(keystone.url, upstream.url))));
  });

  afterAll(async () => {
    await proxy?.stop();
    await upstream?.close();
    await keystone?.close();
  });

  it('ordinary traffic: valid, invalid, revoked, expired, storage and service tokens', async () => {
    const valid = userToken();
    expect(await status('/v1', { 'x-auth-token': valid })).toBe(200);
    expect(await status('/v1', { 'x-auth-token': ` ${valid}  ` })).toBe(200);
    expect(await status('/v1', { 'x-storage-token': userToken() })).toBe(200);
    expect(await status('/v1', { 'x-auth-token': remember(`garbage-${randomUUID()}`) })).toBe(401);
    expect(
      await status('/v1', { 'x-auth-token': remember(`long-${randomUUID()}-${'z'.repeat(4000)}`) }),
    ).toBe(401);
    const revoked = userToken();
    keystone.revoke(revoked);
    expect(await status('/v1', { 'x-auth-token': revoked })).toBe(401);
    const expired = userToken({
      issuedAt: new Date(Date.now() - 7_200_000),
      expiresAt: new Date(Date.now() - 3_600_000),
    });
    expect(await status('/v1', { 'x-auth-token': expired })).toBe(401);
    // an expired user token with a valid service token: allow_expired
    expect(await status('/v1', { 'x-auth-token': expired, 'x-service-token': serviceToken() })).toBe(200);
    // a user token where a service token belongs: no service role, 401
    expect(await status('/v1', { 'x-auth-token': valid, 'x-service-token': userToken() })).toBe(401);
    expect(
      await status('/v1', { 'x-auth-token': valid, 'x-service-token': remember(`svc-${randomUUID()}`) }),
    ).toBe(401);
    // the public route with a token it does not need, and an upstream 401
    expect(await status('/', { 'x-auth-token': userToken() })).toBe(200);
    expect(await status('/status/401', { 'x-auth-token': valid })).toBe(401);
    // an upstream too slow: 504
    expect(await status('/slow?ms=3000', { 'x-auth-token': valid })).toBe(504);
  });

  it('forward-auth: valid, invalid, nginx, Traefik and Envoy styles', async () => {
    const url = proxy.forwardAuthUrl;
    const ask = (path: string, headers: Record<string, string>): Promise<number> =>
      statusAt(`${url}${path}`, headers);
    expect(
      await ask('', { 'x-auth-token': userToken(), 'x-original-uri': '/v1/x', 'x-original-method': 'GET' }),
    ).toBe(200);
    expect(await ask('', { 'x-auth-token': userToken(), 'x-forwarded-uri': '/v1/y' })).toBe(200);
    expect(await ask('/v1/z', { 'x-auth-token': userToken() })).toBe(200);
    expect(await ask('', { 'x-auth-token': remember(`fa-garbage-${randomUUID()}`) })).toBe(401);
    expect(
      await ask('', { 'x-auth-token': userToken(), 'x-service-token': remember(`fa-svc-${randomUUID()}`) }),
    ).toBe(401);
  });

  it('hostile requests carrying tokens', async () => {
    const t = (): string => userToken();
    const g = (): string => remember(`hostile-${randomUUID()}`);
    // oversized head (431), malformed heads (400), absolute-form (400), CONNECT (closed)
    expect(
      statusOf(
        await raw(proxy.url, [
          `GET /v1 HTTP/1.1\r\nX-Auth-Token: ${t()}\r\nX-Pad: ${'p'.repeat(9000)}\r\n\r\n`,
        ]),
      ),
    ).toBe(431);
    expect(
      statusOf(
        await raw(proxy.url, [
          `POST /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${t()}\r\nContent-Length: 3\r\n` +
            'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
        ]),
      ),
    ).toBe(400);
    expect(
      statusOf(
        await raw(proxy.url, [`GET /v1 HTTP/1.1\r\nHost: p\r\nX-Note: a\r\n X-Auth-Token: ${g()}\r\n\r\n`]),
      ),
    ).toBe(400);
    expect(
      statusOf(
        await raw(proxy.url, [
          `POST /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${t()}\r\nTransfer-Encoding: chunked\r\n\r\n` +
            `zz\r\n${g()}\r\n0\r\n\r\n`,
        ]),
      ),
    ).toBe(400);
    expect(
      statusOf(
        await raw(proxy.url, [
          `GET http://evil.example/ HTTP/1.1\r\nHost: e\r\nX-Auth-Token: ${t()}\r\nConnection: close\r\n\r\n`,
        ]),
      ),
    ).toBe(400);
    await raw(proxy.url, [`CONNECT evil.example:443 HTTP/1.1\r\nHost: e\r\nX-Auth-Token: ${t()}\r\n\r\n`]);
    // a token in a header line with a control character (400), and tokens with a tab and with latin-1 bytes
    expect(
      statusOf(await raw(proxy.url, [`GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${g()}\x01\r\n\r\n`])),
    ).toBe(400);
    expect(
      statusOf(
        await raw(proxy.url, [
          `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: tab\t${g()}\r\nConnection: close\r\n\r\n`,
        ]),
      ),
    ).toBe(401);
    expect(
      statusOf(
        await raw(proxy.url, [
          `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: \u00e9\u00ff-${g()}\r\nConnection: close\r\n\r\n`,
        ]),
      ),
    ).toBe(401);
    // Connection: X-Auth-Token, and a keep-alive pipeline mixing tokens
    expect(
      statusOf(
        await raw(proxy.url, [
          `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${t()}\r\nConnection: close, X-Auth-Token\r\n\r\n`,
        ]),
      ),
    ).toBe(401);
    const pipeline = await raw(proxy.url, [
      `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${t()}\r\n\r\n` +
        `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${g()}\r\n\r\n` +
        `GET /v1 HTTP/1.1\r\nHost: p\r\nX-Service-Token: ${g()}\r\nX-Auth-Token: ${t()}\r\n` +
        'Connection: close\r\n\r\n',
    ]);
    expect(pipeline.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 401', 'HTTP/1.1 401']);
    // a body that stalls past the idle timeout: cut, logged as incomplete
    await raw(proxy.url, [
      `POST /sink HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${t()}\r\nContent-Length: 100\r\n\r\n`,
      'abc',
    ]);
    // a slow-loris head carrying a token (its 408 comes later; only what it logs matters here)
    void raw(proxy.url, [...`GET /v1 HTTP/1.1\r\nX-Auth-Token: ${g()}\r\n`], 200, 1_500);
    // WebSocket upgrades, refused and accepted
    const upgrade = (token: string): Promise<string> =>
      raw(
        proxy.url,
        [
          'GET /ws HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
            `X-Auth-Token: ${token}\r\n\r\n`,
        ],
        0,
        500,
      );
    expect(statusOf(await upgrade(g()))).toBe(401);
    expect(statusOf(await upgrade(t()))).toBe(101);
  });

  it('Keystone faults: 500, black hole, reset, refused, own credentials rejected, breaker', async () => {
    const recover = async (): Promise<void> => {
      keystone.setFault('all', undefined);
      keystone.setFault('validate', undefined);
      keystone.setFault('auth', undefined);
      // a success closes the breaker again (after its open time, if it opened)
      await expect.poll(() => status('/v1', { 'x-auth-token': userToken() }), { timeout: 4_000 }).toBe(200);
    };
    const cached = userToken();
    expect(await status('/v1', { 'x-auth-token': cached })).toBe(200);

    keystone.setFault('validate', { kind: 'status', status: 500 });
    expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
    await recover();

    keystone.setFault('validate', { kind: 'blackhole' });
    expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
    await recover();

    keystone.setFault('validate', { kind: 'reset' });
    expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
    await recover();

    await keystone.stop();
    try {
      expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
      // the cached token is still served
      expect(await status('/v1', { 'x-auth-token': cached })).toBe(200);
      expect(await statusAt(`${proxy.adminUrl}/readyz`)).toBe(503);
    } finally {
      await keystone.start();
    }
    await recover();

    // Keystone calls the proxy's own token invalid (401): the proxy authenticates again with its password,
    // which Keystone rejects too
    const authsBefore = keystone.count('auth');
    keystone.setFault('validate', { kind: 'status', status: 401 });
    keystone.setFault('auth', { kind: 'status', status: 401 });
    expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
    // the password did go out again (and was refused)
    expect(keystone.count('auth')).toBeGreaterThan(authsBefore);
    await recover();

    // three failures in a row open the breaker: 503 at once, then it closes again
    keystone.setFault('validate', { kind: 'status', status: 503 });
    for (let i = 0; i < 4; i++) expect(await status('/v1', { 'x-auth-token': userToken() })).toBe(503);
    await recover();
  });

  it('after a graceful stop, no token, service token or password appears in the output', async () => {
    // the proxy's own tokens, as Keystone received them
    for (const request of keystone.requests) {
      for (const name of ['x-auth-token', 'x-subject-token']) {
        const value = request.headers[name];
        if (typeof value === 'string' && value.length > 0) secrets.add(value);
      }
    }
    expect(await proxy.stop()).toBe(0);
    const output = proxy.output();
    const lines = output.split('\n').filter((line) => line.length > 0);
    expect(lines.length).toBeGreaterThan(50);
    // the scenarios above did run: their traces are in the log
    for (const msg of ['request', 'Keystone circuit breaker open', 'service token obtained', 'stopped']) {
      expect(output, msg).toContain(`"msg":"${msg}"`);
    }
    console.log(`${secrets.size} secrets looked for in ${lines.length} lines of output`);
    expect(output).not.toContain(PASSWORD);
    expect(secrets.size).toBeGreaterThan(40);
    for (const secret of secrets) {
      // whole, JSON-escaped, and in pieces (a truncated token is still a leak); pieces skip the Fernet prefix
      // all emulator tokens share
      const pieces = [secret, JSON.stringify(secret).slice(1, -1)];
      for (let at = 10; at + 20 <= secret.length && at < 200; at += 20)
        pieces.push(secret.slice(at, at + 20));
      for (const piece of pieces) {
        if (output.includes(piece)) {
          const where = output.split('\n').find((line) => line.includes(piece));
          expect.fail(`a token leaked into the output: ${piece} in ${where?.slice(0, 400)}`);
        }
      }
    }
  }, 15_000);
});

describe.skipIf(!cliBuilt())(
  'no Bearer token in the logs (filter: oauth2_token, workers: 2, log level trace)',
  () => {
    let keystone: KeystoneEmulator;
    let upstream: Running;
    let proxy: CapturedCli;
    const secrets = new Set<string>();
    const remember = (token: string): string => {
      secrets.add(token);
      return token;
    };
    const bearerToken = (): string =>
      remember(
        keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] }),
      );

    beforeAll(async () => {
      keystone = await startKeystoneEmulator();
      upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
      const yaml = `workers: 2\nfilter: oauth2_token\n${configYaml(keystone.url, upstream.url)}`;
      proxy = await startCapturedCli(writeConfig(yaml));
    });
    afterAll(async () => {
      await proxy?.stop();
      await upstream?.close();
      await keystone?.close();
    });

    it('valid, invalid, revoked, oversized and wrongly spelled Bearer tokens, forward-auth; then none in the output', async () => {
      const at = (path: string, headers: Record<string, string>) => statusAt(`${proxy.url}${path}`, headers);
      const valid = bearerToken();
      expect(await at('/v1', { authorization: `Bearer ${valid}` })).toBe(200);
      expect(await at('/v1', { authorization: `bearer ${bearerToken()}` })).toBe(401);
      expect(await at('/v1', { authorization: `Bearer ${remember(`garbage-${randomUUID()}`)}` })).toBe(401);
      const long = remember(`long-${randomUUID()}-${'z'.repeat(4000)}`);
      expect(await at('/v1', { authorization: `Bearer ${long}` })).toBe(401);
      const huge = remember(`huge-${randomUUID()}-${'q'.repeat(9000)}`);
      expect(await at('/v1', { authorization: `Bearer ${huge}` })).toBe(431);
      const revoked = bearerToken();
      keystone.revoke(revoked);
      expect(await at('/v1', { authorization: `Bearer ${revoked}` })).toBe(401);
      expect(await at('/v1', { 'x-auth-token': bearerToken() })).toBe(401);
      expect(await at('/status/401', { authorization: `Bearer ${valid}` })).toBe(401);
      const forwardAuth = await statusAt(proxy.forwardAuthUrl, {
        authorization: `Bearer ${bearerToken()}`,
        'x-original-uri': '/v1',
      });
      expect(forwardAuth).toBe(200);

      expect(await proxy.stop()).toBe(0);
      const output = proxy.output();
      expect(output).toContain('"filter":"oauth2_token"');
      expect(output).not.toContain(PASSWORD);
      for (const secret of secrets) {
        const pieces = [secret];
        for (let i = 10; i + 20 <= secret.length && i < 200; i += 20) pieces.push(secret.slice(i, i + 20));
        for (const piece of pieces) {
          const where = output.split('\n').find((line) => line.includes(piece));
          expect(where, `a Bearer token leaked: ${piece}`).toBeUndefined();
        }
      }
    }, 30_000);
  },
);
