/**
 * A small memcached store for the shared token cache tier, built so that a dead or slow memcached never
 * stalls a request: every operation has its own deadline, never rejects, and a server that failed is skipped
 * (miss / no-op at once) for `deadRetryMs`, then probed again by a single operation.
 *
 * Keys are spread over the servers exactly as python-memcached (keystonemiddleware's client) does while
 * every server is up, so a fleet mixing this proxy and Python services reads and writes each key on the same
 * server. The only module that imports memjs: one memjs client per server (memjs pipelines requests over one
 * socket, so a process holds at most one connection per server), with memjs's own retries and failover off.
 */
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { crc32 } from 'node:zlib';
import { parseMemcachedServer } from '../config/auth-options.js';
import type { Logger, MemcachedOperation, MemcachedOutcome } from '../observability/observer.js';

export { parseMemcachedServer };

export interface MemcachedStoreOptions {
  /**
   * keystonemiddleware's `memcached_servers`: `host:port`, `host` (port 11211), `[v6]:port` or
   * `inet6:[v6]:port`. The order matters: every member of a fleet must list the same servers in the same order.
   */
  readonly servers: readonly string[];
  /** Deadline of one operation, connecting included. */
  readonly socketTimeoutMs: number;
  /** How long a failed server is skipped before the next operation probes it again. */
  readonly deadRetryMs: number;
  /** Wall clock in ms. */
  readonly now: () => number;
  readonly logger: Logger;
  readonly onOperation?: (op: MemcachedOperation, outcome: MemcachedOutcome, seconds: number) => void;
}

export interface MemcachedServerState {
  readonly server: string;
  readonly up: boolean;
}

/** The part of memjs 1.3.2 used here (it ships no type declarations). */
interface MemjsServer {
  username: string | undefined;
  password: string | undefined;
  /** Internal; read only to destroy a discarded connection at once. */
  readonly _socket?: { destroy(): void } | undefined;
}
type MemjsCallback<T> = (err: Error | null, value: T | null) => void;
interface MemjsClient {
  readonly servers: readonly MemjsServer[];
  get(key: string, callback: MemjsCallback<Buffer>): void;
  set(key: string, value: Buffer, options: { expires: number }, callback: MemjsCallback<boolean>): void;
  delete(key: string, callback: MemjsCallback<boolean>): void;
  close(): void;
}
interface MemjsModule {
  Client: new (servers: MemjsServer[], options: object) => MemjsClient;
  Server: new (
    host: string,
    port: number,
    username: string | undefined,
    password: string | undefined,
    options: object,
  ) => MemjsServer;
}

const memjs = createRequire(import.meta.url)('memjs') as MemjsModule;

/** memcached reads a longer expiry as an absolute Unix time; 0 means never: neither may be sent. */
const MAX_TTL_SECONDS = 30 * 24 * 3600;
/**
 * memjs's own deadline sits past ours, so ours always decides; memjs's only tears down what we discarded.
 */
const MEMJS_BACKSTOP_MS = 1000;
/** memjs reports a status the server answered with as `MemJS <OP>: <status text>`; anything else is transport. */
const SERVER_ANSWERED = /^MemJS (GET|SET|DELETE): /;

/** python-memcached's `cmemcache_hash`: 15 bits of the key's CRC-32, never 0. */
export function memcachedServerHash(key: string): number {
  return (crc32(Buffer.from(key, 'utf8')) >>> 16) & 0x7fff || 1;
}

/** Whole seconds in [1, 30 days]. */
export function memcachedTtlSeconds(ttlSeconds: number): number {
  if (Number.isNaN(ttlSeconds)) {
    return 1;
  }
  return Math.min(MAX_TTL_SECONDS, Math.max(1, Math.floor(ttlSeconds)));
}

interface Slot {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  client: MemjsClient;
  up: boolean;
  /** While down: wall-clock ms from which the next operation probes the server. */
  retryAt: number;
  probing: boolean;
  /** Settlers of the operations in flight on `client`, to fail them together when it is discarded. */
  readonly inFlight: Set<(outcome: 'error' | 'timeout') => void>;
}

