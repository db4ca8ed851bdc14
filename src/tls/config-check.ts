/**
 * The start-up check of every listener's TLS files, after the configuration parsed: all problems of all
 * listeners in one list (exit 2, like any configuration error), and the warnings (an expired certificate) that
 * do not stop the start.
 */
import type { ProxyConfig } from '../config/proxy-config.js';
import type { TlsOptions } from '../config/tls-options.js';
import type { ConfigIssue } from '../errors.js';
import type { TlsListenerName } from '../observability/observer.js';
import { loadTlsMaterial } from './certificates.js';

export interface TlsListenerConfig {
  readonly listener: TlsListenerName;
  /** Option path of its `tls`. */
  readonly path: string;
  readonly tls: TlsOptions;
}

/** The listeners of this configuration that serve TLS. */
export function tlsListeners(config: ProxyConfig): TlsListenerConfig[] {
  const all: [TlsListenerName, string, TlsOptions | undefined][] = [
    ['proxy', 'listen.tls', config.listen?.tls],
    ['admin', 'admin_listen.tls', config.admin_listen.tls],
    [
      'forward_auth',
      'forward_auth.listen.tls',
      config.forward_auth.enabled ? config.forward_auth.listen?.tls : undefined,
    ],
  ];
  return all.flatMap(([listener, path, tls]) => (tls === undefined ? [] : [{ listener, path, tls }]));
}

export interface TlsFileCheck {
  readonly problems: readonly ConfigIssue[];
  readonly warnings: readonly ConfigIssue[];
}

export function checkTlsFiles(config: ProxyConfig, now: Date = new Date()): TlsFileCheck {
  const problems: ConfigIssue[] = [];
  const warnings: ConfigIssue[] = [];
  for (const { path, tls } of tlsListeners(config)) {
    const loaded = loadTlsMaterial(tls, path, now);
    if (loaded.ok) warnings.push(...loaded.warnings);
    else problems.push(...loaded.problems);
  }
  return { problems, warnings };
}
