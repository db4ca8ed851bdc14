/**
 * Reads a listener's PEM files and checks them the way a handshake would use them: every problem is named with
 * its option path and file, so that a bad secret volume fails the start (or a reload) with one clear message
 * instead of a handshake error on the first client.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { TlsOptions } from '../config/tls-options.js';
import type { ConfigIssue } from '../errors.js';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The files' contents, as handed to the TLS context, and what the served certificate says. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
  /** The served (first) certificate of certfile. */
  readonly certificate: X509Certificate;
  readonly notAfter: Date;
}

export type TlsLoad =
  | { readonly ok: true; readonly material: TlsMaterial; readonly warnings: readonly ConfigIssue[] }
  | { readonly ok: false; readonly problems: readonly ConfigIssue[] };

function readProblem(file: string, error: NodeJS.ErrnoException): string {
  if (error.code === 'ENOENT') return `${file}: no such file`;
  if (error.code === 'EACCES' || error.code === 'EPERM') return `${file}: not readable (permission denied)`;
  if (error.code === 'EISDIR') return `${file}: is a directory, not a file`;
  return `${file}: cannot be read (${error.code ?? error.message})`;
}

function readFile(file: string, path: string, problems: ConfigIssue[]): Buffer | undefined {
  try {
    return readFileSync(file);
  } catch (error) {
    problems.push({ path, message: readProblem(file, error as NodeJS.ErrnoException) });
    return undefined;
  }
}

/** Every certificate of a PEM bundle; a problem when there is none or one does not parse. */
function parseCertificates(
  text: Buffer,
  file: string,
  path: string,
  problems: ConfigIssue[],
): X509Certificate[] {
  const blocks = text.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    problems.push({ path, message: `${file}: not a PEM certificate (no "BEGIN CERTIFICATE" block)` });
    return [];
  }
  const certificates: X509Certificate[] = [];
  for (const [index, block] of blocks.entries()) {
    try {
      certificates.push(new X509Certificate(block));
    } catch {
      problems.push({ path, message: `${file}: certificate ${index + 1} is not a valid PEM certificate` });
    }
  }
  return certificates;
}

function parseKey(text: Buffer, file: string, path: string, problems: ConfigIssue[]): KeyObject | undefined {
  try {
    return createPrivateKey(text);
  } catch (error) {
    const encrypted = /passphrase/i.test((error as Error).message);
    problems.push({
      path,
      message: encrypted
        ? `${file}: the private key is encrypted (a passphrase is not supported)`
        : `${file}: not a PEM private key`,
    });
    return undefined;
  }
}

/**
 * Reads and checks certfile, keyfile and client_cafile of one listener. `path` is the option path of its `tls`
 * (e.g. `listen.tls`). An expired certificate is a warning: the listener still starts, so that rotating it
 * (SIGHUP, or the file watcher) can repair it without a restart.
 */
export function loadTlsMaterial(tls: TlsOptions, path: string, now: Date = new Date()): TlsLoad {
  const problems: ConfigIssue[] = [];
  const warnings: ConfigIssue[] = [];
  const certPath = `${path}.certfile`;
  const keyPath = `${path}.keyfile`;
  const caPath = `${path}.client_cafile`;
  const cert = readFile(tls.certfile, certPath, problems);
  const key = readFile(tls.keyfile, keyPath, problems);
  const ca = tls.client_cafile === undefined ? undefined : readFile(tls.client_cafile, caPath, problems);

  const served =
    cert === undefined ? undefined : parseCertificates(cert, tls.certfile, certPath, problems)[0];
  const privateKey = key === undefined ? undefined : parseKey(key, tls.keyfile, keyPath, problems);
  if (ca !== undefined && tls.client_cafile !== undefined) {
    parseCertificates(ca, tls.client_cafile, caPath, problems);
  }
  if (served !== undefined && privateKey !== undefined && !served.checkPrivateKey(privateKey)) {
    problems.push({
      path: keyPath,
      message: `${tls.keyfile}: does not match the certificate in ${tls.certfile}`,
    });
  }
  if (problems.length > 0 || served === undefined || cert === undefined || key === undefined) {
    return { ok: false, problems };
  }
  // What the parsing above cannot see (an unsupported key type, say) shows up when OpenSSL builds the context.
  try {
    createSecureContext({ cert, key, ...(ca === undefined ? {} : { ca }) });
  } catch (error) {
    return { ok: false, problems: [{ path, message: `${tls.certfile}: ${(error as Error).message}` }] };
  }
  const notAfter = new Date(served.validTo);
  if (notAfter.getTime() <= now.getTime()) {
    warnings.push({
      path: certPath,
      message: `${tls.certfile}: the certificate expired on ${notAfter.toISOString()} (serial ${served.serialNumber})`,
    });
  } else if (new Date(served.validFrom).getTime() > now.getTime()) {
    warnings.push({
      path: certPath,
      message: `${tls.certfile}: the certificate is not valid before ${new Date(served.validFrom).toISOString()}`,
    });
  }
  return { ok: true, material: { cert, key, ca, certificate: served, notAfter }, warnings };
}