type Settle<T> = (value: T, outcome: MemcachedOutcome) => void;

export class MemcachedStore {
  readonly #slots: readonly Slot[];
  readonly #timeoutMs: number;
  readonly #deadRetryMs: number;
  readonly #now: () => number;
  readonly #logger: Logger;
  readonly #onOperation: MemcachedStoreOptions['onOperation'];
  readonly #memjsTimeoutSeconds: number;
  #closed = false;

  constructor(options: MemcachedStoreOptions) {
    if (options.servers.length === 0) {
      throw new TypeError('memcached store needs at least one server');
    }
    if (!(options.socketTimeoutMs > 0) || !(options.deadRetryMs >= 0)) {
      throw new TypeError('memcached socketTimeoutMs must be > 0 and deadRetryMs >= 0');
    }
    this.#timeoutMs = options.socketTimeoutMs;
    this.#deadRetryMs = options.deadRetryMs;
    this.#now = options.now;
    this.#logger = options.logger;
    this.#onOperation = options.onOperation;
    this.#memjsTimeoutSeconds = (options.socketTimeoutMs + MEMJS_BACKSTOP_MS) / 1000;
    this.#slots = options.servers.map((name) => {
      const { host, port } = parseMemcachedServer(name);
      return {
        name,
        host,
        port,
        client: this.#createClient(host, port),
        up: true,
        retryAt: 0,
        probing: false,
        inFlight: new Set(),
      };
    });
  }

  /** The stored value, or `undefined` on a miss or any failure. */
  get(key: string): Promise<Buffer | undefined> {
    return this.#run<Buffer | undefined>('get', key, undefined, (client, settle, fail) => {
      client.get(key, (err, value) => {
        if (err) {
          fail(err, undefined);
        } else if (value === null) {
          settle(undefined, 'miss');
        } else {
          settle(value, 'hit');
        }
      });
    });
  }

  /** Stores `value` for `ttlSeconds` (clamped to [1 s, 30 days]); failures are only reported. */
  set(key: string, value: Buffer, ttlSeconds: number): Promise<void> {
    const expires = memcachedTtlSeconds(ttlSeconds);
    return this.#run<void>('set', key, undefined, (client, settle, fail) => {
      client.set(key, value, { expires }, (err) => (err ? fail(err, undefined) : settle(undefined, 'ok')));
    });
  }

  /** Removes `key`; a key that was not there is `ok` too. */
  delete(key: string): Promise<void> {
    return this.#run<void>('delete', key, undefined, (client, settle, fail) => {
      client.delete(key, (err) => (err ? fail(err, undefined) : settle(undefined, 'ok')));
    });
  }

  serverStates(): MemcachedServerState[] {
    return this.#slots.map((slot) => ({ server: slot.name, up: slot.up }));
  }

  /** Closes the connections; operations in flight resolve at once as misses, later ones too. */
  close(): Promise<void> {
    this.#closed = true;
    for (const slot of this.#slots) {
      this.#discard(slot, 'error', false);
    }
    return Promise.resolve();
  }

  #createClient(host: string, port: number): MemjsClient {
    // memjs merges its defaults into the objects it is given: fresh ones per client.
    const timeout = this.#memjsTimeoutSeconds;
    const server = new memjs.Server(host, port, undefined, undefined, {
      timeout,
      conntimeout: timeout,
      keepAlive: true,
    });
    // memjs falls back to MEMCACHIER_* / MEMCACHE_* credentials from the environment; we never use SASL.
    server.username = undefined;
    server.password = undefined;
    return new memjs.Client([server], {
      retries: 0,
      failover: false,
      expires: 0,
      // memjs logs from socket callbacks, where a throwing logger would be an uncaught exception.
      logger: {
        log: (message: unknown) => this.#log('debug', { server: `${host}:${port}`, message }, 'memjs'),
      },
    });
  }

  #run<T>(
    op: MemcachedOperation,
    key: string,
    fallback: T,
    start: (client: MemjsClient, settle: Settle<T>, fail: (err: unknown, value: T) => void) => void,
  ): Promise<T> {
    const startedAt = performance.now();
    if (this.#closed) {
      return Promise.resolve(fallback);
    }
    // Never rehash to another server when the chosen one is down: python-memcached would, but then members
    // of a fleet that see different servers down would read and write a key in different places.
    const slot = this.#slots[memcachedServerHash(key) % this.#slots.length]!;
    if (!this.#admit(slot)) {
      this.#report(op, 'skipped_down', startedAt);
      return Promise.resolve(fallback);
    }
    return new Promise<T>((resolve) => {
      const client = slot.client;
      let settled = false;
      const finish = (value: T, outcome: MemcachedOutcome): void => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        slot.inFlight.delete(abort);
        this.#report(op, outcome, startedAt);
        resolve(value);
      };
      const abort = (outcome: 'error' | 'timeout'): void => finish(fallback, outcome);
      const failed = (outcome: 'error' | 'timeout', reason: string): void => {
        if (settled) {
          return;
        }
        finish(fallback, outcome);
        if (client === slot.client) {
          this.#markDown(slot, outcome, reason);
        }
      };
      const settle: Settle<T> = (value, outcome) => {
        if (settled) {
          return;
        }
        finish(value, outcome);
        if (client === slot.client) {
          this.#markUp(slot);
        }
      };
      const fail = (err: unknown, value: T): void => {
        const reason = err instanceof Error ? err.message : String(err);
        if (SERVER_ANSWERED.test(reason)) {
          // The server is there and said no (value too large, …): an error for this operation only.
          settle(value, 'error');
        } else {
          failed('error', reason);
        }
      };
      const timer = setTimeout(
        () => failed('timeout', `no answer within ${this.#timeoutMs} ms`),
        this.#timeoutMs,
      );
      timer.unref();
      slot.inFlight.add(abort);
      try {
        start(client, settle, fail);
      } catch (err) {
        failed('error', err instanceof Error ? err.message : String(err));
      }
    });
  }

  /** Up: go. Down: skip until retryAt, then let exactly one operation probe while the others keep skipping. */
  #admit(slot: Slot): boolean {
    if (slot.up) {
      return true;
    }
    if (slot.probing || this.#now() < slot.retryAt) {
      return false;
    }
    slot.probing = true;
    return true;
  }

  #markDown(slot: Slot, outcome: 'error' | 'timeout', reason: string): void {
    const wasUp = slot.up;
    slot.up = false;
    slot.probing = false;
    slot.retryAt = this.#now() + this.#deadRetryMs;
    // The connection may be wedged (a stopped server still accepts bytes): replace it, and fail what was
    // queued on it now rather than at each one's deadline.
    this.#discard(slot, outcome, true);
    if (wasUp) {
      this.#log(
        'warn',
        { server: slot.name, outcome, reason, retryInMs: this.#deadRetryMs },
        'memcached server down',
      );
    }
  }

  #markUp(slot: Slot): void {
    slot.probing = false;
    if (!slot.up) {
      slot.up = true;
      this.#log('info', { server: slot.name }, 'memcached server back up');
    }
  }

  #discard(slot: Slot, outcome: 'error' | 'timeout', replace: boolean): void {
    const old = slot.client;
    if (replace) {
      slot.client = this.#createClient(slot.host, slot.port);
    }
    try {
      old.close();
      for (const server of old.servers) {
        server._socket?.destroy();
      }
    } catch {
      // Closing a broken connection can only fail in ways that leave nothing to clean up.
    }
    for (const abort of [...slot.inFlight]) {
      abort(outcome);
    }
  }

  #report(op: MemcachedOperation, outcome: MemcachedOutcome, startedAt: number): void {
    try {
      this.#onOperation?.(op, outcome, (performance.now() - startedAt) / 1000);
    } catch {
      // An observer must not turn a cache operation into a failure.
    }
  }

  #log(level: 'debug' | 'info' | 'warn', obj: object, msg: string): void {
    try {
      this.#logger[level](obj, msg);
    } catch {
      // Same as observers.
    }
  }
}
