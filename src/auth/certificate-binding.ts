/**
 * Pure: is a certificate-bound token (`token.oauth2_credential["x5t#S256"]`, Keystone 2023.1+ OAuth2 mTLS) bound
 * to the client certificate of this request? Two encodings of the thumbprint are in use and both are accepted:
 * Keystone's (SHA-256 over the PEM text, base64url with padding, what keystonemiddleware's oauth2_mtls_token
 * compares) and RFC 8705's (SHA-256 over the DER, base64url without padding).
 */
import { createHash, timingSafeEqual } from 'node:crypto';

/** What the filter needs of the client certificate; PEM exactly as OpenSSL and Python's ssl module write it. */
export interface PresentedCertificate {
  readonly der: Buffer;
  readonly pem: string;
}

export type BindingVerdict = 'bound' | 'no_certificate' | 'not_bound_token' | 'mismatch';

/** PEM text as Python's `ssl.DER_cert_to_PEM_cert` writes it: 64-character lines and a final newline. */
export function pemOf(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

/** Keystone's `get_certificate_thumbprint`: SHA-256 of the PEM text, base64url, padded. */
export function keystoneThumbprint(pem: string): string {
  return createHash('sha256').update(pem, 'ascii').digest('base64').replace(/\+/g, '-').replace(/\//g, '_');
}

/** RFC 8705 §3.1 `x5t#S256`: SHA-256 of the DER, base64url, unpadded. */
export function rfc8705Thumbprint(der: Buffer): string {
  return createHash('sha256').update(der).digest('base64url');
}

function sameText(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

export function certificateBinding(
  boundThumbprint: string | undefined,
  certificate: PresentedCertificate | undefined,
): BindingVerdict {
  if (boundThumbprint === undefined || boundThumbprint.length === 0) return 'not_bound_token';
  if (certificate === undefined) return 'no_certificate';
  return thumbprintsOf(certificate).some((candidate) => sameText(candidate, boundThumbprint))
    ? 'bound'
    : 'mismatch';
}

/** Per certificate object: the listener keeps one per connection, the ingress reader one per header value. */
const thumbprints = new WeakMap<PresentedCertificate, readonly string[]>();

function thumbprintsOf(certificate: PresentedCertificate): readonly string[] {
  let known = thumbprints.get(certificate);
  if (known === undefined) {
    // Both spellings of the PEM: the one this process was given and the canonical one re-made from the DER.
    known = [
      keystoneThumbprint(certificate.pem),
      keystoneThumbprint(pemOf(certificate.der)),
      rfc8705Thumbprint(certificate.der),
    ];
    thumbprints.set(certificate, known);
  }
  return known;
}
