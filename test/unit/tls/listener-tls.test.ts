/**
 * A TLS listener in this process (node:https, as the sidecar builds it) with certificates made by openssl:
 * mutual TLS in its three modes, the client certificate handed to the auth layer, handshake failures counted, and
 * reloads (SIGHUP's and the file watch's) that change what new connections see while open ones keep working.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, renameSync, symlinkSync } from 'node:fs';
import { Agent } from 'node:https';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { TlsOptions } from '../../../src/config/tls-options.js';
import { silentLogger, type TlsObserver } from '../../../src/observability/observer.js';
import { createListenerServer, type ListenerServer, listen } from '../../../src/proxy/listeners.js';
import { clientCertificate } from '../../../src/tls/client-certificate.js';
import { createListenerTls, type ListenerTls } from '../../../src/tls/listener-tls.js';
import {
  eventually,
  type HttpsGetOptions,
  httpsGet,
  type Issued,
  opensslAvailable,
  TestPki,
} from '../../helpers/certificates.js';

interface Events {
  failures: string[];
  reloads: string[];
  expiries: number[];
}

function recorder(): { events: Events; observer: TlsObserver } {
  const events: Events = { failures: [], reloads: [], expiries: [] };
  return {
    events,
    observer: {
      tlsHandshakeFailure: (listener, reason) => events.failures.push(`${listener}:${reason}`),
      tlsReload: (listener, result) => events.reloads.push(`${listener}:${result}`),
      tlsCertificateExpiry: (_listener, seconds) => events.expiries.push(seconds),
    },
  };
}

async function get(url: string, options: HttpsGetOptions) {
  const answer = await httpsGet(`${url}/`, options);
  return { ...answer, body: JSON.parse(answer.text) as Record<string, unknown> };
}

describe.skipIf(!opensslAvailable())('TLS listener', () => {
  let pki: TestPki;
  let server: Issued;
  let client: Issued;
  let strangerCa: Issued;
  let stranger: Issued;
  const open: { server: ListenerServer; tls: ListenerTls }[] = [];

  beforeAll(() => {
    pki = new TestPki();
    server = pki.issue('server');
    client = pki.issue('client', { cn: 'nova-compute', client: true });
    strangerCa = pki.newCa('stranger-ca');
    stranger = pki.issue('stranger', { cn: 'intruder', client: true, ca: strangerCa });
  });
  afterEach(async () => {
    for (const { server: s, tls } of open.splice(0)) {
      tls.close();
      s.closeAllConnections();
      await new Promise((resolve) => s.close(resolve));
    }
  });

  async function start(
    tlsOptions: Partial<TlsOptions>,
    observer?: TlsObserver,
    files = server,
  ): Promise<string> {
    const tls = createListenerTls({
      listener: 'proxy',
      tls: {
        certfile: files.cert,
        keyfile: files.key,
        client_auth: 'none',
        min_version: 'TLSv1.2',
        ...tlsOptions,
      },
      path: 'listen.tls',
      logger: silentLogger,
      observer,
      watch: tlsOptions.certfile !== undefined,
      debounceMs: 50,
    });
    const s = createListenerServer(
      {},
      (req, res) => {
        const peer = clientCertificate(req);
        res.setHeader('content-type', 'application/json');
        res.end(
          JSON.stringify(
            peer === undefined
              ? {}
              : {
                  subject: peer.subject,
                  thumbprint: peer.thumbprintSha256,
                  derBytes: peer.der.length,
                  pem: peer.pem,
                },
          ),
        );
      },
      tls,
    );
    open.push({ server: s, tls });
    return listen(s, '127.0.0.1', 0);
  }

  it('serves https; without client_auth no certificate is asked for and none is exposed', async () => {
    const { events, observer } = recorder();
    const url = await start({}, observer);
    expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const answer = await get(url, { ca: pki.ca.cert, client });
    expect(answer).toMatchObject({ status: 200, serial: server.serial, body: {} });
    expect(events.expiries).toEqual([new Date(new X509(server.cert).validTo).getTime() / 1000]);
  });

  it('require: a verified client certificate reaches the request with its subject and x5t#S256 thumbprint', async () => {
    const url = await start({ client_auth: 'require', client_cafile: pki.ca.cert });
    const answer = await get(url, { ca: pki.ca.cert, client });
    expect(answer.status).toBe(200);
    // The thumbprint as openssl computes it: SHA-256 of the DER certificate, base64url.
    const der = execFileSync('openssl', ['x509', '-in', client.cert, '-outform', 'DER']);
    const sha = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der }).toString('base64url');
    expect(answer.body).toEqual({
      subject: 'O=kap-test\nCN=nova-compute',
      thumbprint: sha,
      derBytes: der.length,
      pem: readFileSync(client.cert, 'utf8'),
    });
  });

  it('require: no certificate, or one of another CA, is refused at the handshake and counted', async () => {
    const { events, observer } = recorder();
    const url = await start({ client_auth: 'require', client_cafile: pki.ca.cert }, observer);
    await expect(get(url, { ca: pki.ca.cert })).rejects.toMatchObject({
      code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
    });
    await expect(get(url, { ca: pki.ca.cert, client: stranger })).rejects.toThrow();
    await eventually(
      async () => events.failures.length,
      (n) => n >= 2,
    );
    expect(events.failures).toEqual(['proxy:no_certificate', 'proxy:untrusted_certificate']);
    // TLS 1.2 refuses during the handshake itself.
    await expect(get(url, { ca: pki.ca.cert, maxVersion: 'TLSv1.2' })).rejects.toMatchObject({
      code: 'EPROTO',
      message: expect.stringContaining('alert handshake failure'),
    });
    await eventually(
      async () => events.failures.length,
      (n) => n >= 3,
    );
    expect(events.failures[2]).toBe('proxy:no_certificate');
  });

  it('optional: no certificate is served without one; a certificate that does not verify is refused', async () => {
    const { events, observer } = recorder();
    const url = await start({ client_auth: 'optional', client_cafile: pki.ca.cert }, observer);
    expect(await get(url, { ca: pki.ca.cert })).toMatchObject({ status: 200, body: {} });
    expect((await get(url, { ca: pki.ca.cert, client })).body.subject).toBe('O=kap-test\nCN=nova-compute');
    await expect(get(url, { ca: pki.ca.cert, client: stranger })).rejects.toThrow();
    expect(events.failures).toEqual(['proxy:untrusted_certificate']);
  });

  it('plain http on the https port is counted as plain_http', async () => {
    const { events, observer } = recorder();
    const url = await start({}, observer);
    await fetch(url.replace('https:', 'http:')).then(
      (res) => res.text(),
      () => undefined,
    );
    await eventually(
      async () => events.failures,
      (f) => f.length === 1,
    );
    expect(events.failures).toEqual(['proxy:plain_http']);
  });

  it('min_version TLSv1.3 refuses a TLS 1.2 client, counted as protocol_version', async () => {
    const { events, observer } = recorder();
    const url = await start({ min_version: 'TLSv1.3' }, observer);
    await expect(get(url, { ca: pki.ca.cert, maxVersion: 'TLSv1.2' })).rejects.toThrow();
    expect((await get(url, { ca: pki.ca.cert })).status).toBe(200);
    await eventually(
      async () => events.failures,
      (f) => f.length === 1,
    );
    expect(events.failures).toEqual(['proxy:protocol_version']);
  });

  it('reload: new connections get the new certificate, an open keep-alive connection keeps working; a bad pair is refused and the old one kept', async () => {
    const { events, observer } = recorder();
    const dir = join(pki.dir, 'reload');
    mkdirSync(dir);
    const live = { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'), serial: server.serial };
    copyFileSync(server.cert, live.cert);
    copyFileSync(server.key, live.key);
    const tls = createListenerTls({
      listener: 'proxy',
      tls: { certfile: live.cert, keyfile: live.key, client_auth: 'none', min_version: 'TLSv1.2' },
      path: 'listen.tls',
      logger: silentLogger,
      observer,
      watch: false,
    });
    const s = createListenerServer({}, (_req, res) => res.end('{}'), tls);
    open.push({ server: s, tls });
    const url = await listen(s, '127.0.0.1', 0);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const first = await get(url, { ca: pki.ca.cert, agent });
    expect(first.serial).toBe(server.serial);

    const next = pki.issue('server-next');
    copyFileSync(next.cert, live.cert);
    copyFileSync(next.key, live.key);
    expect(tls.reload('signal')).toBe(true);
    const kept = await get(url, { ca: pki.ca.cert, agent });
    expect(kept.localPort).toBe(first.localPort);
    expect(kept.serial).toBe(server.serial);
    expect((await get(url, { ca: pki.ca.cert })).serial).toBe(next.serial);

    // Half a rotation: the new certificate without its key.
    copyFileSync(pki.issue('server-third').cert, live.cert);
    expect(tls.reload('signal')).toBe(false);
    expect((await get(url, { ca: pki.ca.cert })).serial).toBe(next.serial);
    expect(tls.current().certificate.serialNumber).toBe(next.serial);
    expect(events.reloads).toEqual(['proxy:ok', 'proxy:error']);
    agent.destroy();
  });

  it('file watch: a Kubernetes secret volume rotation (..data symlink swap) is picked up without a signal', async () => {
    const { events, observer } = recorder();
    const volume = join(pki.dir, 'volume');
    const stamp = (name: string, pair: Issued): void => {
      mkdirSync(join(volume, name), { recursive: true });
      copyFileSync(pair.cert, join(volume, name, 'tls.crt'));
      copyFileSync(pair.key, join(volume, name, 'tls.key'));
    };
    stamp('..2026_12_03_01', server);
    symlinkSync('..2026_12_03_01', join(volume, '..data'));
    symlinkSync('..data/tls.crt', join(volume, 'tls.crt'));
    symlinkSync('..data/tls.key', join(volume, 'tls.key'));
    const url = await start(
      { certfile: join(volume, 'tls.crt'), keyfile: join(volume, 'tls.key') },
      observer,
    );
    expect((await get(url, { ca: pki.ca.cert })).serial).toBe(server.serial);

    // What the kubelet does: write the new version beside the old, then rename a new symlink over ..data.
    const rotated = pki.issue('rotated');
    stamp('..2026_12_03_02', rotated);
    symlinkSync('..2026_12_03_02', join(volume, '..data_tmp'));
    renameSync(join(volume, '..data_tmp'), join(volume, '..data'));
    const seen = await eventually(
      () => get(url, { ca: pki.ca.cert }),
      (answer) => answer.serial === rotated.serial,
    );
    expect(seen.status).toBe(200);
    expect(events.reloads).toEqual(['proxy:ok']);
  });
});

class X509 {
  readonly validTo: string;
  constructor(file: string) {
    this.validTo = execFileSync('openssl', ['x509', '-in', file, '-noout', '-enddate'])
      .toString()
      .trim()
      .replace(/^notAfter=/, '');
  }
}
