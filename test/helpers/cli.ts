/** Runs the real CLI (dist/cli.js) as a child process with a YAML config, and reads its JSON log lines. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = join(ROOT, 'dist', 'cli.js');

export function cliBuilt(): boolean {
  return existsSync(CLI);
}

export interface CliRun {
  readonly child: ChildProcess;
  readonly logs: Record<string, unknown>[];
  readonly stderr: () => string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  url: string;
  adminUrl: string;
  forwardAuthUrl: string | undefined;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

let configDir: string | undefined;
let configCount = 0;

/** Writes a config into one temporary directory per test process, removed when the process exits. */
export function writeConfig(yaml: string): string {
  if (configDir === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'kap-'));
    configDir = dir;
    // Configs may hold passwords: leave none behind.
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  const file = join(configDir, `config-${++configCount}.yaml`);
  writeFileSync(file, yaml, { mode: 0o600 });
  return file;
}

/** Calls `onLine` for every complete line the stream writes (the CLI's JSON log lines), without the newline. */
export function forEachLine(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buffered = '';
  stream.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let newline = buffered.indexOf('\n');
    while (newline !== -1) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      newline = buffered.indexOf('\n');
      onLine(line);
    }
  });
}

/** Starts the CLI and waits for its "started" log line (or its exit). */
export function startCli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  let errText = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const run: CliRun = {
      child,
      logs,
      stderr: () => errText,
      exited,
      url: '',
      adminUrl: '',
      forwardAuthUrl: undefined,
      async stop(signal = 'SIGTERM') {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        return exited;
      },
    };
    child.stderr?.on('data', (chunk: Buffer) => {
      errText += chunk.toString();
    });
    forEachLine(child.stdout, (line) => {
      try {
        const record = JSON.parse(line) as Record<string, unknown>;
        logs.push(record);
        if (record.msg === 'keystone-auth-proxy started') {
          run.url = String(record.listen ?? '');
          run.adminUrl = String(record.admin);
          run.forwardAuthUrl = record.forwardAuth === undefined ? undefined : String(record.forwardAuth);
          resolve(run);
        }
      } catch {
        // a non-JSON line (pretty format or a banner) is kept out of the records
      }
    });
    exited.then((code) => reject(new Error(`CLI exited with ${code} before starting: ${errText}`)), reject);
  });
}

/** Runs the CLI to completion (for --help, --check-config, bad configs). */
export function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** One process (no cluster): the CLI's pid is the process that serves, and its state is one state. */
export function singleProcess(yaml: string): string {
  return `workers: 1\n${yaml}`;
}

export interface SidecarYamlOptions {
  readonly keystoneUrl: string;
  readonly upstreamUrl: string;
  readonly responseTimeoutSeconds: number;
  readonly keystoneTimeoutSeconds: number;
  /** More `keystone_authtoken` options, one `key: value` per line. */
  readonly authtoken?: readonly string[];
  /** More top-level YAML, as is. */
  readonly rest?: string;
}

/**
 * The sidecar config the end-to-end and security suites share: loopback listeners on free ports, the emulator's
 * service user (password from TEST_PROXY_PASSWORD), service_type echo.
 */
export function sidecarYaml(o: SidecarYamlOptions): string {
  const extra = (o.authtoken ?? []).map((line) => `  ${line}\n`).join('');
  return `
listen: { host: 127.0.0.1, port: 0 }
upstream: { url: "${o.upstreamUrl}", response_timeout_seconds: ${o.responseTimeoutSeconds}, connect_timeout_seconds: 1 }
admin_listen: { host: 127.0.0.1, port: 0 }
keystone_authtoken:
  www_authenticate_uri: "http://keystone.example:5000"
  auth_url: "${o.keystoneUrl}"
  username: proxy
  password: "\${TEST_PROXY_PASSWORD}"
  user_domain_name: Default
  project_name: service
  project_domain_name: Default
  service_type: echo
  http_request_timeout_seconds: ${o.keystoneTimeoutSeconds}
${extra}${o.rest ?? ''}`;
}

/** One series of a /metrics scrape (`name{labels}` exactly as exported), 0 when it is absent. */
export async function scrapeMetric(adminUrl: string, series: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}
