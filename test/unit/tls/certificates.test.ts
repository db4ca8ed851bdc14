/** The TLS files of a listener, read and checked: every problem named with its option path and file. */
import { chmodSync, copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { resolveProxyConfig } from '../../../src/config/proxy-config.js';
import type { TlsOptions } from '../../../src/config/tls-options.js';
import { loadTlsMaterial } from '../../../src/tls/certificates.js';
import { checkTlsFiles } from '../../../src/tls/config-check.js';
import { type Issued, opensslAvailable, TestPki } from '../../helpers/certificates.js';

const base = {
  keystone_authtoken: {
    www_authenticate_uri: 'http://keystone.example:5000',
    auth_url: 'http://keystone.example:5000',
    username: 'nova',
    password: 'pw',
    user_domain_name: 'Default',
    project_name: 'service',
    project_domain_name: 'Default',
  },
  upstream: { url: 'http://127.0.0.1:18774' },
};

function tlsOf(pair: Issued, extra: Partial<TlsOptions> = {}): TlsOptions {
  return { certfile: pair.cert, keyfile: pair.key, client_auth: 'none', min_version: 'TLSv1.2', ...extra };
}

describe('listen.tls in the configuration', () => {
  it('defaults: client_auth none, min_version TLSv1.2; unknown keys and bad values refused', () => {
    const config = resolveProxyConfig(
      { ...base, listen: { port: 8774, tls: { certfile: '/c.pem', keyfile: '/k.pem' } } },
      {},
    );
    expect(config.listen?.tls).toEqual({
      certfile: '/c.pem',
      keyfile: '/k.pem',
      client_auth: 'none',
      min_version: 'TLSv1.2',
    });
    let message = '';
    try {
      resolveProxyConfig(
        {
          ...base,
          listen: {
            port: 8774,
            tls: { certfile: '/c.pem', keyfile: '/k.pem', client_auth: 'require', ca: 'x' },
          },
          admin_listen: { port: 9180, tls: { certfile: '/c.pem', min_version: 'TLSv1.1' } },
        },
        {},
      );
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('listen.tls.ca: unknown option');
    expect(message).toContain('listen.tls.client_cafile: is required with client_auth: require');
    expect(message).toContain('admin_listen.tls.keyfile:');
    expect(message).toContain('admin_listen.tls.min_version:');
  });
});

describe.skipIf(!opensslAvailable())('TLS files', () => {
  let pki: TestPki;
  let server: Issued;
  let other: Issued;
  let expired: Issued;

  beforeAll(() => {
    pki = new TestPki();
    server = pki.issue('server');
    other = pki.issue('other');
    expired = pki.issue('expired', { days: -1 });
  });

  it('a good pair loads: the served certificate, its notAfter, no warning', () => {
    const loaded = loadTlsMaterial(tlsOf(server, { client_cafile: pki.ca.cert }), 'listen.tls');
    expect(loaded.ok).toBe(true);
    if (!loaded.ok) return;
    expect(loaded.material.certificate.serialNumber).toBe(server.serial);
    expect(loaded.material.notAfter.getTime()).toBeGreaterThan(Date.now());
    expect(loaded.material.ca).toBeDefined();
    expect(loaded.warnings).toEqual([]);
  });

  it('a key that is not the certificate’s is named with both files', () => {
    const loaded = loadTlsMaterial(tlsOf(server, { keyfile: other.key }), 'listen.tls');
    expect(loaded).toEqual({
      ok: false,
      problems: [
        {
          path: 'listen.tls.keyfile',
          message: `${other.key}: does not match the certificate in ${server.cert}`,
        },
      ],
    });
  });

  it('an expired certificate loads with a warning', () => {
    const loaded = loadTlsMaterial(tlsOf(expired), 'admin_listen.tls');
    expect(loaded.ok).toBe(true);
    if (!loaded.ok) return;
    expect(loaded.warnings).toHaveLength(1);
    expect(loaded.warnings[0]?.path).toBe('admin_listen.tls.certfile');
    expect(loaded.warnings[0]?.message).toMatch(/the certificate expired on \d{4}-/);
  });

  it('missing, unreadable, not PEM: every problem of every listener in one list', () => {
    const garbage = join(pki.dir, 'garbage.pem');
    writeFileSync(garbage, 'this is not a certificate\n');
    const derKey = join(pki.dir, 'not-a-key.key');
    writeFileSync(derKey, Buffer.from([0x30, 0x82, 0x01, 0x02]));
    const locked = join(pki.dir, 'locked.key');
    copyFileSync(server.key, locked);
    chmodSync(locked, 0o000);
    const rootCanRead = process.getuid?.() === 0;
    const config = resolveProxyConfig(
      {
        ...base,
        listen: { port: 8774, tls: { certfile: '/nonexistent/cert.pem', keyfile: locked } },
        admin_listen: {
          port: 9180,
          tls: { certfile: garbage, keyfile: derKey, client_cafile: garbage, client_auth: 'optional' },
        },
        forward_auth: {
          enabled: true,
          listen: { port: 9181, tls: { certfile: server.cert, keyfile: other.key } },
        },
      },
      {},
    );
    const { problems, warnings } = checkTlsFiles(config);
    expect(warnings).toEqual([]);
    expect(problems).toEqual([
      { path: 'listen.tls.certfile', message: '/nonexistent/cert.pem: no such file' },
      ...(rootCanRead
        ? []
        : [{ path: 'listen.tls.keyfile', message: `${locked}: not readable (permission denied)` }]),
      {
        path: 'admin_listen.tls.certfile',
        message: `${garbage}: not a PEM certificate (no "BEGIN CERTIFICATE" block)`,
      },
      { path: 'admin_listen.tls.keyfile', message: `${derKey}: not a PEM private key` },
      {
        path: 'admin_listen.tls.client_cafile',
        message: `${garbage}: not a PEM certificate (no "BEGIN CERTIFICATE" block)`,
      },
      {
        path: 'forward_auth.listen.tls.keyfile',
        message: `${other.key}: does not match the certificate in ${server.cert}`,
      },
    ]);
  });
});
