/**
 * An upstream that misbehaves on purpose, behind the real CLI (dist/cli.js): refused connections, a reset in
 * the middle of a response, a response head later than upstream.response_timeout_seconds, a trickling body, a
 * huge body, an answer that is not HTTP, a client that walks away. After all of it the proxy must hold no
 * more sockets than it started with (plus its keep-alive pool) and report nothing in flight.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, cliBuilt, sidecarYaml, singleProcess, startCli, writeConfig } from '../helpers/cli.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { peakRssMb, rssKb } from '../helpers/process-memory.js';
import { writeBlob } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const MB = 1024 * 1024;

function configYaml(keystoneUrl: string, upstreamUrl: string): string {
  return sidecarYaml({
    keystoneUrl,
    upstreamUrl,
    responseTimeoutSeconds: 1,
    keystoneTimeoutSeconds: 2,
    rest: 'log: { level: info }\n',
  });
}

// -----------------------------------------------------------------------------------------------------------
// The misbehaving upstream: one behaviour per path; it can stop listening and start again on the same port.

interface Exchanged {
  url: string;
  /** The upstream's response was cut before it finished (by the proxy, or by the upstream itself). */
  cut: boolean;
  closed: boolean;
}

interface FaultyUpstream {
  readonly url: string;
  readonly exchanges: Exchanged[];
  stop(): Promise<void>;
  start(): Promise<void>;
}

async function startFaultyUpstream(): Promise<FaultyUpstream> {
  const exchanges: Exchanged[] = [];
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://upstream');
    const record: Exchanged = { url: url.pathname, cut: false, closed: false };
    exchanges.push(record);
    res.once('close', () => {
      record.closed = true;
      record.cut = !res.writableFinished;
    });
    req.resume();
    switch (url.pathname) {
      case '/reset': {
        // head and 64 KB of a 1 MB body, then a TCP RST
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(MB) });
        res.write(Buffer.alloc(64 * 1024, 1));
        setTimeout(() => (req.socket as Socket).resetAndDestroy(), 50);
        return;
      }
      case '/slow-head': {
        const timer = setTimeout(() => {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '4' });
          res.end('late');
        }, 3_000);
        res.once('close', () => clearTimeout(timer));
        return;
      }
      case '/trickle': {
        // the head at once, then 10 × 1000 bytes, 250 ms apart: 2.5 s, over the 1 s response timeout
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '10000' });
        let pieces = 0;
        const timer = setInterval(() => {
          res.write('t'.repeat(1000));
          if (++pieces === 10) {
            clearInterval(timer);
            res.end();
          }
        }, 250);
        res.once('close', () => clearInterval(timer));
        return;
      }
      case '/huge': {
        res.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': String(Number(url.searchParams.get('mb')) * MB),
        });
        writeBlob(res, Number(url.searchParams.get('mb')) * MB);
        return;
      }
      case '/not-http':
        req.socket.end('SSH-2.0-OpenSSH_9.6\r\n\r\n');
        return;
      case '/hang-up':
        req.socket.destroy();
        return;
      default:
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
        res.end('ok');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    exchanges,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
    start: () => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve)),
  };
}

// -----------------------------------------------------------------------------------------------------------
// A client without a connection pool (Connection: close), so the proxy's socket count is not blurred by ours.

interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  bytes: number;
  /** The body arrived whole (as many bytes as Content-Length, ended normally). */
  complete: boolean;
}

