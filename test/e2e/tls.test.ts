/**
 * TLS on the listeners, through the real CLI (dist/cli.js) with certificates openssl makes in the test: https
 * with and without a token, mutual TLS (require on the proxied port, optional on forward-auth), handshake failures
 * on /metrics, certificate rotation by a Kubernetes-style `..data` symlink swap and by SIGHUP while a keep-alive
 * connection stays open, a reload that fails, bad files refused at start (exit 2), and `workers: 2`.
 */
import { copyFileSync, mkdirSync, renameSync, symlinkSync } from 'node:fs';
import { Agent } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, httpsGet, type Issued, opensslAvailable, TestPki } from '../helpers/certificates.js';
import {
  type CliRun,
  cliBuilt,
  runCli,
  scrapeMetric,
  sidecarYaml,
  startCli,
  writeConfig,
} from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const PREFIX = 'keystone_auth_proxy';

/** A Kubernetes secret volume: tls.crt and tls.key are symlinks through `..data` to a versioned directory. */
class SecretVolume {
  readonly dir: string;
  #version = 0;

  constructor(dir: string, pair: Issued) {
    this.dir = dir;
    mkdirSync(dir);
    this.#stamp(pair);
    symlinkSync(this.#current(), join(dir, '..data'));
    symlinkSync('..data/tls.crt', join(dir, 'tls.crt'));
    symlinkSync('..data/tls.key', join(dir, 'tls.key'));
  }

  get cert(): string {
    return join(this.dir, 'tls.crt');
  }

  get key(): string {
    return join(this.dir, 'tls.key');
  }

  /** What the kubelet does: the new version beside the old, then a new symlink renamed over ..data. */
  rotate(pair: Issued): void {
    this.#stamp(pair);
    symlinkSync(this.#current(), join(this.dir, '..data_tmp'));
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
  }

  #current(): string {
    return `..2026_12_03_${String(this.#version).padStart(2, '0')}`;
  }

  #stamp(pair: Issued): void {
    this.#version += 1;
    const version = join(this.dir, this.#current());
    mkdirSync(version);
    copyFileSync(pair.cert, join(version, 'tls.crt'));
    copyFileSync(pair.key, join(version, 'tls.key'));
  }
}

function logged(proxy: CliRun, msg: string, extra: Record<string, unknown> = {}): number {
  return proxy.logs.filter(
    (line) => line.msg === msg && Object.entries(extra).every(([key, value]) => line[key] === value),
  ).length;
}

describe.skipIf(!cliBuilt() || !opensslAvailable())('TLS listeners (real CLI)', () => {
  let pki: TestPki;
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let client: Issued;
  let stranger: Issued;
  let token: string;

  /** The shared sidecar config, with this case's listener blocks in place of the plain loopback ones. */
  const yaml = (rest: string, workers = 1): string => {
    const shared = sidecarYaml({
      keystoneUrl: keystone.url,
      upstreamUrl: upstream.url,
      responseTimeoutSeconds: 5,
      keystoneTimeoutSeconds: 1,
      authtoken: ['revocation_poll_interval_seconds: 0'],
    });
    const replaced = (line: string): boolean =>
      line.startsWith('listen:') || (rest.includes('admin_listen:') && line.startsWith('admin_listen:'));
    const kept = shared
      .split('\n')
      .filter((line) => !replaced(line))
      .join('\n');
    return `${kept}workers: ${workers}\nlog: { level: info }\n${rest}`;
  };

  beforeAll(async () => {
    pki = new TestPki();
    client = pki.issue('client', { cn: 'nova-compute', client: true });
    stranger = pki.issue('stranger', { cn: 'intruder', client: true, ca: pki.newCa('stranger-ca') });
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    token = keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member],
    });
  });
  afterAll(async () => {
    await upstream?.close();
    await keystone?.close();
  });

  describe('one process: mutual TLS required on the proxied port, optional on forward-auth', () => {
    let proxy: CliRun;
    let volume: SecretVolume;
    let first: Issued;

    beforeAll(async () => {
      first = pki.issue('proxy-1');
      volume = new SecretVolume(join(pki.dir, 'proxy-volume'), first);
      const forwardAuth = pki.issue('forward-auth');
      proxy = await startCli(
        [
          '--config',
          writeConfig(
            yaml(`listen:
  host: 127.0.0.1
  port: 0
  tls: { certfile: ${volume.cert}, keyfile: ${volume.key}, client_cafile: ${pki.ca.cert}, client_auth: require }
forward_auth:
  enabled: true
  listen:
    host: 127.0.0.1
    port: 0
    tls: { certfile: ${forwardAuth.cert}, keyfile: ${forwardAuth.key}, client_cafile: ${pki.ca.cert}, client_auth: optional, min_version: TLSv1.3 }
`),
          ),
        ],
        ENV,
      );
    });
    afterAll(async () => {
      await proxy?.stop();
    });

    it('https URLs; a token gets 200 (the upstream sees https), none gets 401', async () => {
      expect(proxy.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      expect(proxy.forwardAuthUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/auth$/);
      expect(proxy.adminUrl).toMatch(/^http:\/\//);
      const ok = await httpsGet(`${proxy.url}/v1/things`, {
        ca: pki.ca.cert,
        client,
        headers: { 'x-auth-token': token },
      });
      expect(ok.status).toBe(200);
      expect(ok.serial).toBe(first.serial);
      const seen = JSON.parse(ok.text) as { headers: Record<string, string> };
      expect(seen.headers['x-forwarded-proto']).toBe('https');
      expect(seen.headers['x-user-id']).toBe(users.demo.id);
      expect((await httpsGet(`${proxy.url}/v1/things`, { ca: pki.ca.cert, client })).status).toBe(401);
    });

    it('require: a client without a certificate, or with one of another CA, is refused and counted', async () => {
      const series = (reason: string) =>
        `${PREFIX}_tls_handshake_failures_total{listener="proxy",reason="${reason}"}`;
      const before = await scrapeMetric(proxy.adminUrl, series('no_certificate'));
      await expect(
        httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, headers: { 'x-auth-token': token } }),
      ).rejects.toMatchObject({ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' });
      await expect(httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, client: stranger })).rejects.toThrow();
      await eventually(
        () => scrapeMetric(proxy.adminUrl, series('untrusted_certificate')),
        (n) => n === 1,
      );
      expect(await scrapeMetric(proxy.adminUrl, series('no_certificate'))).toBe(before + 1);
    });

    it('optional (forward-auth): no certificate is served, an unverified one refused; TLS 1.2 refused by min_version', async () => {
      const url = proxy.forwardAuthUrl as string;
      const answer = await httpsGet(url, { ca: pki.ca.cert, headers: { 'x-auth-token': token } });
      expect(answer.status).toBe(200);
      expect(
        (await httpsGet(url, { ca: pki.ca.cert, client, headers: { 'x-auth-token': token } })).status,
      ).toBe(200);
      await expect(httpsGet(url, { ca: pki.ca.cert, client: stranger })).rejects.toThrow();
      await expect(httpsGet(url, { ca: pki.ca.cert, maxVersion: 'TLSv1.2' })).rejects.toThrow();
      const series = (reason: string) =>
        `${PREFIX}_tls_handshake_failures_total{listener="forward_auth",reason="${reason}"}`;
      expect(await scrapeMetric(proxy.adminUrl, series('untrusted_certificate'))).toBe(1);
      await eventually(
        () => scrapeMetric(proxy.adminUrl, series('protocol_version')),
        (n) => n === 1,
      );
    });

    it('the served certificate’s expiry is on /metrics', async () => {
      const expiry = await scrapeMetric(
        proxy.adminUrl,
        `${PREFIX}_tls_certificate_expiry_timestamp_seconds{listener="proxy"}`,
      );
      const { X509Certificate } = await import('node:crypto');
      const { readFileSync } = await import('node:fs');
      expect(expiry).toBe(new Date(new X509Certificate(readFileSync(first.cert)).validTo).getTime() / 1000);
    });

    it('rotation by ..data swap, then by SIGHUP: new connections see each new certificate, an open one keeps working', async () => {
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      const open = await httpsGet(`${proxy.url}/v1`, {
        ca: pki.ca.cert,
        client,
        agent,
        headers: { 'x-auth-token': token },
      });
      expect(open.serial).toBe(first.serial);

      const second = pki.issue('proxy-2');
      volume.rotate(second);
      await eventually(
        () => httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, client }),
        (answer) => answer.serial === second.serial,
      );
      expect(
        logged(proxy, 'TLS certificate reloaded', { trigger: 'file_change', serial: second.serial }),
      ).toBe(1);
      const kept = await httpsGet(`${proxy.url}/v1`, {
        ca: pki.ca.cert,
        client,
        agent,
        headers: { 'x-auth-token': token },
      });
      expect(kept).toMatchObject({ status: 200, serial: first.serial, localPort: open.localPort });

      // SIGHUP: a reload even when no change was seen on disk.
      const third = pki.issue('proxy-3');
      volume.rotate(third);
      proxy.child.kill('SIGHUP');
      await eventually(
        async () => logged(proxy, 'TLS certificate reloaded', { trigger: 'signal' }),
        (n) => n >= 1,
      );
      expect((await httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, client })).serial).toBe(third.serial);
      expect(
        (
          await httpsGet(`${proxy.url}/v1`, {
            ca: pki.ca.cert,
            client,
            agent,
            headers: { 'x-auth-token': token },
          })
        ).localPort,
      ).toBe(open.localPort);
      expect(proxy.child.exitCode).toBeNull();
      agent.destroy();
    });

    it('a reload that fails (key of another certificate) keeps the previous certificate, logged and counted', async () => {
      const current = (await httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, client })).serial;
      const series = `${PREFIX}_tls_reloads_total{listener="proxy",result="error"}`;
      const before = await scrapeMetric(proxy.adminUrl, series);
      volume.rotate({ ...pki.issue('proxy-4'), key: pki.issue('unrelated').key });
      await eventually(
        () => scrapeMetric(proxy.adminUrl, series),
        (n) => n > before,
      );
      const failed = proxy.logs.find(
        (line) => line.msg === 'TLS reload failed: still serving the previous certificate',
      );
      expect(failed?.problems).toEqual([
        expect.stringMatching(
          /^listen\.tls\.keyfile: .*tls\.key: does not match the certificate in .*tls\.crt$/,
        ),
      ]);
      expect((await httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, client })).serial).toBe(current);
    });
  });

  it('bad files: exit 2 before listening, every problem named with its option and file', async () => {
    const server = pki.issue('bad-case');
    const other = pki.issue('bad-other');
    const config = writeConfig(
      yaml(`listen:
  host: 127.0.0.1
  port: 0
  tls: { certfile: ${join(pki.dir, 'missing.pem')}, keyfile: ${server.key} }
admin_listen:
  host: 127.0.0.1
  port: 0
  tls: { certfile: ${server.cert}, keyfile: ${other.key}, client_cafile: ${server.key}, client_auth: require }
`),
    );
    for (const args of [
      ['--config', config],
      ['--config', config, '--check-config'],
    ]) {
      const result = await runCli(args, ENV);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain('(3 problem(s))');
      expect(result.stderr).toContain(`- listen.tls.certfile: ${join(pki.dir, 'missing.pem')}: no such file`);
      expect(result.stderr).toContain(
        `- admin_listen.tls.keyfile: ${other.key}: does not match the certificate in ${server.cert}`,
      );
      expect(result.stderr).toContain(
        `- admin_listen.tls.client_cafile: ${server.key}: not a PEM certificate (no "BEGIN CERTIFICATE" block)`,
      );
    }
  });

  it('an expired certificate warns and starts; the admin listener serves https', async () => {
    const expired = pki.issue('expired', { days: -1 });
    const admin = pki.issue('admin');
    const proxy = await startCli(
      [
        '--config',
        writeConfig(
          yaml(`listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${expired.cert}, keyfile: ${expired.key} } }
admin_listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${admin.cert}, keyfile: ${admin.key} } }
`),
        ),
      ],
      ENV,
    );
    try {
      const warning = proxy.logs.find((line) => line.path === 'listen.tls.certfile');
      expect(warning?.level).toBe('warn');
      expect(String(warning?.msg)).toContain(`${expired.cert}: the certificate expired on`);
      expect(proxy.adminUrl).toMatch(/^https:\/\//);
      const health = await httpsGet(`${proxy.adminUrl}/healthz`, { ca: pki.ca.cert });
      expect(health).toMatchObject({ status: 200, serial: admin.serial });
      // Clients refuse the expired certificate, as they should.
      await expect(httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert })).rejects.toMatchObject({
        code: 'CERT_HAS_EXPIRED',
      });
    } finally {
      await proxy.stop();
    }
  });

  it('workers: 2 serve TLS; SIGHUP on the primary reloads every worker, a ..data swap reaches them all', async () => {
    const first = pki.issue('cluster-1');
    const volume = new SecretVolume(join(pki.dir, 'cluster-volume'), first);
    const proxy = await startCli(
      [
        '--config',
        writeConfig(
          yaml(
            `listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${volume.cert}, keyfile: ${volume.key} } }\n`,
            2,
          ),
        ),
      ],
      ENV,
    );
    try {
      expect(proxy.url).toMatch(/^https:\/\//);
      const answers = [];
      for (let i = 0; i < 6; i++) {
        answers.push(
          await httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert, headers: { 'x-auth-token': token } }),
        );
      }
      expect(answers.map((a) => `${a.status} ${a.serial}`)).toEqual(Array(6).fill(`200 ${first.serial}`));
      // Both workers served (node:cluster round robin), and each reports its listener's expiry: min, not sum.
      const expiry = await scrapeMetric(
        proxy.adminUrl,
        `${PREFIX}_tls_certificate_expiry_timestamp_seconds{listener="proxy"}`,
      );
      expect(expiry).toBeGreaterThan(Date.now() / 1000);
      expect(expiry).toBeLessThan(Date.now() / 1000 + 31 * 86_400);

      const reloads = `${PREFIX}_tls_reloads_total{listener="proxy",result="ok"}`;
      proxy.child.kill('SIGHUP');
      await eventually(
        () => scrapeMetric(proxy.adminUrl, reloads),
        (n) => n === 2,
      );

      const second = pki.issue('cluster-2');
      volume.rotate(second);
      await eventually(
        async () => {
          const seen = [];
          for (let i = 0; i < 6; i++)
            seen.push((await httpsGet(`${proxy.url}/v1`, { ca: pki.ca.cert })).serial);
          return seen;
        },
        (seen) => seen.every((serial) => serial === second.serial),
      );
      expect(await scrapeMetric(proxy.adminUrl, reloads)).toBe(4);
    } finally {
      await proxy.stop();
    }
  });
});
