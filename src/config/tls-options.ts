/**
 * `tls` of a listener (`listen`, `admin_listen`, `forward_auth.listen`): the certificate it serves and, for mutual
 * TLS, the CA its clients' certificates must chain to. File names are keystone_authtoken's (`certfile`,
 * `keyfile`); the files themselves are checked at start-up by src/tls/config-check.ts, not here.
 */
import { z } from 'zod';

export const CLIENT_AUTH_MODES = ['none', 'optional', 'require'] as const;
export type ClientAuthMode = (typeof CLIENT_AUTH_MODES)[number];

export const TLS_VERSIONS = ['TLSv1.2', 'TLSv1.3'] as const;

const file = z.string().trim().min(1, { message: 'must be a file path' });

export const tlsSchema = z
  .object({
    certfile: file.describe(
      'PEM certificate the listener serves, then its intermediates; re-read on SIGHUP and when the file changes.',
    ),
    keyfile: file.describe('PEM private key of certfile (unencrypted).'),
    client_cafile: file
      .optional()
      .describe(
        'PEM CA bundle a client certificate must chain to (mutual TLS); needed unless client_auth is none.',
      ),
    client_auth: z
      .enum(CLIENT_AUTH_MODES)
      .default('none')
      .describe(
        'none: no client certificate asked for; optional: asked for, a presented one must verify; require: a client without a verified certificate is refused at the handshake.',
      ),
    min_version: z.enum(TLS_VERSIONS).default('TLSv1.2').describe('Oldest TLS version accepted.'),
  })
  .strict()
  .superRefine((tls, ctx) => {
    if (tls.client_auth !== 'none' && tls.client_cafile === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['client_cafile'],
        message: `is required with client_auth: ${tls.client_auth}`,
      });
    }
  });

export type TlsOptions = z.output<typeof tlsSchema>;
export type TlsOptionsInput = z.input<typeof tlsSchema>;