function get(url: string, headers: Record<string, string> = {}, keepBody = true): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      let ended = false;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (keepBody) chunks.push(chunk);
      });
      res.on('end', () => {
        ended = true;
      });
      res.on('error', () => undefined);
      res.on('close', () => {
        const length = res.headers['content-length'];
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          bytes,
          complete: ended && res.complete && (length === undefined || Number(length) === bytes),
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

interface TcpSocket {
  localPort: number;
  remotePort: number;
  /** /proc/net/tcp state: 01 established, 06 time-wait, 08 close-wait, 0A listen, … */
  state: string;
}

/** The process's sockets: inodes from /proc/<pid>/fd, joined with the TCP tables (ports, state). */
function socketsOf(pid: number): { count: number; tcp: TcpSocket[] } {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith('socket:[')) inodes.add(target.slice(8, -1));
    } catch {
      // the descriptor closed between readdir and readlink
    }
  }
  const tcp: TcpSocket[] = [];
  for (const table of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/${pid}/net/${table}`, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || !inodes.has(fields[9] as string)) continue;
      const port = (address: string | undefined): number => Number.parseInt(address?.split(':')[1] ?? '', 16);
      tcp.push({ localPort: port(fields[1]), remotePort: port(fields[2]), state: fields[3] as string });
    }
  }
  return { count: inodes.size, tcp };
}

async function gauge(adminUrl: string, name: string): Promise<number> {
  const text = (await get(`${adminUrl}/metrics`)).body.toString();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

// -----------------------------------------------------------------------------------------------------------

describe.skipIf(!cliBuilt())('upstream faults (real CLI)', () => {
  let keystone: KeystoneEmulator;
  let upstream: FaultyUpstream;
  let proxy: CliRun;
  let pid: number;
  let auth: Record<string, string>;
  let baselineSockets: number;

  const errorCode = (answer: Answer): unknown =>
    (JSON.parse(answer.body.toString()) as { error: { code: number } }).error.code;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await startFaultyUpstream();
    proxy = await startCli(
      ['--config', writeConfig(singleProcess(configYaml(keystone.url, upstream.url)))],
      ENV,
    );
    pid = proxy.child.pid as number;
    const token = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member],
    });
    auth = { 'x-auth-token': token };
    // Warm up: the service token, the Keystone pool and one pooled upstream connection exist from here on.
    expect((await get(`${proxy.url}/ok`, auth)).status).toBe(200);
    expect(await gauge(proxy.adminUrl, 'keystone_auth_proxy_http_requests_in_flight')).toBe(0);
    await new Promise((r) => setTimeout(r, 200));
    baselineSockets = socketsOf(pid).count;
  });

  afterAll(async () => {
    await proxy?.stop();
    await upstream?.stop();
    await keystone?.close();
  });

  it('refused (nothing listening): 502 JSON; served again once the upstream is back', async () => {
    await upstream.stop();
    try {
      const refused = await get(`${proxy.url}/ok`, auth);
      expect(refused.status).toBe(502);
      expect(refused.headers['content-type']).toBe('application/json');
      expect(errorCode(refused)).toBe(502);
    } finally {
      await upstream.start();
    }
    expect((await get(`${proxy.url}/ok`, auth)).status).toBe(200);
  });

  it('reset after the head and part of the body: a cut body for the client; the next is served', async () => {
    const cut = await get(`${proxy.url}/reset`, auth);
    expect(cut.status).toBe(200);
    expect(cut.headers['content-length']).toBe(String(MB));
    expect(cut.complete).toBe(false);
    expect(cut.bytes).toBeLessThan(MB);
    const next = await get(`${proxy.url}/ok`, auth);
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe('ok');
  });

  it('a hang-up before any answer: 502 JSON', async () => {
    const answer = await get(`${proxy.url}/hang-up`, auth);
    expect(answer.status).toBe(502);
    expect(errorCode(answer)).toBe(502);
  });

  it('an answer that is not HTTP: 502 JSON', async () => {
    const answer = await get(`${proxy.url}/not-http`, auth);
    expect(answer.status).toBe(502);
    expect(errorCode(answer)).toBe(502);
  });

  it('response head later than response_timeout_seconds: 504 JSON, upstream request abandoned', async () => {
    const started = Date.now();
    const answer = await get(`${proxy.url}/slow-head`, auth);
    expect(answer.status).toBe(504);
    expect(answer.headers['content-type']).toBe('application/json');
    expect(errorCode(answer)).toBe(504);
    expect(Date.now() - started).toBeLessThan(2_500);
    // the proxy closed its side: the upstream's response never went out
    await expect
      .poll(() => upstream.exchanges.filter((e) => e.url === '/slow-head').map((e) => [e.closed, e.cut]))
      .toEqual([[true, true]]);
  });

  it('a body trickling for longer than the response timeout streams through whole, no 504', async () => {
    const answer = await get(`${proxy.url}/trickle`, auth);
    expect(answer.status).toBe(200);
    expect(answer.complete).toBe(true);
    expect(answer.body.toString()).toBe('t'.repeat(10_000));
  });

  it('a client that walks away mid-body: the upstream response is cut too', async () => {
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${proxy.url}/huge?mb=200`, { agent: false, headers: auth }, (res) => {
        res.once('data', () => {
          res.destroy();
          resolve();
        });
      });
      req.on('error', reject);
      req.end();
    });
    await expect
      .poll(() => upstream.exchanges.filter((e) => e.url === '/huge').map((e) => [e.closed, e.cut]), {
        timeout: 3_000,
      })
      .toEqual([[true, true]]);
  });

  it('a 300 MB response streams through; RSS does not grow with it', async () => {
    const transfer = async (mb: number): Promise<void> => {
      const answer = await get(`${proxy.url}/huge?mb=${mb}`, auth, false);
      expect(answer.status).toBe(200);
      expect(answer.bytes).toBe(mb * MB);
      expect(answer.complete).toBe(true);
    };
    // Peaks, not samples (see peakRssMb).
    const peak = (work: () => Promise<void>): Promise<number> => peakRssMb(pid, work);
    const startMb = rssKb(pid) / 1024;
    const warm = await peak(() => transfer(100));
    const measured = await peak(() => transfer(300));
    console.log(
      `proxy RSS ${startMb.toFixed(1)} MB before, peak ${warm.toFixed(1)} MB over 100 MB, ` +
        `${measured.toFixed(1)} MB over the next 300 MB`,
    );
    // Buffering would add the whole 300 MB; garbage collection lags behind when the CPU is busy (other test
    // files running alongside), which moved the peak by up to ~30 MB here.
    expect(measured - warm).toBeLessThan(48);
    expect(measured - startMb).toBeLessThan(120);
  }, 30_000);

  it('after all of it: no leaked sockets, nothing in flight, the proxy still up', async () => {
    expect(proxy.child.exitCode).toBeNull();
    expect((await get(`${proxy.url}/ok`, auth)).status).toBe(200);
    // The keep-alive pools to the upstream and to Keystone may hold a couple more than at the start; a leak
    // of one socket per failed exchange (eight above) would not fit.
    const slack = 2;
    await expect
      .poll(() => socketsOf(pid).count, { timeout: 6_000, interval: 200 })
      .toBeLessThanOrEqual(baselineSockets + slack);
    const proxyPort = Number(new URL(proxy.url).port);
    const upstreamPort = Number(new URL(upstream.url).port);
    // No client connection left on the proxied port (ours all said Connection: close): polled, as the last
    // request's own connection closes just after its answer.
    const clientConnections = () =>
      socketsOf(pid).tcp.filter((s) => s.localPort === proxyPort && s.state !== '0A');
    await expect.poll(clientConnections, { timeout: 6_000, interval: 200 }).toEqual([]);
    const now = socketsOf(pid);
    console.log(
      `proxy sockets: ${baselineSockets} at the start, ${now.count} now: ${JSON.stringify(now.tcp)}`,
    );
    // ... at most the idle keep-alive pool towards the upstream, and nothing the peer closed but we kept.
    expect(now.tcp.filter((s) => s.remotePort === upstreamPort).length).toBeLessThanOrEqual(slack);
    expect(now.tcp.filter((s) => s.state === '08')).toEqual([]);
    expect(await gauge(proxy.adminUrl, 'keystone_auth_proxy_http_requests_in_flight')).toBe(0);
    expect(await gauge(proxy.adminUrl, 'keystone_auth_proxy_keystone_validations_in_flight')).toBe(0);
    const metrics = (await get(`${proxy.adminUrl}/metrics`)).body.toString();
    for (const reason of ['connect_refused', 'reset', 'response_timeout']) {
      const line = metrics
        .split('\n')
        .find((l) => l.startsWith(`keystone_auth_proxy_upstream_errors_total{reason="${reason}"}`));
      expect(Number(line?.split(' ')[1]), reason).toBeGreaterThanOrEqual(1);
    }
  });
});

