/**
 * The client certificate of a mutual-TLS connection, for the auth layer: its subject and its SHA-256 thumbprint
 * (RFC 8705 `x5t#S256`, what a certificate-bound token's `cnf` names), and the certificate itself (DER and PEM)
 * for a filter that needs more. Only a certificate the listener verified against client_cafile is returned.
 */
import { createHash, type X509Certificate } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

export interface ClientCertificate {
  /** Distinguished name, one `key=value` per line as node:crypto prints it. */
  readonly subject: string;
  readonly issuer: string;
  readonly serialNumber: string;
  /** base64url SHA-256 of the DER certificate: RFC 8705's `x5t#S256`. */
  readonly thumbprintSha256: string;
  /** Upper-case hex with colons, as `openssl x509 -fingerprint -sha256` prints it. */
  readonly fingerprintSha256: string;
  readonly der: Buffer;
  readonly pem: string;
  readonly notAfter: Date;
}

const seen = new WeakMap<TLSSocket, ClientCertificate | null>();

function isTlsSocket(socket: Socket): socket is TLSSocket {
  return (socket as Partial<TLSSocket>).encrypted === true;
}

/** The verified client certificate of a TLS connection; undefined on plain http or without one. */
export function clientCertificateOf(socket: Socket): ClientCertificate | undefined {
  if (!isTlsSocket(socket) || !socket.authorized) return undefined;
  const cached = seen.get(socket);
  if (cached !== undefined) return cached ?? undefined;
  const x509 = socket.getPeerX509Certificate();
  const found = x509 === undefined ? undefined : describe(x509);
  // A connection's peer never changes (renegotiation is refused by TLS 1.3, and Node's default limits it).
  seen.set(socket, found ?? null);
  return found;
}

/** The verified client certificate of the connection a request arrived on. */
export function clientCertificate(req: IncomingMessage): ClientCertificate | undefined {
  // A request made by hand (light-my-request, a test double) or whose connection is gone has no socket.
  const socket = req.socket as Socket | null | undefined;
  return socket ? clientCertificateOf(socket) : undefined;
}

export function describe(x509: X509Certificate): ClientCertificate {
  return {
    subject: x509.subject,
    issuer: x509.issuer,
    serialNumber: x509.serialNumber,
    thumbprintSha256: createHash('sha256').update(x509.raw).digest('base64url'),
    fingerprintSha256: x509.fingerprint256,
    der: x509.raw,
    pem: x509.toString(),
    notAfter: new Date(x509.validTo),
  };
}
