/**
 * The TLS client certificate of the connection a request came on, as RFC 8705's `x5t#S256`: base64url (no
 * padding) SHA-256 of the DER certificate. Only a certificate the TLS layer verified counts (an unauthorized
 * peer certificate, accepted with requestCert but rejectUnauthorized off, is none).
 */
import { createHash, type X509Certificate } from 'node:crypto';

/** What a node:tls socket offers (a plain net socket has none of it): structural, so tests can pass their own. */
export interface CertificatePeer {
  readonly encrypted?: boolean;
  readonly authorized?: boolean;
  getPeerX509Certificate?(): X509Certificate | undefined;
}

// A connection's peer never changes (TLS 1.3 has no renegotiation; Node limits it before): hash once.
const seen = new WeakMap<CertificatePeer, string | null>();

export function certificateThumbprint(peer: CertificatePeer | undefined): string | undefined {
  if (peer === undefined || peer.encrypted !== true || peer.authorized !== true) return undefined;
  const known = seen.get(peer);
  if (known !== undefined) return known ?? undefined;
  const certificate = peer.getPeerX509Certificate?.();
  const thumbprint =
    certificate === undefined ? undefined : createHash('sha256').update(certificate.raw).digest('base64url');
  seen.set(peer, thumbprint ?? null);
  return thumbprint;
}
