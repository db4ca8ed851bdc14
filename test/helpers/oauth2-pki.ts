/**
 * Certificates for the OAuth2 tests, made with openssl in the test: one CA, a server certificate for 127.0.0.1
 * and client certificates by CN (EC P-256: fast to make). One temporary directory, removed when the process exits.
 * (The TLS listener's tests have a fuller PKI helper; this one only needs what mTLS client auth and RFC 8705 use.)
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface IssuedFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
  readonly key: string;
}

export function opensslAvailable(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * For `describe.skipIf`: skip without openssl on a developer machine, but fail in CI (CI=true, as `.ci/run`
 * sets it, or CONFORMANCE_REQUIRED=1), where `.ci/run` installs it: a missing prerequisite must not pass.
 */
export function skipWithoutOpenssl(): boolean {
  if (opensslAvailable()) return false;
  if (process.env.CI === 'true' || process.env.CONFORMANCE_REQUIRED === '1') {
    throw new Error(
      'openssl is needed by the OAuth2 tests (test/helpers/oauth2-pki.ts) and is not installed',
    );
  }
  return true;
}

const openssl = (args: string[]): void => {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
};

export class OAuth2Pki {
  readonly dir: string;
  readonly ca: IssuedFiles;
  #serial = 0x2000;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'kap-oauth2-pki-'));
    const dir = this.dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const certFile = join(dir, 'ca.pem');
    const keyFile = join(dir, 'ca.key');
    openssl([
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      '/CN=oauth2 test CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    this.ca = { certFile, keyFile, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  }

  /** A certificate signed by the CA: a server one for 127.0.0.1, or a client one with this CN. */
  issue(cn: string, kind: 'server' | 'client'): IssuedFiles {
    const base = join(this.dir, `${cn}-${kind}`);
    const keyFile = `${base}.key`;
    const csr = `${base}.csr`;
    const certFile = `${base}.pem`;
    const ext = `${base}.ext`;
    writeFileSync(
      ext,
      kind === 'server'
        ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
        : 'extendedKeyUsage=clientAuth\n',
    );
    openssl([
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      csr,
      '-subj',
      `/CN=${cn}`,
    ]);
    this.#serial += 1;
    openssl([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      this.ca.certFile,
      '-CAkey',
      this.ca.keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-set_serial',
      String(this.#serial),
      '-extfile',
      ext,
    ]);
    return { certFile, keyFile, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
  }
}
