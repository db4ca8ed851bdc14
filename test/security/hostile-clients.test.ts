/**
 * Hostile clients against the real CLI (dist/cli.js): oversized and slow heads, stalled bodies, request
 * smuggling, hop-by-hop tricks, spoofed identity headers in every spelling, pipelines, odd request targets,
 * and a property-based fuzz. An upstream of our own records exactly what reached it, so each case can assert
 * the status, whether the upstream was reached at all, and that no client-sent identity header got through.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IDENTITY_HEADERS, isIdentityHeader, normalizeHeaderName } from '../../src/identity/headers.js';
import { type CliRun, cliBuilt, sidecarYaml, singleProcess, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const MAX_HEADER_BYTES = 8192;
/** Every client-sent identity value carries this, so a leak is visible whatever header carried it. */
const SPOOF = 'spoofed-by-client';

function configYaml(keystoneUrl: string, upstreamUrl: string, delay: boolean): string {
  const rest = `public_routes:
  - { methods: [GET, HEAD], path: / }
  - { methods: ["*"], path: "/public/**" }
limits: { max_header_bytes: ${MAX_HEADER_BYTES}, headers_timeout_seconds: 1, idle_timeout_seconds: 1 }
# short, so a request stuck in the in-flight count (a regression test below) cannot hold the exit for 25 s
shutdown: { grace_period_seconds: 2 }
log: { level: info }
`;
  return sidecarYaml({
    keystoneUrl,
    upstreamUrl,
    responseTimeoutSeconds: 5,
    keystoneTimeoutSeconds: 2,
    authtoken: [`delay_auth_decision: ${delay}`],
    rest,
  });
}

// -----------------------------------------------------------------------------------------------------------
// The recording upstream

interface Received {
  method: string;
  url: string;
  rawHeaders: string[];
  bytes: number;
  /** Whether the whole body arrived (false when the proxy cut the exchange). */
  complete: boolean;
  closed: boolean;
}

function recordingUpstream(received: Received[]): Promise<Running> {
  return listen(
    createServer((req: IncomingMessage, res: ServerResponse) => {
      const record: Received = {
        method: req.method ?? '',
        url: req.url ?? '',
        rawHeaders: req.rawHeaders,
        bytes: 0,
        complete: false,
        closed: false,
      };
      received.push(record);
      req.on('data', (chunk: Buffer) => {
        record.bytes += chunk.length;
      });
      req.on('close', () => {
        record.complete = req.complete;
        record.closed = true;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('upstream-ok');
      });
    }),
  );
}

/** Identity headers as the upstream got them: [normalised name, value], sorted; duplicates stay visible. */
function identityOf(record: Received): string[][] {
  const out: string[][] = [];
  for (let i = 0; i + 1 < record.rawHeaders.length; i += 2) {
    const name = record.rawHeaders[i] as string;
    if (isIdentityHeader(name)) out.push([normalizeHeaderName(name), record.rawHeaders[i + 1] as string]);
  }
  return out.sort((a, b) => String(a[0]).localeCompare(String(b[0])));
}

function spoofedValues(record: Received): string[] {
  return record.rawHeaders.filter((value) => value.includes(SPOOF));
}

// -----------------------------------------------------------------------------------------------------------
// Raw HTTP/1.x on a socket: Node's and undici's clients refuse to send most of what is tested here.

