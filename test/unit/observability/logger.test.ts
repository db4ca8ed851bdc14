import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  createLogger,
  type LoggerOptions,
  REDACT_PATHS,
  REDACTED,
  stdoutDestination,
} from '../../../src/observability/logger.js';
import type { Logger } from '../../../src/observability/observer.js';

const SECRET = 'gAAAAABsecret-token-value';
const TOKEN_HEADERS = ['x-auth-token', 'x-storage-token', 'x-service-token', 'x-subject-token'];

function capture(options: Partial<LoggerOptions> = {}, extra: { isTTY?: boolean } = {}) {
  const lines: string[] = [];
  const destination = { ...extra, write: (line: string) => void lines.push(line) };
  const logger = createLogger({ level: 'info', format: 'json', destination, ...options });
  const records = () => lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  return { logger, lines, records };
}

describe('createLogger (json)', () => {
  it('writes one JSON line per record with the level label, ISO time and msg', () => {
    const { logger, lines, records } = capture();
    logger.info({ userId: 'u1', status: 401 }, 'token rejected');
    logger.warn({}, 'slow Keystone');
    expect(lines).toHaveLength(2);
    expect(lines.every((line) => line.endsWith('\n') && !line.slice(0, -1).includes('\n'))).toBe(true);
    const [first, second] = records();
    expect(first).toMatchObject({ level: 'info', msg: 'token rejected', userId: 'u1', status: 401 });
    expect(first?.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    expect(Math.abs(Date.parse(String(first?.time)) - Date.now())).toBeLessThan(60_000);
    expect(second).toMatchObject({ level: 'warn', msg: 'slow Keystone' });
    expect(lines[0]).toContain('"level":"info"');
  });

  it('keeps pino base fields by default and replaces them with options.base', () => {
    const plain = capture();
    plain.logger.info({}, 'x');
    expect(plain.records()[0]).toMatchObject({ pid: process.pid });
    const based = capture({ base: { service: 'keystone-auth-proxy', version: '1.0.0' } });
    based.logger.info({}, 'x');
    const record = based.records()[0];
    expect(record).toMatchObject({ service: 'keystone-auth-proxy', version: '1.0.0' });
    expect(record).not.toHaveProperty('pid');
  });

  it('filters by level', () => {
    const warn = capture({ level: 'warn' });
    warn.logger.debug({}, 'd');
    warn.logger.info({}, 'i');
    warn.logger.warn({}, 'w');
    warn.logger.error({}, 'e');
    warn.logger.fatal({}, 'f');
    expect(warn.records().map((record) => record.level)).toEqual(['warn', 'error', 'fatal']);

    const trace = capture({ level: 'trace' });
    trace.logger.trace({}, 't');
    trace.logger.debug({}, 'd');
    expect(trace.records().map((record) => record.level)).toEqual(['trace', 'debug']);

    const silent = capture({ level: 'silent' });
    silent.logger.fatal({}, 'f');
    expect(silent.lines).toEqual([]);
  });

  it.each(['req.headers', 'headers', 'request.headers'])(
    'redacts every token header under %s',
    (container) => {
      const { logger, lines, records } = capture();
      const headers: Record<string, string> = { host: 'api.example', 'user-agent': 'curl/8' };
      for (const name of TOKEN_HEADERS) headers[name] = SECRET;
      const path = container.split('.');
      const record = path.reduceRight<Record<string, unknown>>((inner, key) => ({ [key]: inner }), headers);
      logger.info(record, 'request');

      expect(lines[0]).not.toContain(SECRET);
      let logged: unknown = records()[0];
      for (const key of path) logged = (logged as Record<string, unknown>)[key];
      expect(logged).toEqual({
        host: 'api.example',
        'user-agent': 'curl/8',
        'x-auth-token': REDACTED,
        'x-storage-token': REDACTED,
        'x-service-token': REDACTED,
        'x-subject-token': REDACTED,
      });
    },
  );

  it('redacts top-level token/password/secret and nested password/secret/app credential secret', () => {
    const { logger, lines, records } = capture();
    logger.info(
      {
        token: SECRET,
        password: SECRET,
        secret: SECRET,
        auth: { username: 'svc', password: SECRET, user_domain_name: 'Default' },
        credential: { id: 'ac1', secret: SECRET, application_credential_secret: SECRET },
        kept: 'visible',
      },
      'configured',
    );
    expect(lines[0]).not.toContain(SECRET);
    expect(REDACTED).toBe('[redacted]');
    expect(records()[0]).toMatchObject({
      token: REDACTED,
      password: REDACTED,
      secret: REDACTED,
      auth: { username: 'svc', password: REDACTED, user_domain_name: 'Default' },
      credential: { id: 'ac1', secret: REDACTED, application_credential_secret: REDACTED },
      kept: 'visible',
      msg: 'configured',
    });
  });

  it('leaves records without those fields, and unrelated headers, untouched', () => {
    const { logger, records } = capture();
    logger.info({ req: { headers: { accept: 'application/json' } }, tokenCount: 2 }, 'ok');
    expect(records()[0]).toMatchObject({ req: { headers: { accept: 'application/json' } }, tokenCount: 2 });
    expect(records()[0]).not.toHaveProperty('req.headers.x-auth-token');
  });

  it('lists every redact path once', () => {
    expect(new Set(REDACT_PATHS).size).toBe(REDACT_PATHS.length);
    expect(REDACT_PATHS).toHaveLength(3 * TOKEN_HEADERS.length + 6);
    expect(REDACT_PATHS).toContain('req.headers["x-auth-token"]');
    expect(Object.isFrozen(REDACT_PATHS)).toBe(true);
  });

  it('satisfies the engine Logger interface', () => {
    const { logger, records } = capture();
    const engineLogger: Logger = logger;
    engineLogger.error({ reason: 'timeout' }, 'Keystone unavailable');
    expect(records()[0]).toMatchObject({ level: 'error', reason: 'timeout', msg: 'Keystone unavailable' });
  });
});

describe('createLogger (pretty)', () => {
  const head = /^\d{2}:\d{2}:\d{2}\.\d{3} /;

  it('writes one human line per record: time, level, message, key=value pairs', () => {
    const { logger, lines } = capture({ format: 'pretty', base: {} });
    logger.info({ userId: 'u1', status: 401, cached: false, note: 'two words' }, 'token rejected');
    logger.warn({ nested: { a: 1 } }, 'multi\nline message');
    logger.error({ err: new Error('boom') }, 'failed');
    expect(lines).toHaveLength(3);
    for (const line of lines) {
      expect(line).toMatch(head);
      expect(line.endsWith('\n')).toBe(true);
      expect(line.slice(0, -1)).not.toContain('\n');
      expect(line).not.toContain('\u001b[');
    }
    expect(lines[0]).toMatch(/^\d{2}:\d{2}:\d{2}\.\d{3} INFO {2}token rejected /);
    expect(lines[0]).toContain(' userId=u1 status=401 cached=false note="two words"\n');
    expect(lines[1]).toMatch(/ WARN {2}multi\\nline message nested=\{"a":1\}\n$/);
    expect(lines[2]).toMatch(/ ERROR failed err=\{"type":"Error","message":"boom","stack":/);
  });

  it('shows the clock part of the (UTC) ISO time', () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.parse('2030-05-06T12:34:56.789Z') });
    try {
      const json = capture();
      const pretty = capture({ format: 'pretty', base: {} });
      json.logger.info({}, 'x');
      pretty.logger.info({}, 'x');
      expect(json.records()[0]?.time).toBe('2030-05-06T12:34:56.789Z');
      expect(pretty.lines).toEqual(['12:34:56.789 INFO  x\n']);
    } finally {
      vi.useRealTimers();
    }
  });

  it('omits pid and hostname but keeps other base fields', () => {
    const { logger, lines } = capture({ format: 'pretty' });
    logger.info({}, 'hello');
    expect(lines[0]).not.toContain('pid=');
    expect(lines[0]).not.toContain('hostname=');
    const based = capture({ format: 'pretty', base: { service: 'kap' } });
    based.logger.info({}, 'hello');
    expect(based.lines[0]).toMatch(/ INFO {2}hello service=kap\n$/);
  });

  it('redacts before formatting', () => {
    const { logger, lines } = capture({ format: 'pretty' });
    logger.info({ req: { headers: { 'x-auth-token': SECRET } }, password: SECRET, user: 'alice' }, 'request');
    expect(lines[0]).not.toContain(SECRET);
    expect(lines[0]).toContain(`req={"headers":{"x-auth-token":"${REDACTED}"}}`);
    expect(lines[0]).toContain(`password=${REDACTED}`);
    expect(lines[0]).toContain('user=alice');
  });

  it('colours the level only when the destination is a TTY and NO_COLOR is unset', () => {
    vi.stubEnv('NO_COLOR', undefined);
    try {
      const { logger, lines } = capture({ format: 'pretty', base: {} }, { isTTY: true });
      logger.warn({ k: 'v' }, 'careful');
      expect(lines[0]).toMatch(head);
      expect(lines[0]?.slice(13)).toBe('\u001b[33mWARN \u001b[0m careful k=v\n');
      vi.stubEnv('NO_COLOR', '1');
      const plain = capture({ format: 'pretty', base: {} }, { isTTY: true });
      plain.logger.warn({ k: 'v' }, 'careful');
      expect(plain.lines[0]).toMatch(/^\d{2}:\d{2}:\d{2}\.\d{3} WARN {2}careful k=v\n$/);
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('filters by level and works with a Node Writable destination', async () => {
    const chunks: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk.toString());
        callback();
      },
    });
    const logger = createLogger({ level: 'warn', format: 'pretty', destination });
    logger.info({}, 'dropped');
    logger.error({ code: 'E1' }, 'kept');
    await new Promise<void>((resolve) => destination.end(resolve));
    expect(chunks).toHaveLength(1);
    expect(chunks[0]).toMatch(/ ERROR kept code=E1\n$/);
  });
});

