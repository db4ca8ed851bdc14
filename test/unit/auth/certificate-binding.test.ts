/**
 * Certificate-bound tokens: the thumbprints checked against independent implementations (Python's ssl module
 * with hashlib, as Keystone and keystonemiddleware compute it, and openssl's SHA-256 fingerprint for RFC 8705),
 * the binding verdicts, and the forwarded-certificate shapes ingresses send.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  certificateBinding,
  keystoneThumbprint,
  pemOf,
  rfc8705Thumbprint,
} from '../../../src/auth/certificate-binding.js';
import { forwardedCertificate } from '../../../src/auth/forwarded-certificate.js';
import { type Issued, opensslAvailable, TestPki } from '../../helpers/certificates.js';

/** Keystone's get_certificate_thumbprint over the PEM keystonemiddleware makes from the peer's DER. */
const PYTHON_THUMBPRINT = `
import base64, hashlib, ssl, sys
der = open(sys.argv[1], 'rb').read()
pem = ssl.DER_cert_to_PEM_cert(der)
print(base64.urlsafe_b64encode(hashlib.sha256(pem.encode('ascii')).digest()).decode('ascii'))
`;

describe.skipIf(!opensslAvailable())('certificate binding', () => {
  let pki: TestPki;
  let client: Issued;
  let other: Issued;
  let der: Buffer;
  let derFile: string;

  beforeAll(() => {
    pki = new TestPki();
    client = pki.issue('bound-client', { cn: 'tacker', client: true });
    other = pki.issue('other-client', { cn: 'tacker', client: true });
    der = new X509Certificate(readFileSync(client.cert)).raw;
    derFile = `${client.cert}.der`;
    execFileSync('openssl', ['x509', '-in', client.cert, '-outform', 'DER', '-out', derFile]);
  });

  it("Keystone's thumbprint equals Python's (ssl.DER_cert_to_PEM_cert, sha256, urlsafe_b64encode)", () => {
    const python = execFileSync('/usr/bin/python3', ['-c', PYTHON_THUMBPRINT, derFile]).toString().trim();
    expect(python).toHaveLength(44);
    expect(python.endsWith('=')).toBe(true);
    expect(keystoneThumbprint(pemOf(der))).toBe(python);
    // Node's own PEM rendering of the certificate is byte for byte Python's.
    expect(new X509Certificate(der).toString()).toBe(pemOf(der));
  });

  it("the RFC 8705 thumbprint is openssl's SHA-256 fingerprint, base64url without padding", () => {
    const printed = execFileSync('openssl', ['x509', '-in', client.cert, '-noout', '-fingerprint', '-sha256'])
      .toString()
      .trim();
    const hex = printed.split('=')[1]?.replace(/:/g, '') ?? '';
    expect(rfc8705Thumbprint(der)).toBe(Buffer.from(hex, 'hex').toString('base64url'));
  });

  it('verdicts: bound in either encoding; otherwise why not', () => {
    const presented = { der, pem: pemOf(der) };
    const otherDer = new X509Certificate(readFileSync(other.cert)).raw;
    expect(certificateBinding(keystoneThumbprint(pemOf(der)), presented)).toBe('bound');
    expect(certificateBinding(rfc8705Thumbprint(der), presented)).toBe('bound');
    expect(certificateBinding(keystoneThumbprint(pemOf(otherDer)), presented)).toBe('mismatch');
    expect(certificateBinding(rfc8705Thumbprint(der).slice(0, -1), presented)).toBe('mismatch');
    expect(certificateBinding(keystoneThumbprint(pemOf(der)), undefined)).toBe('no_certificate');
    expect(certificateBinding(undefined, presented)).toBe('not_bound_token');
    expect(certificateBinding('', presented)).toBe('not_bound_token');
  });

  it('reads a forwarded certificate as nginx (URL-encoded PEM) and Traefik (bare base64 DER) send it', () => {
    const pem = readFileSync(client.cert, 'utf8');
    const nginx = forwardedCertificate(encodeURIComponent(pem));
    const traefik = forwardedCertificate(der.toString('base64'));
    expect(nginx?.der.equals(der)).toBe(true);
    expect(traefik?.der.equals(der)).toBe(true);
    expect(nginx?.pem).toBe(pemOf(der));
    for (const junk of [
      '',
      'not a certificate',
      encodeURIComponent('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----'),
      '%E0%A4%A',
    ]) {
      expect(forwardedCertificate(junk), junk).toBeUndefined();
    }
    expect(forwardedCertificate(undefined)).toBeUndefined();
    expect(forwardedCertificate([pem, pem])).toBeUndefined();
  });
});