interface Parsed {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Splits a byte stream into complete HTTP responses (Content-Length, chunked, or close-delimited). */
function parseResponses(data: string, ended: boolean): Parsed[] {
  const out: Parsed[] = [];
  let pos = 0;
  while (pos < data.length) {
    const end = data.indexOf('\r\n\r\n', pos);
    if (end === -1) break;
    const lines = data.slice(pos, end).split('\r\n');
    const status = Number(lines[0]?.slice(9, 12));
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    let next = end + 4;
    let body = '';
    if (status < 200 || status === 204 || status === 304) {
      // no body
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (data.length < next + length) break;
      body = data.slice(next, next + length);
      next += length;
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      let cursor = next;
      let done = false;
      while (!done) {
        const lineEnd = data.indexOf('\r\n', cursor);
        if (lineEnd === -1) break;
        const size = Number.parseInt(data.slice(cursor, lineEnd), 16);
        if (size === 0) {
          if (data.length < lineEnd + 4) break;
          cursor = lineEnd + 4;
          done = true;
        } else {
          if (data.length < lineEnd + 2 + size + 2) break;
          body += data.slice(lineEnd + 2, lineEnd + 2 + size);
          cursor = lineEnd + 2 + size + 2;
        }
      }
      if (!done) break;
      next = cursor;
    } else {
      if (!ended) break;
      body = data.slice(next);
      next = data.length;
    }
    out.push({ status, headers, body });
    pos = next;
  }
  return out;
}

interface Exchange {
  responses: Parsed[];
  /** The proxy closed the connection (as opposed to our timeout). */
  closed: boolean;
  ms: number;
}

/**
 * Writes `parts` (a pause of `pauseMs` between them) and collects what comes back until the proxy closes,
 * until `expect` responses are complete, or for `waitMs`.
 */
function exchange(
  url: string,
  parts: string | Buffer | (string | Buffer)[],
  options: { expect?: number; waitMs?: number; pauseMs?: number } = {},
): Promise<Exchange> {
  const { port, hostname } = new URL(url);
  const { expect: wanted = Number.POSITIVE_INFINITY, waitMs = 5_000, pauseMs = 0 } = options;
  const started = Date.now();
  return new Promise((resolve) => {
    let data = '';
    let settled = false;
    const socket = connect(Number(port), hostname);
    const finish = (closed: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ responses: parseResponses(data, closed), closed, ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on('connect', async () => {
      for (const part of Array.isArray(parts) ? parts : [parts]) {
        if (socket.destroyed || settled) return;
        socket.write(part);
        if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      }
    });
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
      if (parseResponses(data, false).length >= wanted) finish(false);
    });
    socket.on('close', () => finish(true));
    socket.on('error', () => finish(true));
  });
}

async function one(url: string, text: string | Buffer): Promise<{ status: number; closed: boolean }> {
  const result = await exchange(url, text, { expect: 1 });
  return { status: result.responses[0]?.status ?? 0, closed: result.closed };
}

/**
 * GET /public/trickle-garbage, and as soon as the first body bytes arrive, an unparsable second request on
 * the same connection (bytes: `BROKEN\x01 garbage` then an empty line).
 */
function garbageMidResponse(url: string): Promise<{ data: string }> {
  const { port, hostname } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname, () =>
      socket.write('GET /public/trickle-garbage HTTP/1.1\r\nHost: p\r\n\r\n'),
    );
    let data = '';
    let sent = false;
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
      if (!sent && data.includes('\r\n\r\nb')) {
        sent = true;
        socket.write('BROKEN\x01 garbage\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: p\r\n\r\n');
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ data }));
    socket.setTimeout(5_000, () => socket.destroy());
  });
}

