#!/usr/bin/env node
/**
 * keystone-auth-proxy: the sidecar. Reads the YAML config, starts the proxied, admin and forward-auth listeners,
 * drains on SIGTERM/SIGINT. Exit codes: 0 normal stop, 1 runtime failure, 2 bad command line or configuration.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { loadProxyConfig } from './config/proxy-config.js';
import { ConfigError } from './errors.js';
import { createLogger } from './observability/logger.js';
import { createMetrics } from './observability/metrics.js';
import {
  autoWorkers,
  isClusterWorker,
  runWorker,
  startCluster,
  warmUpInBackground,
} from './proxy/cluster.js';
import { startProxy } from './proxy/server.js';
import { checkTlsFiles } from './tls/config-check.js';
import { VERSION } from './version.js';

const DEFAULT_CONFIG = 'config/keystone-auth-proxy.yaml';

const HELP = `keystone-auth-proxy ${VERSION}
Keystone token validation in front of an OpenStack API, as keystonemiddleware's auth_token does it.

Usage: keystone-auth-proxy [--config FILE] [--check-config]

  -c, --config FILE   YAML configuration (default: ${DEFAULT_CONFIG})
      --check-config  validate the configuration, print the problems if any, and exit
  -v, --version       print the version and exit
  -h, --help          print this help and exit

Exit codes: 0 stopped cleanly, 1 failed while running, 2 bad arguments or configuration.
Signals: SIGTERM or SIGINT drain in-flight requests (shutdown.grace_period_seconds), a second one stops at once;
SIGHUP re-reads the listeners' TLS certificate files (a failed reload keeps the previous certificate).
`;

function readTextIfPresent(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

async function main(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parse>;
  try {
    args = parse(argv);
  } catch (error) {
    process.stderr.write(`keystone-auth-proxy: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (args.version) {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const file = args.config ?? DEFAULT_CONFIG;
  let config: ReturnType<typeof loadProxyConfig>;
  let tlsWarnings: ReturnType<typeof checkTlsFiles>['warnings'];
  try {
    config = loadProxyConfig(file);
    // The files the listeners will serve, checked before anything listens: every problem named at once.
    const tlsFiles = checkTlsFiles(config);
    if (tlsFiles.problems.length > 0)
      throw new ConfigError(tlsFiles.problems, `invalid TLS files in ${file}`);
    tlsWarnings = tlsFiles.warnings;
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`keystone-auth-proxy: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  if (args['check-config']) {
    process.stdout.write(`configuration OK: ${file}\n`);
    return 0;
  }

  const logger = createLogger({
    level: config.log.level,
    format: config.log.format,
    flushIntervalMs: config.log.flush_interval_seconds * 1000,
  });
  const worker = isClusterWorker();
  const metrics = config.metrics.enabled
    ? createMetrics({
        prefix: config.metrics.prefix,
        version: VERSION,
        role: worker ? 'worker' : 'process',
        filter: config.filter,
      })
    : undefined;
  if (worker) return runWorker(config, logger, metrics);
  // An expired certificate does not stop the start: a rotation (SIGHUP or the file watch) can repair it live.
  for (const warning of tlsWarnings) logger.warn({ path: warning.path }, warning.message);
  const workers =
    config.workers === 'auto' ? autoWorkers(availableParallelism(), readTextIfPresent) : config.workers;

  let running: { url: string | undefined; adminUrl: string | undefined; forwardAuthUrl: string | undefined };
  let shutdown: (graceMs: number) => Promise<{ unfinished: number }>;
  let reloadTls: () => boolean;
  let inFlight: () => number | undefined = () => undefined;
  try {
    if (workers > 1) {
      const clustered = await startCluster(config, workers, logger, metrics);
      running = clustered;
      shutdown = (graceMs) => clustered.shutdown(graceMs);
      reloadTls = () => clustered.reloadTls();
    } else {
      const single = await startProxy(config, { logger, metrics });
      running = single;
      shutdown = (graceMs) => single.shutdown(graceMs);
      reloadTls = () => single.reloadTls();
      inFlight = () => single.inFlight();
      warmUpInBackground(single.authenticator, logger);
    }
  } catch (error) {
    logger.fatal(
      { err: { message: (error as Error).message, code: (error as { code?: unknown }).code } },
      'start failed',
    );
    return 1;
  }
  logger.info(
    {
      version: VERSION,
      workers,
      listen: running.url,
      admin: running.adminUrl,
      forwardAuth: running.forwardAuthUrl,
    },
    'keystone-auth-proxy started',
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: stopping now');
        resolve(1);
        return;
      }
      stopping = true;
      const graceMs = config.shutdown.grace_period_seconds * 1000;
      logger.info({ signal, inFlight: inFlight(), graceMs }, 'draining');
      shutdown(graceMs).then(
        ({ unfinished }) => {
          logger.info({ unfinished }, 'stopped');
          resolve(0);
        },
        (error: unknown) => {
          logger.error({ err: { message: (error as Error).message } }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    process.on('SIGHUP', () => {
      logger.info({ signal: 'SIGHUP' }, 'reloading TLS certificates');
      reloadTls();
    });
  });
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      'check-config': { type: 'boolean' },
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }).values;
}

main(process.argv.slice(2)).then(
  (code) => {
    // Let pino flush, then leave even if a keep-alive socket lingers.
    setImmediate(() => process.exit(code));
  },
  (error: unknown) => {
    process.stderr.write(`keystone-auth-proxy: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
