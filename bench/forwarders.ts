/**
 * Which forwarding library: http-proxy 1.18 (unmaintained since 2020), httpxy (its maintained fork) and the
 * proxy's own forwarder (src/proxy/forwarder.ts: undici's dispatcher), as bare forwarders in front of the same
 * upstream, loaded by wrk. Prints req/s and latency for each, and the ratios to http-proxy.
 * Run: `npx tsx bench/forwarders.ts [seconds]` (needs wrk: apt-get install wrk).
 */
import { execFile } from 'node:child_process';
import { Agent, createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import httpProxy from 'http-proxy';
import { createProxyServer } from 'httpxy';
import { createForwarder } from '../src/proxy/forwarder.js';

const BODY = JSON.stringify({
  servers: Array.from({ length: 8 }, (_, i) => ({ id: `server-${i}`, status: 'ACTIVE' })),
});

function start(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<number> {
  const server = createServer(handler);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );
}

// Asynchronous on purpose: the servers under test live in this process and must keep running meanwhile.
async function wrk(port: number, seconds: number): Promise<{ rps: number; p50: string; p99: string }> {
  const { stdout: out } = await promisify(execFile)(
    'wrk',
    ['-t1', '-c32', `-d${seconds}s`, '--latency', `http://127.0.0.1:${port}/servers`],
    { encoding: 'utf8' },
  );
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  return { rps, p50: /50%\s+(\S+)/.exec(out)?.[1] ?? '?', p99: /99%\s+(\S+)/.exec(out)?.[1] ?? '?' };
}

const upstream = await start((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) });
  res.end(BODY);
});
const target = `http://127.0.0.1:${upstream}`;
const legacy = httpProxy.createProxyServer({ target, xfwd: true, agent: new Agent({ keepAlive: true }) });
legacy.on('error', (_e, _req, res) => (res as ServerResponse).writeHead(502).end());
const modern = createProxyServer({ target, xfwd: true, agent: new Agent({ keepAlive: true }) });
const ours = createForwarder({
  target: new URL(target),
  connectTimeoutMs: 5_000,
  responseTimeoutMs: 30_000,
  insecure: false,
  wwwAuthenticate: 'Keystone uri="http://keystone"',
});
const ports = {
  upstream,
  'http-proxy': await start((req, res) => legacy.web(req, res)),
  httpxy: await start((req, res) => {
    modern.web(req, res).catch(() => res.writeHead(502).end());
  }),
  'ours (undici dispatcher)': await start((req, res) =>
    ours.web(req, res, (_failure, status) => res.writeHead(status).end()),
  ),
};
const seconds = Number(process.argv[2] ?? 5);
const results: Record<string, { rps: number; p50: string; p99: string }[]> = {};
for (let round = 0; round < 2; round++) {
  for (const [name, port] of Object.entries(ports)) {
    await wrk(port, 1);
    const runs = results[name] ?? [];
    runs.push(await wrk(port, seconds));
    results[name] = runs;
  }
}
console.log('| target | req/s (best of 2) | p50 | p99 |');
console.log('|---|---|---|---|');
const best: Record<string, number> = {};
for (const [name, runs] of Object.entries(results)) {
  const top = runs.reduce((a, b) => (b.rps > a.rps ? b : a));
  best[name] = top.rps;
  console.log(`| ${name} | ${Math.round(top.rps)} | ${top.p50} | ${top.p99} |`);
}
for (const name of ['httpxy', 'ours (undici dispatcher)']) {
  console.log(
    `${name} / http-proxy throughput: ${((best[name] ?? 0) / (best['http-proxy'] ?? 1)).toFixed(2)}`,
  );
}
process.exit(0);
