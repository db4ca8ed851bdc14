/**
 * The sidecar's pino logger: JSON lines with ISO time and level labels, secrets redacted by pino before any
 * formatting, and a small built-in pretty format for terminals (no pino-pretty dependency).
 */

import type { DestinationStream, Logger as PinoLogger } from 'pino';
import { pino } from 'pino';
import sonicBoom, { type SonicBoom as SonicBoomClass } from 'sonic-boom';
import { ACCESS_LOG_MESSAGE, type Logger } from './observer.js';

export interface LoggerOptions {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  format: 'json' | 'pretty';
  /** Where lines go; default stdout. */
  destination?: DestinationStream;
  /** Fields added to every line; replaces pino's default `pid` and `hostname`. */
  base?: Record<string, unknown>;
  /** JSON to stdout: access-log lines wait up to this long (or until 4 KiB wait) to be written together; 0: at once. */
  flushIntervalMs?: number;
}

/** What pino writes in place of a redacted value. */
export const REDACTED = '[redacted]';

const TOKEN_HEADERS = ['x-auth-token', 'x-storage-token', 'x-service-token', 'x-subject-token'];
const HEADER_CONTAINERS = ['req.headers', 'headers', 'request.headers'];

/**
 * Every pino redact path; exported so embedders who bring their own pino can reuse it.
 * `*.x` reaches one level down only (pino's wildcard), which is where the engine puts such fields.
 */
export const REDACT_PATHS: readonly string[] = Object.freeze([
  ...HEADER_CONTAINERS.flatMap((container) => TOKEN_HEADERS.map((header) => `${container}["${header}"]`)),
  'token',
  'password',
  'secret',
  '*.password',
  '*.secret',
  '*.application_credential_secret',
]);

/** At exit, how many times (100 ms apart) a stalled log reader is waited for before the rest is dropped. */
const EXIT_WRITE_RETRIES = 20;
/** Lines kept in memory for a stalled log reader; past this they are dropped, never the process's memory. */
const MAX_BUFFERED_LOG_BYTES = 16 * 1024 * 1024;
/** With a flush interval, waiting lines are written at once when this many bytes wait. */
const BATCH_LOG_BYTES = 4096;

/** How such a line ends in JSON: pino writes `msg` last, and a quote inside a value is always escaped. */
const ACCESS_LINE_END = `"msg":"${ACCESS_LOG_MESSAGE}"}\n`;

/**
 * stdout for the logs, such that a log reader that went away (EPIPE) or stopped reading (a full pipe) can never
 * keep the process from exiting: pino's own stdout destination (sonic-boom 4) retries a failed synchronous flush at
 * exit forever, so SIGTERM never ended the process. Here: sonic-boom 5 (which gives up on errors other than
 * EAGAIN), logging stops at the first EPIPE, at most 16 MiB wait for a stalled reader (then lines are dropped,
 * said once on stderr), and the exit flush waits at most 2 s for it. Requests never wait for the logs.
 * `flushIntervalMs` > 0 batches lines (see `batchLines`).
 */
export function stdoutDestination(fd = 1, flushIntervalMs = 0): DestinationStream {
  // A pipe that a child process inherits as stdout is in blocking mode: a write to a full one would block a
  // libuv thread for good, and the exit with it (threads are joined at exit), whatever the retry bounds below.
  // Opening Node's own stdout handle switches the pipe to non-blocking (libuv does for pipes and sockets), so a
  // stalled reader shows as EAGAIN, which sonic-boom retries and gives up on as bounded here.
  if (fd === 1) void process.stdout.writable;
  // A CommonJS module: its default import is the constructor, which its types declare as a named class.
  const stream = new (sonicBoom as unknown as typeof SonicBoomClass)({
    fd,
    minLength: 0,
    maxLength: MAX_BUFFERED_LOG_BYTES,
  });
  let broken = false;
  stream.once('drop', () => {
    process.stderr.write('keystone-auth-proxy: stdout is not being read: log lines are being dropped\n');
  });
  const stop = (): void => {
    broken = true;
    stream.write = () => true;
  };
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (broken) return;
    stop();
    // Nothing can be logged any more; stderr may still be read.
    if (error.code !== 'EPIPE')
      process.stderr.write(`keystone-auth-proxy: logging stopped: ${error.message}\n`);
  });
  const batch = flushIntervalMs > 0 ? batchLines(stream, flushIntervalMs) : undefined;
  process.once('exit', () => {
    batch?.handOver();
    if (broken) return;
    (stream as unknown as { maxWriteRetries: number }).maxWriteRetries = EXIT_WRITE_RETRIES;
    try {
      stream.flushSync();
    } catch {
      // The reader is gone or stalled: what is left of the logs cannot be written.
    }
  });
  return batch ?? stream;
}