async function inFlight(cli: CliRun): Promise<number> {
  const text = await (await fetch(`${cli.adminUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('keystone_auth_proxy_http_requests_in_flight '));
  return Number(line?.split(' ')[1]);
}

/** Every identity header in four spellings (one variable to WSGI), each with a spoof value. */
function spoofBlock(): string {
  const lines: string[] = [];
  IDENTITY_HEADERS.forEach((name, i) => {
    const underscored = name.replaceAll('-', '_');
    const mixed = [...underscored].map((c, j) => (j % 2 === 0 ? c.toLowerCase() : c.toUpperCase())).join('');
    for (const spelling of [name.toLowerCase(), underscored.toUpperCase(), mixed, name]) {
      lines.push(`${spelling}: ${SPOOF}-${i}\r\n`);
    }
  });
  return lines.join('');
}

// -----------------------------------------------------------------------------------------------------------

describe.skipIf(!cliBuilt())('hostile clients (real CLI)', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  const received: Received[] = [];
  let proxy: CliRun;
  let delayed: CliRun;
  let token: string;
  let serviceToken: string;
  /** The proxy's own identity headers for `token`, taken from a clean request. */
  let confirmed: string[][];
  let slowLoris: Promise<Exchange & { startedAt: number }>;

  const byUrl = (url: string): Received[] => received.filter((r) => r.url === url);

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await recordingUpstream(received);
    const yaml = (delay: boolean) => singleProcess(configYaml(keystone.url, upstream.url, delay));
    proxy = await startCli(['--config', writeConfig(yaml(false))], ENV);
    delayed = await startCli(['--config', writeConfig(yaml(true))], ENV);
    token = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member, roles.reader],
    });
    serviceToken = keystone.issueToken({
      user: users.proxy,
      scope: { project: projects.service },
      roles: [roles.service],
    });
    const clean = await one(
      proxy.url,
      `GET /baseline HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nConnection: close\r\n\r\n`,
    );
    expect(clean.status).toBe(200);
    confirmed = identityOf(byUrl('/baseline')[0] as Received);
    expect(confirmed).toContainEqual(['x-identity-status', 'Confirmed']);
    expect(confirmed).toContainEqual(['x-roles', 'member,reader']);
    expect(confirmed).toContainEqual(['x-user-id', users.demo.id]);
    expect(confirmed).toContainEqual(['x-project-id', projects.demo.id]);
    // Slow-loris: one connection whose head drips in a byte every 300 ms (under the 1 s idle timeout) and
    // never ends; judged early ('slow clients') and at the end of the file, since Node's bound turned out to
    // be ~30 s.
    const startedAt = Date.now();
    const drip = [...'GET /public/slow-loris HTTP/1.1\r\nHost: p\r\n', ...'X-Drip: a\r\n'.repeat(200)];
    slowLoris = exchange(proxy.url, drip, { expect: 1, waitMs: 40_000, pauseMs: 300 }).then((r) => ({
      ...r,
      startedAt,
    }));
  });

  afterAll(async () => {
    await proxy?.stop();
    await delayed?.stop();
    await upstream?.close();
    await keystone?.close();
  });

  describe('oversized heads', () => {
    it('a head over limits.max_header_bytes: 431 JSON, upstream not reached', async () => {
      const before = received.length;
      const pad = 'a'.repeat(MAX_HEADER_BYTES);
      const result = await exchange(
        proxy.url,
        `GET /big HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nX-Pad: ${pad}\r\n` +
          `X-Roles: ${SPOOF}\r\n\r\n`,
        { expect: 1 },
      );
      expect(result.responses[0]?.status).toBe(431);
      expect(result.responses[0]?.headers['content-type']).toBe('application/json');
      expect(JSON.parse(result.responses[0]?.body ?? '')).toMatchObject({ error: { code: 431 } });
      expect(received.length).toBe(before);
    });

    it('many headers (1000, ~12 KB): 431, upstream not reached', async () => {
      const before = received.length;
      const many = Array.from({ length: 1000 }, (_, i) => `X-Pad-${i}: v\r\n`).join('');
      const answer = await one(
        proxy.url,
        `GET /many HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\n${many}X-Roles: ${SPOOF}\r\n\r\n`,
      );
      expect(answer.status).toBe(431);
      expect(received.length).toBe(before);
    });

    it('a huge single identity header value: 431, upstream not reached', async () => {
      const before = received.length;
      const answer = await one(
        proxy.url,
        `GET / HTTP/1.1\r\nHost: p\r\nX-Roles: ${SPOOF}${'a'.repeat(MAX_HEADER_BYTES + 100)}\r\n\r\n`,
      );
      expect(answer.status).toBe(431);
      expect(received.length).toBe(before);
    });

    it('many headers under the limit: 200, every spoofed one gone, the proxy values alone', async () => {
      const many = Array.from({ length: 400 }, (_, i) => `X-Pad-${i}: v\r\n`).join('');
      const answer = await one(
        proxy.url,
        `GET /many-ok HTTP/1.1\r\nHost: p\r\n${many}X-Roles: ${SPOOF}\r\nX-Auth-Token: ${token}\r\n` +
          `x_roles: ${SPOOF}\r\nConnection: close\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/many-ok');
      expect(identityOf(record as Received)).toEqual(confirmed);
      expect(spoofedValues(record as Received)).toEqual([]);
    });
  });

  describe('slow clients', () => {
    // Regression: Node enforces headersTimeout from a sweep every `connectionsCheckingInterval` (30 s by
    // default); server.ts now sets it from limits.headers_timeout_seconds, so a dripping head gets its 408 in time.
    it('slow-loris: answered 408 within headers_timeout_seconds (+ 2 s slack)', async () => {
      const answer = await Promise.race([
        slowLoris,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 3_000)),
      ]);
      expect(answer?.responses[0]?.status).toBe(408);
    });

    it('a body stalled past limits.idle_timeout_seconds: closed, upstream request aborted', async () => {
      const head =
        `POST /stall HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nX-Roles: ${SPOOF}\r\n` +
        'Content-Length: 1000\r\n\r\n';
      const result = await exchange(proxy.url, [head, 'first-bytes'], { waitMs: 6_000 });
      expect(result.closed).toBe(true);
      // idle timeout 1 s: closed after about that, far before our 6 s guard
      expect(result.ms).toBeLessThan(3_500);
      expect(result.responses).toEqual([]);
      await expect.poll(() => byUrl('/stall')[0]?.closed, { timeout: 3_000 }).toBe(true);
      const [record] = byUrl('/stall');
      expect(record?.complete).toBe(false);
      expect(record?.bytes).toBe('first-bytes'.length);
      expect(identityOf(record as Received)).toEqual(confirmed);
      expect(spoofedValues(record as Received)).toEqual([]);
    });
  });

  describe('request smuggling', () => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: p\r\nX-Roles: admin\r\n\r\n';
    const cases: [string, string][] = [
      [
        'Content-Length and Transfer-Encoding both',
        `POST /public/cl-te HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n` +
          `0\r\n\r\n${smuggled}`,
      ],
      [
        'two different Content-Length headers',
        `POST /public/cl-cl HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\n` +
          `hello${smuggled}`,
      ],
      [
        'obs-fold (a header line starting with a space)',
        `GET /public/fold HTTP/1.1\r\nHost: p\r\nX-Note: a\r\n X-Roles: admin\r\n\r\n${smuggled}`,
      ],
      ['bare LF line endings', `GET /public/lf HTTP/1.1\nHost: p\nX-Roles: admin\n\n${smuggled}`],
      [
        'Transfer-Encoding: chunked, identity',
        'POST /public/te HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked, identity\r\n\r\n' +
          `0\r\n\r\n${smuggled}`,
      ],
      [
        'an invalid chunk size',
        `POST /public/chunk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n` +
          smuggled,
      ],
      [
        'a space before the colon of a header name',
        `GET /public/colon HTTP/1.1\r\nHost: p\r\nX-Roles : admin\r\n\r\n${smuggled}`,
      ],
      [
        'Content-Length with a sign',
        `POST /public/sign HTTP/1.1\r\nHost: p\r\nContent-Length: +5\r\n\r\nhello${smuggled}`,
      ],
    ];

    it.each(cases)('%s: 400 JSON (or closed), no request reaches the upstream', async (_name, text) => {
      const before = received.length;
      const result = await exchange(proxy.url, text, { waitMs: 3_000 });
      // invalid chunk size is found after the head: the request may already be on its way upstream, then cut
      const status = result.responses[0]?.status;
      if (status !== undefined) expect(status).toBe(400);
      else expect(result.closed).toBe(true);
      expect(result.responses.length).toBeLessThanOrEqual(1);
      expect(result.closed).toBe(true);
      expect(byUrl('/smuggled')).toEqual([]);
      const reached = received.slice(before);
      for (const record of reached) {
        expect(record.complete).toBe(false);
        expect(identityOf(record)).toEqual([]);
      }
      if (status !== undefined) {
        expect(JSON.parse(result.responses[0]?.body ?? '')).toMatchObject({ error: { code: 400 } });
      }
    });

    it('a transfer coding other than chunked (gzip, chunked): 501 JSON, nothing upstream', async () => {
      const before = received.length;
      const result = await exchange(
        proxy.url,
        `POST /v1/coded HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\n` +
          'Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
        { waitMs: 3_000 },
      );
      expect(result.responses[0]?.status).toBe(501);
      expect(JSON.parse(result.responses[0]?.body ?? '')).toMatchObject({ error: { code: 501 } });
      expect(result.closed).toBe(true);
      expect(received.slice(before)).toEqual([]);
    });

    it('bytes after a Connection: close request: 400 or closed, the follow-up never upstream', async () => {
      const result = await exchange(
        proxy.url,
        `GET /public/after-close HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n${smuggled}`,
        { waitMs: 3_000 },
      );
      expect(result.closed).toBe(true);
      for (const response of result.responses) expect([200, 400]).toContain(response.status);
      expect(byUrl('/smuggled')).toEqual([]);
    });

    it('garbage pipelined behind a streaming response: no second request upstream, proxy up', async () => {
      const result = await garbageMidResponse(proxy.url);
      expect(result.data.startsWith('HTTP/1.1 200')).toBe(true);
      expect(byUrl('/smuggled')).toEqual([]);
      expect(byUrl('/public/trickle-garbage')).toHaveLength(1);
      expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    });

    // Regression (fixed): answerClientError (server.ts) writes its raw 400 onto the socket even while a response is already
    // streaming on it: the client gets the 200 head, 1000 of the 5000 body bytes, then "HTTP/1.1 400 Bad
    // Request..." spliced into the body. Node's own default handler checks `socket._httpMessage._headerSent`
    // and destroys the socket instead; the proxy should do the same.
    it('that garbage never splices a 400 into the body being streamed', async () => {
      const result = await garbageMidResponse(proxy.url);
      const headEnd = result.data.indexOf('\r\n\r\n') + 4;
      const head = result.data.slice(0, headEnd).toLowerCase();
      const length = /content-length: (\d+)/.exec(head);
      // The first response's own body: its Content-Length, or up to the last chunk. An answer to the garbage may
      // follow it as a message of its own, never inside it.
      const end = length ? headEnd + Number(length[1]) : result.data.indexOf('\r\n0\r\n\r\n', headEnd);
      const body = result.data.slice(headEnd, end === -1 ? undefined : end);
      expect(body).not.toContain('HTTP/1.1 400');
    });
  });

  describe('hop-by-hop headers', () => {
    it('Connection listing identity headers cannot remove the injected ones', async () => {
      const answer = await one(
        proxy.url,
        `GET /hop HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nX-Service-Token: ${serviceToken}\r\n` +
          'Connection: X-Roles, X-Identity-Status, X-Service-Identity-Status, x_user_id\r\n' +
          'Connection: X-Service-Roles, X-Project-Id, close\r\n' +
          `X-Roles: ${SPOOF}\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/hop');
      const identity = identityOf(record as Received);
      for (const pair of confirmed) expect(identity).toContainEqual(pair);
      expect(identity).toContainEqual(['x-service-identity-status', 'Confirmed']);
      expect(identity).toContainEqual(['x-service-roles', 'service']);
      expect(spoofedValues(record as Received)).toEqual([]);
    });

    it('Connection listing X-Auth-Token: consumed as hop-by-hop, 401, upstream not reached', async () => {
      // Fail-closed: the proxy drops listed fields before authenticating, so the token is gone and nothing is
      // injected. (RFC 9110 §7.6.1 lets the recipient use them; the safe outcome is kept either way.)
      const before = received.length;
      const answer = await one(
        proxy.url,
        `GET /hop-token HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\n` +
          'Connection: close, X-Auth-Token\r\n' +
          `X-Identity-Status: Confirmed-${SPOOF}\r\n\r\n`,
      );
      expect(answer.status).toBe(401);
      expect(received.length).toBe(before);
    });
  });

  describe('spoofed identity headers, every spelling', () => {
    it('with a valid token: only the proxy values, each once', async () => {
      const answer = await one(
        proxy.url,
        `GET /spoof-valid HTTP/1.1\r\nHost: p\r\n${spoofBlock()}X-Roles: admin\r\nX-Roles: ${SPOOF}\r\n` +
          `X-Project-Id: ${SPOOF}-a\r\nX-Project-Id: ${SPOOF}-b\r\nX-Auth-Token: ${token}\r\n` +
          'Connection: close\r\n\r\n',
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/spoof-valid');
      expect(identityOf(record as Received)).toEqual(confirmed);
      expect(spoofedValues(record as Received)).toEqual([]);
      expect(
        (record as Received).rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-roles'),
      ).toHaveLength(1);
    });

    it('without a token on a public route: none at all', async () => {
      const answer = await one(
        proxy.url,
        `GET /public/spoof HTTP/1.1\r\nHost: p\r\n${spoofBlock()}Connection: close\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/public/spoof');
      expect(identityOf(record as Received)).toEqual([]);
      expect(spoofedValues(record as Received)).toEqual([]);
    });

    it('with a bad token: 401 and the upstream not reached', async () => {
      const before = received.length;
      const answer = await one(
        proxy.url,
        `GET /spoof-bad HTTP/1.1\r\nHost: p\r\n${spoofBlock()}X-Auth-Token: not-a-real-token\r\n` +
          'Connection: close\r\n\r\n',
      );
      expect(answer.status).toBe(401);
      expect(received.length).toBe(before);
    });

    it('delay_auth_decision, bad user and service tokens: only the proxy Invalid verdicts', async () => {
      const answer = await one(
        delayed.url,
        `GET /delay-bad HTTP/1.1\r\nHost: p\r\n${spoofBlock()}X-Auth-Token: not-a-real-token\r\n` +
          `X-Service-Token: also-not-real\r\nOpenStack-System-Scope: all\r\nConnection: close\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/delay-bad');
      expect(identityOf(record as Received)).toEqual([
        ['x-identity-status', 'Invalid'],
        ['x-service-identity-status', 'Invalid'],
      ]);
      expect(spoofedValues(record as Received)).toEqual([]);
    });

    it('delay_auth_decision, no token: X-Identity-Status: Invalid alone', async () => {
      const answer = await one(
        delayed.url,
        `GET /delay-none HTTP/1.1\r\nHost: p\r\n${spoofBlock()}Connection: close\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/delay-none');
      expect(identityOf(record as Received)).toEqual([['x-identity-status', 'Invalid']]);
      expect(spoofedValues(record as Received)).toEqual([]);
    });

    it('delay_auth_decision, valid token: the proxy values only', async () => {
      const answer = await one(
        delayed.url,
        `GET /delay-valid HTTP/1.1\r\nHost: p\r\n${spoofBlock()}X-Auth-Token: ${token}\r\n` +
          'Connection: close\r\n\r\n',
      );
      expect(answer.status).toBe(200);
      const [record] = byUrl('/delay-valid');
      expect(identityOf(record as Received)).toEqual(confirmed);
      expect(spoofedValues(record as Received)).toEqual([]);
    });
  });

  describe('HTTP/1.0 and pipelines', () => {
    it('HTTP/1.0, with and without a token, each judged alone', async () => {
      const ok = await one(
        proxy.url,
        `GET /v10-ok HTTP/1.0\r\nX-Auth-Token: ${token}\r\nX_Roles: ${SPOOF}\r\n\r\n`,
      );
      expect(ok.status).toBe(200);
      expect(ok.closed).toBe(true);
      expect(identityOf(byUrl('/v10-ok')[0] as Received)).toEqual(confirmed);
      const before = received.length;
      const refused = await one(proxy.url, `GET /v10-none HTTP/1.0\r\nX-Identity-Status: Confirmed\r\n\r\n`);
      expect(refused.status).toBe(401);
      expect(received.length).toBe(before);
    });

    it('HTTP/1.0 keep-alive pipeline: valid, then spoofed without a token', async () => {
      const before = received.length;
      const result = await exchange(
        proxy.url,
        `GET /v10-pipe-1 HTTP/1.0\r\nConnection: keep-alive\r\nX-Auth-Token: ${token}\r\n\r\n` +
          `GET /v10-pipe-2 HTTP/1.0\r\nX-Roles: ${SPOOF}\r\nX-User-Id: ${SPOOF}\r\n\r\n`,
        { expect: 2, waitMs: 2_000 },
      );
      // The proxy answers the first with `Connection: close` (HTTP/1.0 keep-alive is not kept), so the second
      // is either refused or never answered; it must never reach the upstream.
      expect(result.responses[0]?.status).toBe(200);
      if (result.responses.length > 1) expect(result.responses[1]?.status).toBe(401);
      else expect(result.closed).toBe(true);
      expect(received.slice(before).map((r) => r.url)).toEqual(['/v10-pipe-1']);
      expect(identityOf(byUrl('/v10-pipe-1')[0] as Received)).toEqual(confirmed);
    });

    // Regression (fixed): the second request of that pipeline was parsed and answered (401) into Node's queue, then the
    // socket closed after the first response: its ServerResponse never emits 'close', so server.ts's
    // in-flight count and the http_requests_in_flight gauge stay at 1 for good, its access-log line is never
    // written, and SIGTERM waits the whole grace period for it (then logs unfinished: 1). Counting on the
    // request's socket 'close' as well would settle it.
    it('after that pipeline, the in-flight gauge is back to 0', async () => {
      await expect.poll(() => inFlight(proxy), { timeout: 2_000 }).toBe(0);
    });

    it('a keep-alive pipeline written at once: each judged alone, nothing leaks between them', async () => {
      const before = received.length;
      const result = await exchange(
        proxy.url,
        `GET /pipe-1 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nX-Roles: ${SPOOF}\r\n\r\n` +
          `GET /pipe-2 HTTP/1.1\r\nHost: p\r\nX-Roles: admin-${SPOOF}\r\nX_Identity_Status: Confirmed\r\n` +
          `X-User-Id: ${SPOOF}\r\n\r\n` +
          `GET /public/pipe-3 HTTP/1.1\r\nHost: p\r\nX-Project-Id: ${SPOOF}\r\n\r\n` +
          `POST /pipe-4 HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nContent-Length: 4\r\n\r\nbody` +
          `GET /pipe-5 HTTP/1.1\r\nHost: p\r\nx-identity-status: Confirmed\r\nConnection: close\r\n\r\n`,
        { expect: 5 },
      );
      expect(result.responses.map((r) => r.status)).toEqual([200, 401, 200, 200, 401]);
      expect(
        received
          .slice(before)
          .map((r) => r.url)
          .sort(),
      ).toEqual(['/pipe-1', '/pipe-4', '/public/pipe-3']);
      expect(identityOf(byUrl('/pipe-1')[0] as Received)).toEqual(confirmed);
      expect(identityOf(byUrl('/public/pipe-3')[0] as Received)).toEqual([]);
      expect(identityOf(byUrl('/pipe-4')[0] as Received)).toEqual(confirmed);
      expect(byUrl('/pipe-4')[0]?.bytes).toBe(4);
      for (const record of received.slice(before)) expect(spoofedValues(record)).toEqual([]);
    });
  });

  describe('request targets', () => {
    it('absolute-form target: 400 JSON, upstream not reached, even with a valid token', async () => {
      const before = received.length;
      const result = await exchange(
        proxy.url,
        `GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nX-Auth-Token: ${token}\r\n` +
          'Connection: close\r\n\r\n',
        { expect: 1 },
      );
      expect(result.responses[0]?.status).toBe(400);
      expect(JSON.parse(result.responses[0]?.body ?? '')).toMatchObject({ error: { code: 400 } });
      expect(received.length).toBe(before);
    });

    it('OPTIONS *: 400, upstream not reached', async () => {
      const before = received.length;
      const answer = await one(proxy.url, 'OPTIONS * HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n');
      expect([400, 405]).toContain(answer.status);
      expect(received.length).toBe(before);
    });

    it('CONNECT: the upstream is not reached and the proxy stays up', async () => {
      const before = received.length;
      const result = await exchange(
        proxy.url,
        `CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nX-Auth-Token: ${token}\r\n\r\n`,
        { waitMs: 3_000 },
      );
      expect(result.closed).toBe(true);
      expect(received.length).toBe(before);
      expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    });

    // Regression (fixed): CONNECT gets a bare close with no answer at all: server.ts has no 'connect' listener, so Node
    // destroys the socket. README "What the sidecar does" item 8 promises JSON answers, "never a bare close".
    it('CONNECT: answered 400 or 405 JSON', async () => {
      const answer = await one(
        proxy.url,
        'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n',
      );
      expect([400, 405]).toContain(answer.status);
    });

    it('a protocol-relative path (//host/x) still goes to the configured upstream only', async () => {
      const answer = await one(
        proxy.url,
        `GET //evil.example/x HTTP/1.1\r\nHost: p\r\nX-Auth-Token: ${token}\r\nConnection: close\r\n\r\n`,
      );
      expect(answer.status).toBe(200);
      expect(byUrl('//evil.example/x')).toHaveLength(1);
    });
  });

  describe('property-based fuzz', () => {
    const tchar = [..."!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"];
    /** Names whose meaning would change the expected answer (framing, routing, tokens); tested elsewhere. */
    const RESERVED = new Set([
      'host',
      'content-length',
      'transfer-encoding',
      'connection',
      'keep-alive',
      'proxy-connection',
      'upgrade',
      'expect',
      'te',
      'trailer',
      'x-auth-token',
      'x-storage-token',
      'x-service-token',
      'authorization',
    ]);
    const identityName = fc
      .tuple(fc.constantFrom(...IDENTITY_HEADERS), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }))
      .map(([name, flips]) =>
        [...name]
          .map((c, i) => (c === '-' && flips[i] ? '_' : flips[i] ? c.toUpperCase() : c.toLowerCase()))
          .join(''),
      );
    const printableName = fc
      .string({ unit: fc.constantFrom(...tchar), minLength: 1, maxLength: 24 })
      .filter(
        (name) => !RESERVED.has(normalizeHeaderName(name)) && !normalizeHeaderName(name).startsWith('proxy-'),
      );
    const visible = fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c));
    const valueChar = fc.oneof(
      { weight: 8, arbitrary: visible },
      { weight: 1, arbitrary: fc.constantFrom(' ', '\t') },
      { weight: 1, arbitrary: fc.integer({ min: 0xa0, max: 0x2fff }).map((c) => String.fromCharCode(c)) },
    );
    const value = fc.string({ unit: valueChar, maxLength: 40 }).map((v) => v.trim());
    /** kind says what the proxy should make of it. */
    const tokenArb = fc.oneof(
      fc.constant({ kind: 'valid' as const, text: () => token }),
      fc.constant({ kind: 'valid' as const, text: () => ` ${token}\t` }),
      fc.constant({ kind: 'none' as const, text: () => undefined }),
      fc.string({ unit: visible, minLength: 1, maxLength: 300 }).map((t) => ({
        kind: 'garbage' as const,
        text: () => t,
      })),
      fc.string({ unit: visible, minLength: 1, maxLength: 10 }).map((t) => ({
        kind: 'garbage' as const,
        text: () => `${token}${t}`,
      })),
      fc.string({ unit: 'binary', minLength: 1, maxLength: 60 }).map((t) => ({
        kind: 'garbage' as const,
        // unicode, escaped the way a confused client would send it
        text: () =>
          `x${JSON.stringify(t)
            .slice(1, -1)
            .replaceAll(/[^\x21-\x7e]/g, '?')}`,
      })),
      fc
        .string({ unit: fc.integer({ min: 0xa1, max: 0xffff }).map((c) => String.fromCharCode(c)) })
        .map((t) => ({ kind: 'garbage' as const, text: () => `u${t}` })),
      fc
        .integer({ min: 2_000, max: 5_000 })
        .map((n) => ({ kind: 'garbage' as const, text: () => 'L'.repeat(n) })),
      fc
        .integer({ min: MAX_HEADER_BYTES + 500, max: 3 * MAX_HEADER_BYTES })
        .map((n) => ({ kind: 'oversized' as const, text: () => 'H'.repeat(n) })),
    );
    const request = fc.record({
      route: fc.constantFrom('protected', 'public'),
      token: tokenArb,
      headers: fc.array(fc.tuple(fc.oneof(identityName, printableName), value), { maxLength: 12 }),
      // one time in ten, a control character in a header value: Node refuses the head (400)
      control: fc.oneof(
        { weight: 9, arbitrary: fc.constant(null) },
        { weight: 1, arbitrary: fc.integer({ min: 0x01, max: 0x08 }) },
      ),
    });
    // 200: forwarded (public route, or a valid token); 401: no or bad token (Keystone says 404); 431: the
    // head is over max_header_bytes; 400: a head Node cannot parse. Never 413 (the proxy sets no body limit),
    // and never 503: Keystone is healthy here, so a 503 would blame Keystone for a client's bytes. Never 500.
    const ALLOWED = [200, 400, 401, 431];

    /** The same property for each filter: where the token goes, which CLI, what the upstream must see. */
    const filters = [
      {
        filter: 'auth_token',
        cli: () => proxy,
        tokenLine: (t: string) => `X-Auth-Token: ${t}\r\n`,
        identity: () => confirmed,
      },
      {
        filter: 'oauth2_token',
        cli: () => oauth2,
        tokenLine: (t: string) => `Authorization: Bearer ${t}\r\n`,
        // keystonemiddleware's oauth2_token sets no X-Identity-Status
        identity: () => confirmed.filter(([name]) => name !== 'x-identity-status'),
      },
    ] as const;
    let oauth2: CliRun;
    beforeAll(async () => {
      const yaml = `filter: oauth2_token\n${singleProcess(configYaml(keystone.url, upstream.url, false))}`;
      oauth2 = await startCli(['--config', writeConfig(yaml)], ENV);
    });
    afterAll(() => oauth2?.stop());

    it.each(filters)(
      '$filter: any headers and tokens: an allowed status, no crash, no client identity value upstream',
      async (f) => {
        const proxy = f.cli();
        let n = 0;
        const statuses = new Map<number, number>();
        await fc.assert(
          fc.asyncProperty(request, async (input) => {
            const id = `${Date.now()}-${n++}`;
            const path = input.route === 'public' ? `/public/fuzz/${id}` : `/fuzz/${id}`;
            const tokenText = input.token.text();
            const broken =
              input.control === null ? '' : `X-Broken: a${String.fromCharCode(input.control)}b\r\n`;
            const lines = input.headers.map(([name, v]) => `${name}: ${v}\r\n`).join('') + broken;
            const tokenLine = tokenText === undefined ? '' : f.tokenLine(tokenText);
            const text = `GET ${path} HTTP/1.1\r\nHost: p\r\n${lines}${tokenLine}Connection: close\r\n\r\n`;
            const bytes = Buffer.from(text, 'utf8');
            const answer = await one(proxy.url, bytes);
            statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
            expect(ALLOWED).toContain(answer.status);
            // the header lines come before the token line: a control character there is refused first
            const expected =
              input.control !== null
                ? 400
                : bytes.length > MAX_HEADER_BYTES
                  ? 431
                  : input.route === 'public' || input.token.kind === 'valid'
                    ? 200
                    : 401;
            expect(answer.status).toBe(expected);
            const reached = byUrl(path);
            if (answer.status !== 200) {
              expect(reached).toEqual([]);
              return;
            }
            expect(reached).toHaveLength(1);
            const identity = identityOf(reached[0] as Received);
            expect(identity).toEqual(input.route === 'public' ? [] : f.identity());
          }),
          { numRuns: 150 },
        );
        expect(proxy.child.exitCode).toBeNull();
        expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);
        console.log(`fuzz statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
      },
      30_000,
    );
  });

  describe('after everything', () => {
    it('the slow-loris connection was answered 408 (or closed), not held forever', async () => {
      const result = await slowLoris;
      const status = result.responses[0]?.status;
      if (status !== undefined) expect(status).toBe(408);
      expect(result.closed || status === 408).toBe(true);
      // Answered by our headers_timeout (1 s + the 250 ms sweep), not by Node's own bound (~30 s) nor this
      // test's 40 s wait: the time until the proxy answered or closed, with room for a loaded machine.
      expect(result.ms).toBeLessThan(15_000);
      expect(byUrl('/public/slow-loris')).toEqual([]);
    }, 40_000);

    it('both CLIs are still alive and healthy', async () => {
      expect(proxy.child.exitCode).toBeNull();
      expect(delayed.child.exitCode).toBeNull();
      expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);
      expect((await fetch(`${delayed.adminUrl}/healthz`)).status).toBe(200);
      for (const record of received) expect(spoofedValues(record)).toEqual([]);
    });
  });
});
