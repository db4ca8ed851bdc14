/**
 * The sidecar's pino logger: JSON lines with ISO time and level labels, secrets redacted by pino before any
 * formatting, and a small built-in pretty format for terminals (no pino-pretty dependency).
 */

import type { DestinationStream, Logger as PinoLogger } from 'pino';
import { pino } from 'pino';
import type { Logger } from './observer.js';

export interface LoggerOptions {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  format: 'json' | 'pretty';
  /** Where lines go; default stdout. */
  destination?: DestinationStream;
  /** Fields added to every line; replaces pino's default `pid` and `hostname`. */
  base?: Record<string, unknown>;
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

export function createLogger(options: LoggerOptions): PinoLogger {
  const logger = pino(
    {
      level: options.level,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACT_PATHS], censor: REDACTED },
      ...(options.base === undefined ? {} : { base: options.base }),
    },
    options.format === 'pretty' ? prettyDestination(options.destination) : options.destination,
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
  const out = target ?? pino.destination(1);
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
