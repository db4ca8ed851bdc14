/**
 * Certificates made in the test with openssl: a CA, server and client certificates it signs, an expired one, a
 * second CA the listener does not trust. EC P-256 keys (fast to make). Files in one temporary directory per
 * test process, removed when it exits.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';

export interface Issued {
  readonly cert: string;
  readonly key: string;
  /** Upper-case hex, as node:crypto and getPeerCertificate() print it. */
  readonly serial: string;
}

export interface IssueOptions {
  /** Subject CN; default localhost. */
  readonly cn?: string;
  /** Validity in days from now; negative: expired that long ago. Default 30. */
  readonly days?: number;
  /** Signed by this CA; default the PKI's own. */
  readonly ca?: Issued;
  /** A client certificate (extendedKeyUsage clientAuth) instead of a server one. */
  readonly client?: boolean;
}

/**
 * Whether the TLS suites can make certificates. They skip without openssl, except in CI (`CI` set), where they run
 * and fail on the missing command instead (`.ci/run` installs it).
 */
export function opensslAvailable(): boolean {
  if (process.env.CI) return true;
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export class TestPki {
  readonly dir: string;
  readonly ca: Issued;
  #serial = 0x1000;

  constructor() {
    const dir = mkdtempSync(join(tmpdir(), 'kap-pki-'));
    this.dir = dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    this.ca = this.newCa('ca');
  }

  #nextSerial(): string {
    this.#serial += 1;
    return this.#serial.toString(16).toUpperCase();
  }

  /** A self-signed CA. */
  newCa(name: string): Issued {
    const cert = join(this.dir, `${name}.pem`);
    const key = join(this.dir, `${name}.key`);
    const serial = this.#nextSerial();
    openssl([
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '30',
      '-subj',
      `/CN=${name}`,
      '-set_serial',
      `0x${serial}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    return { cert, key, serial };
  }

  /** A certificate signed by the PKI's CA (or `options.ca`), for 127.0.0.1 and localhost. */
  issue(name: string, options: IssueOptions = {}): Issued {
    const ca = options.ca ?? this.ca;
    const cert = join(this.dir, `${name}.pem`);
    const key = join(this.dir, `${name}.key`);
    const csr = join(this.dir, `${name}.csr`);
    const ext = join(this.dir, `${name}.ext`);
    const serial = this.#nextSerial();
    writeFileSync(
      ext,
      options.client === true
        ? 'extendedKeyUsage=clientAuth\n'
        : 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n',
    );
    openssl([
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      csr,
      '-subj',
      `/O=kap-test/CN=${options.cn ?? 'localhost'}`,
    ]);
    openssl([
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-set_serial',
      `0x${serial}`,
      '-days',
      String(options.days ?? 30),
      '-extfile',
      ext,
      '-out',
      cert,
    ]);
    return { cert, key, serial };
  }
}

export interface HttpsAnswer {
  readonly status: number;
  /** Serial of the certificate the server showed. */
  readonly serial: string;
  readonly text: string;
  /** The client side's port: the same on two answers means the same connection. */
  readonly localPort: number;
}

export interface HttpsGetOptions {
  /** The CA file that must have signed the server's certificate. */
  readonly ca: string;
  /** A client certificate to present. */
  readonly client?: Issued;
  readonly agent?: Agent;
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  readonly headers?: Record<string, string>;
}

/** One https GET (node:https, a new connection unless `agent` keeps one alive). */
export function httpsGet(url: string, options: HttpsGetOptions): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        ca: readFileSync(options.ca),
        ...(options.client === undefined
          ? {}
          : { cert: readFileSync(options.client.cert), key: readFileSync(options.client.key) }),
        ...(options.maxVersion === undefined ? {} : { maxVersion: options.maxVersion }),
        headers: options.headers ?? {},
        agent: options.agent ?? false,
      },
      (res) => {
        const socket = res.socket as TLSSocket;
        const serial = socket.getPeerCertificate().serialNumber;
        const localPort = socket.localPort ?? 0;
        let text = '';
        res.on('data', (chunk: Buffer) => {
          text += chunk.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, serial, text, localPort }));
      },
    );
    req.on('error', reject);
    req.setTimeout(5_000, () => req.destroy(new Error('https request timed out')));
    req.end();
  });
}

/** Retries `read` until `check` passes (file watch events arrive when the kernel sends them), 10 s at most. */
export async function eventually<T>(read: () => Promise<T>, check: (value: T) => boolean): Promise<T> {
  let last: T | undefined;
  for (let i = 0; i < 100; i++) {
    try {
      last = await read();
      if (check(last)) return last;
    } catch {
      // not yet (a connection refused while a listener reloads is retried)
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`condition not reached; last: ${JSON.stringify(last)}`);
}
