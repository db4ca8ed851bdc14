/**
 * The log reader is the process's stdout pipe. When it goes away (EPIPE) or stops reading (a full pipe), the
 * proxy keeps answering and SIGTERM still ends it: before, pino's stdout destination retried its exit flush
 * forever and the process never exited.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cliBuilt, sidecarYaml, singleProcess, writeConfig } from '../helpers/cli.js';
import { echo } from '../helpers/echo-app.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';

const { users, projects, roles } = fixtures;

interface Started {
  child: ChildProcess;
  url: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; afterMs: () => number }>;
}

describe.skipIf(!cliBuilt())('a log reader that goes away or stalls', () => {
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let config: string;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
    upstream = await listen(echo);
    config = sidecarConfig(keystone.url, 'log: { level: info }\nshutdown: { grace_period_seconds: 2 }\n');
  });
  afterAll(async () => {
    await upstream?.close();
    await keystone?.close();
  });

  /** A one-process sidecar config in front of the echo upstream, 2 s timeouts, `rest` appended. */
  const sidecarConfig = (keystoneUrl: string, rest: string): string =>
    writeConfig(
      singleProcess(
        sidecarYaml({
          keystoneUrl,
          upstreamUrl: upstream.url,
          responseTimeoutSeconds: 2,
          keystoneTimeoutSeconds: 2,
          rest,
        }),
      ),
    );

  /** Starts the CLI with stdout on a pipe this test controls; resolves once it listens. */
  async function start(configFile = config): Promise<Started> {
    const child = spawn(process.execPath, [CLI, '--config', configFile], {
      env: { ...process.env, TEST_PROXY_PASSWORD: users.proxy.password as string },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let signalledAt = 0;
    child.once('spawn', () => undefined);
    const exit = new Promise<Awaited<Started['exit']>>((resolve) =>
      child.once('exit', (code, signal) => {
        const at = Date.now();
        resolve({ code, signal, afterMs: () => at - signalledAt });
      }),
    );
    const originalKill = child.kill.bind(child);
    child.kill = (signal?: NodeJS.Signals | number) => {
      signalledAt = Date.now();
      return originalKill(signal);
    };
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      const onData = (chunk: Buffer): void => {
        out += chunk.toString();
        const found = /"listen":"(http:\/\/[^"]+)"/.exec(out);
        if (found?.[1]) {
          // Keep reading (and dropping) until a test pauses or closes the pipe.
          out = '';
          resolve(found[1]);
        }
      };
      child.stdout?.on('data', onData);
      child.once('exit', (code) => reject(new Error(`CLI exited ${code} before listening: ${out}`)));
    });
    return { child, url, exit };
  }

  const token = () =>
    keystone.issueToken({ user: users.demo, scope: { project: projects.demo }, roles: [roles.member] });

  it('reader gone (EPIPE) just before SIGTERM, Keystone unreachable: the process exits 0', async () => {
    // Keystone refusing connections makes the proxy log warnings of its own while it shuts down.
    const unreachable = sidecarConfig('http://127.0.0.1:9', 'log: { level: info }\n');
    const { child, exit } = await start(unreachable);
    child.stdout?.destroy();
    await new Promise((resolve) => setTimeout(resolve, 200));
    // The shutdown's own log lines are the first writes to meet the closed pipe.
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const result = await exit;
    clearTimeout(timer);
    expect(result.signal).toBeNull();
    expect(result.code).toBe(0);
  });

  it('reader stalled (pipe full): requests still answered, SIGTERM exits within the exit flush bound', async () => {
    const { child, url, exit } = await start();
    // Stop reading: the kernel's pipe buffer (64 KiB) fills after a few hundred access-log lines.
    child.stdout?.pause();
    const t = token();
    let answered = 0;
    for (let i = 0; i < 600; i++) {
      const res = await fetch(`${url}/v1/${'x'.repeat(200)}`, { headers: { 'x-auth-token': t } });
      await res.arrayBuffer();
      if (res.status === 200) answered++;
    }
    expect(answered).toBe(600);
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    const result = await exit;
    clearTimeout(timer);
    expect(result.signal).toBeNull();
    expect(result.code).toBe(0);
    // Grace period (2 s, unused: nothing in flight) + at most 20 × 100 ms waiting for the reader.
    expect(result.afterMs()).toBeLessThan(6_000);
  });

  it('batched lines (flush_interval_seconds: 3): requests just after start-up wait, every one is written by SIGTERM', async () => {
    const batched = sidecarConfig(
      keystone.url,
      'log: { level: info, flush_interval_seconds: 3 }\nshutdown: { grace_period_seconds: 2 }\n',
    );
    const { child, url, exit } = await start(batched);
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    const t = token();
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${url}/v1/batched-${i}`, { headers: { 'x-auth-token': t } });
      await res.arrayBuffer();
      expect(res.status).toBe(200);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    const requestLines = () =>
      out
        .split('\n')
        .filter((line) => line.includes('"msg":"request"'))
        .map((line) => (JSON.parse(line) as { path: string }).path);
    // Start-up lines were handed over less than 3 s ago, and five short lines are far below 4 KiB.
    expect(requestLines()).toEqual([]);
    child.kill('SIGTERM');
    const result = await exit;
    expect(result.code).toBe(0);
    expect(requestLines()).toEqual([0, 1, 2, 3, 4].map((i) => `/v1/batched-${i}`));
  });
});