/**
 * Hands access-log lines to `inner` together: one after a quiet `intervalMs` goes at once, later ones wait until
 * `intervalMs` after the last hand-over, or until 4 KiB wait. Every other line (start-up, reloads, the breaker,
 * shutdown, errors) goes at once, with whatever waits before it, in order. At a few hundred requests a second, one
 * write per access-log line (a thread-pool hop and its wake-ups) cost 2 to 11 % of the proxy's CPU per request
 * (bench/README.md, low rate).
 */
function batchLines(inner: SonicBoomClass, intervalMs: number): DestinationStream & { handOver(): void } {
  let waiting: string[] = [];
  let bytes = 0;
  let last = Number.NEGATIVE_INFINITY;
  let timer: NodeJS.Timeout | undefined;
  const handOver = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    last = performance.now();
    if (waiting.length === 0) return;
    const text = waiting.join('');
    waiting = [];
    bytes = 0;
    inner.write(text);
  };
  return {
    write(line: string): boolean {
      waiting.push(line);
      bytes += line.length;
      if (bytes >= BATCH_LOG_BYTES || !line.endsWith(ACCESS_LINE_END)) handOver();
      else if (timer === undefined) {
        const wait = last + intervalMs - performance.now();
        if (wait <= 0) handOver();
        // unref: a waiting line never keeps the process alive; the exit hook hands it over.
        else timer = setTimeout(handOver, wait).unref();
      }
      return true;
    },
    handOver,
  };
}

export function createLogger(options: LoggerOptions): PinoLogger {
  const logger = pino(
    {
      level: options.level,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACT_PATHS], censor: REDACTED },
      ...(options.base === undefined ? {} : { base: options.base }),
    },
    options.format === 'pretty'
      ? prettyDestination(options.destination)
      : (options.destination ?? stdoutDestination(1, options.flushIntervalMs)),
  );
  // Compile-time proof that the engine can take this logger as is.
  return logger satisfies Logger;
}

const LEVEL_COLOURS: Record<string, string> = {
  trace: '90',
  debug: '36',
  info: '32',
  warn: '33',
  error: '31',
  fatal: '41;97',
};
/** pino's defaults say little in a terminal; `time`, `level` and `msg` are rendered in the line's head. */
const HEAD_KEYS = new Set(['time', 'level', 'msg', 'pid', 'hostname']);

function prettyDestination(target: DestinationStream | undefined): DestinationStream {
  // Never batched: a pretty line is never an access line to `batchLines`.
  const out = target ?? stdoutDestination();
  const tty = (target === undefined ? process.stdout.isTTY : (target as { isTTY?: unknown }).isTTY) === true;
  const colour = tty && process.env.NO_COLOR === undefined;
  return {
    write(line: string): void {
      out.write(`${formatLine(line, colour)}\n`);
    },
  };
}

/** One JSON record in, `HH:MM:SS.mmm LEVEL msg key=value …` out. */
function formatLine(line: string, colour: boolean): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.trimEnd();
  }
  // The ISO timestamp is UTC; its clock part is what a human scanning a terminal needs.
  const time = typeof record.time === 'string' ? record.time.slice(11, 23) : String(record.time ?? '');
  const label = String(record.level ?? '');
  const paddedLabel = label.toUpperCase().padEnd(5);
  const level = colour ? `\u001b[${LEVEL_COLOURS[label] ?? '0'}m${paddedLabel}\u001b[0m` : paddedLabel;
  const parts = [time, level, oneLine(String(record.msg ?? ''))];
  for (const [key, value] of Object.entries(record)) {
    if (!HEAD_KEYS.has(key)) parts.push(`${key}=${renderValue(value)}`);
  }
  return parts.join(' ');
}

function renderValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  // JSON keeps nested objects (and stack traces) on one line.
  return JSON.stringify(value) ?? String(value);
}

function oneLine(text: string): string {
  return text.replace(/\r?\n/g, '\\n');
}
