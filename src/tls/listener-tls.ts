/**
 * TLS of one listener: the server options built from its files, the handshake failures counted, and the
 * certificate reloaded without dropping a connection (server.setSecureContext: open connections keep the context
 * they were made with, new ones get the new one). A reload runs on SIGHUP and when a file's directory changes:
 * cert-manager and Kubernetes secret volumes rotate by swapping a `..data` symlink, which a watch on the file
 * itself would miss. A reload that fails keeps the old certificate.
 */
import { type FSWatcher, watch } from 'node:fs';
import { dirname } from 'node:path';
import type { TlsOptions as NodeTlsOptions, TLSSocket, Server as TlsServer } from 'node:tls';
import type { TlsOptions } from '../config/tls-options.js';
import { ConfigError } from '../errors.js';
import type { Logger, TlsHandshakeFailure, TlsListenerName, TlsObserver } from '../observability/observer.js';
import { loadTlsMaterial, type TlsMaterial } from './certificates.js';

export interface ListenerTlsOptions {
  readonly listener: TlsListenerName;
  readonly tls: TlsOptions;
  /** Option path of `tls`, for messages: `listen.tls`, `admin_listen.tls`, `forward_auth.listen.tls`. */
  readonly path: string;
  readonly logger: Logger;
  readonly observer?: TlsObserver | undefined;
  /** Reload when the files' directories change; default true. */
  readonly watch?: boolean;
  /** A rotation writes several files: wait this long after the last change before reading them. */
  readonly debounceMs?: number;
}

export type ReloadTrigger = 'signal' | 'file_change';

export interface ListenerTls {
  /** For https.createServer / tls.createServer. */
  readonly serverOptions: NodeTlsOptions;
  /** Counts handshake failures of this server and makes reloads reach it. */
  attach(server: TlsServer): void;
  /** Re-reads the files; true when the listener serves them now, false when they were refused (old one kept). */
  reload(trigger?: ReloadTrigger): boolean;
  /** The certificate being served. */
  current(): TlsMaterial;
  /** Stops watching the files. */
  close(): void;
}

/** Why a handshake failed, from the error Node reports and what it knows of the client certificate. */
export function handshakeFailureReason(
  error: NodeJS.ErrnoException,
  socket: TLSSocket | undefined,
): TlsHandshakeFailure {
  if (socket?.authorizationError) return 'untrusted_certificate';
  const code = error.code ?? '';
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'no_certificate';
  if (code === 'ERR_SSL_HTTP_REQUEST') return 'plain_http';
  if (/VERSION|PROTOCOL/.test(code)) return 'protocol_version';
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_SSL_HANDSHAKE_TIMEOUT') return 'aborted';
  if (/CERTIFICATE|VERIFY/.test(code)) return 'untrusted_certificate';
  return 'other';
}

function contextOptions(tls: TlsOptions, material: TlsMaterial): NodeTlsOptions {
  return {
    cert: material.cert,
    key: material.key,
    ...(material.ca === undefined ? {} : { ca: material.ca }),
    minVersion: tls.min_version,
  };
}

function sameFiles(a: TlsMaterial, b: TlsMaterial): boolean {
  const sameCa = a.ca === undefined || b.ca === undefined ? a.ca === b.ca : a.ca.equals(b.ca);
  return a.cert.equals(b.cert) && a.key.equals(b.key) && sameCa;
}

/** Throws a ConfigError naming every bad file (the start-up check, src/tls/config-check.ts, reports them first). */
export function createListenerTls(options: ListenerTlsOptions): ListenerTls {
  const { listener, tls, path, logger, observer } = options;
  const loaded = loadTlsMaterial(tls, path);
  if (!loaded.ok) throw new ConfigError(loaded.problems, `invalid TLS files for ${path}`);
  let material = loaded.material;
  observer?.tlsCertificateExpiry?.(listener, material.notAfter.getTime() / 1000);
  const servers: TlsServer[] = [];

  const reload = (trigger: ReloadTrigger = 'signal'): boolean => {
    const next = loadTlsMaterial(tls, path);
    if (!next.ok) {
      observer?.tlsReload?.(listener, 'error');
      logger.error(
        { listener, trigger, problems: next.problems.map((p) => `${p.path}: ${p.message}`) },
        'TLS reload failed: still serving the previous certificate',
      );
      return false;
    }
    // A change in the directory that left these files as they were (another secret's key) is no reload.
    if (trigger === 'file_change' && sameFiles(next.material, material)) return true;
    for (const server of servers) server.setSecureContext(contextOptions(tls, next.material));
    material = next.material;
    observer?.tlsReload?.(listener, 'ok');
    observer?.tlsCertificateExpiry?.(listener, material.notAfter.getTime() / 1000);
    for (const warning of next.warnings) logger.warn({ listener, path: warning.path }, warning.message);
    logger.info(
      {
        listener,
        trigger,
        serial: material.certificate.serialNumber,
        notAfter: material.notAfter.toISOString(),
      },
      'TLS certificate reloaded',
    );
    return true;
  };

  const watch =
    options.watch === false ? undefined : watchDirectories(tls, options, () => reload('file_change'));

  return {
    serverOptions: {
      ...contextOptions(tls, material),
      requestCert: tls.client_auth !== 'none',
      // optional: Node must not refuse an unverified certificate itself (it would refuse a missing one as well);
      // the secureConnection check below refuses a presented one that did not verify.
      rejectUnauthorized: tls.client_auth === 'require',
    },
    attach(server) {
      servers.push(server);
      server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: TLSSocket) => {
        observer?.tlsHandshakeFailure?.(listener, handshakeFailureReason(error, socket));
      });
      if (tls.client_auth === 'optional') {
        // Before the HTTP parser reads a byte: a client that showed a certificate it cannot prove is refused.
        server.prependListener('secureConnection', (socket: TLSSocket) => {
          if (socket.authorized || socket.getPeerCertificate().raw === undefined) return;
          observer?.tlsHandshakeFailure?.(listener, 'untrusted_certificate');
          socket.destroy();
        });
      }
    },
    reload,
    current: () => material,
    close() {
      watch?.close();
    },
  };
}

/** Watches the directories of the files; `close` stops the watches and a reload still pending. */
function watchDirectories(
  tls: TlsOptions,
  options: ListenerTlsOptions,
  onChange: () => void,
): { close(): void } {
  const files = [tls.certfile, tls.keyfile, tls.client_cafile].filter((f): f is string => f !== undefined);
  const directories = [...new Set(files.map((file) => dirname(file)))];
  const debounceMs = options.debounceMs ?? 250;
  let timer: NodeJS.Timeout | undefined;
  const schedule = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      onChange();
    }, debounceMs);
    timer.unref();
  };
  const watchers: FSWatcher[] = [];
  for (const directory of directories) {
    try {
      const watcher = watch(directory, { persistent: false }, schedule);
      watcher.on('error', (error) => {
        options.logger.warn(
          { listener: options.listener, directory, err: { message: error.message } },
          'TLS file watch stopped: reload with SIGHUP',
        );
      });
      watchers.push(watcher);
    } catch (error) {
      options.logger.warn(
        { listener: options.listener, directory, err: { message: (error as Error).message } },
        'cannot watch the TLS files: reload with SIGHUP',
      );
    }
  }
  return {
    close() {
      if (timer !== undefined) clearTimeout(timer);
      for (const watcher of watchers.splice(0)) watcher.close();
    },
  };
}
