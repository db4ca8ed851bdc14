/**
 * Pure: the client certificate an ingress that terminated TLS forwards in a header. Two shapes are read: a
 * URL-encoded PEM (nginx `$ssl_client_escaped_cert`, HAProxy, Envoy's `Cert=` value once unquoted) and a bare
 * base64 DER (Traefik's `X-Forwarded-Tls-Client-Cert`, AWS ALB's `X-Amzn-Mtls-Clientcert` without headers).
 * Only for a header that the ingress always sets itself: it is trusted as is.
 */
import { X509Certificate } from 'node:crypto';
import { type PresentedCertificate, pemOf } from './certificate-binding.js';

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

/** `undefined` for an absent or unreadable value: the request then has no client certificate. */
export function forwardedCertificate(
  value: string | readonly string[] | undefined,
): PresentedCertificate | undefined {
  if (typeof value !== 'string' || value.length === 0) return undefined;
  try {
    const text = value.includes('%') ? decodeURIComponent(value) : value;
    const block = PEM_BLOCK.exec(text)?.[0];
    const source = block ?? Buffer.from(text.replace(/\s+/g, ''), 'base64');
    const der = new X509Certificate(source).raw;
    return { der, pem: pemOf(der) };
  } catch {
    return undefined;
  }
}