describe.skipIf(!cliBuilt())('client idle timeout shorter than the upstream response time (real CLI)', () => {
  let keystone: KeystoneEmulator;
  let upstream: FaultyUpstream;
  let proxy: CliRun;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await startFaultyUpstream();
    const yaml = configYaml(keystone.url, upstream.url)
      .replace('response_timeout_seconds: 1', 'response_timeout_seconds: 5')
      .concat('limits: { idle_timeout_seconds: 1 }\n');
    proxy = await startCli(['--config', writeConfig(singleProcess(yaml))], ENV);
  });

  afterAll(async () => {
    await proxy?.stop();
    await upstream?.stop();
    await keystone?.close();
  });

  // Regression (fixed): server.ts applies limits.idle_timeout_seconds with server.setTimeout(…, socket.destroy), which also
  // fires while the client is only waiting for the upstream's answer. With idle 1 s and response_timeout 5 s,
  // an upstream answering after 3 s never reaches the client: the connection is closed at 1 s with no answer
  // (not even the 504 JSON), logged as status 0, completed false. Nothing in the config check forbids
  // idle_timeout_seconds < response_timeout_seconds. Expected: the 200 (the client is not idle, it is
  // waiting).
  it('a response head after 3 s (within response_timeout_seconds) reaches the client', async () => {
    const token = keystone.issueToken({ user: users.demo, scope: { project: projects.demo } });
    const answer = await get(`${proxy.url}/slow-head`, { 'x-auth-token': token });
    expect(answer.status).toBe(200);
    expect(answer.body.toString()).toBe('late');
  });
});