describe('stdoutDestination batching (flushIntervalMs)', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0)) cleanup();
  });
  /** A destination on a temporary file, closed and removed after the test. */
  const fileDestination = (flushIntervalMs: number) => {
    const dir = mkdtempSync(join(tmpdir(), 'kap-log-'));
    const file = join(dir, 'out.log');
    const fd = openSync(file, 'w');
    cleanups.push(() => {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    });
    return { stream: stdoutDestination(fd, flushIntervalMs), read: () => readFileSync(file, 'utf8') };
  };
  // As pino writes them: `msg` last.
  const line = (n: number) => `${JSON.stringify({ level: 'info', n, msg: 'request' })}\n`;
  const other = (msg: string) => `${JSON.stringify({ level: 'info', msg })}\n`;

  it('0: each line is written at once', async () => {
    const out = fileDestination(0);
    out.stream.write(line(1));
    await vi.waitFor(() => expect(out.read()).toBe(line(1)), { timeout: 1000, interval: 5 });
  });

  it('> 0: a line after a quiet interval at once, the next ones together an interval later, in order', async () => {
    const out = fileDestination(300);
    out.stream.write(line(1));
    await vi.waitFor(() => expect(out.read()).toBe(line(1)), { timeout: 1000, interval: 5 });
    out.stream.write(line(2));
    out.stream.write(line(3));
    await new Promise((r) => setTimeout(r, 100));
    expect(out.read()).toBe(line(1));
    await vi.waitFor(() => expect(out.read()).toBe(line(1) + line(2) + line(3)), {
      timeout: 2000,
      interval: 10,
    });
  });

  it('> 0: any other line goes at once, with the access lines waiting before it, in order', async () => {
    const out = fileDestination(10_000);
    out.stream.write(line(1));
    await vi.waitFor(() => expect(out.read()).toBe(line(1)), { timeout: 1000, interval: 5 });
    out.stream.write(line(2));
    // Not an access line, though its message starts the same way.
    out.stream.write(other('request failed'));
    await vi.waitFor(() => expect(out.read()).toBe(line(1) + line(2) + other('request failed')), {
      timeout: 1000,
      interval: 5,
    });
    out.stream.write(line(3));
    await new Promise((r) => setTimeout(r, 100));
    expect(out.read()).toBe(line(1) + line(2) + other('request failed'));
  });

  it('> 0: once 4 KiB wait they are written without waiting for the interval', async () => {
    const out = fileDestination(10_000);
    out.stream.write(line(-1));
    const lines = Array.from({ length: 200 }, (_, n) => line(n)).join('');
    expect(lines.length).toBeGreaterThan(4096);
    out.stream.write(lines);
    await vi.waitFor(() => expect(out.read()).toBe(line(-1) + lines), { timeout: 1000, interval: 5 });
  });
});
