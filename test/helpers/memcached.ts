/**
 * Real memcached servers for integration tests: Debian's /usr/bin/memcached on a free loopback port, with
 * handles to stop it, freeze it (SIGSTOP: the kernel still accepts connections and bytes, nothing answers),
 * and start it again on the same port; and raw text-protocol get/set, the way python-memcached talks to it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';

export const MEMCACHED_BIN = '/usr/bin/memcached';
export const memcachedAvailable = existsSync(MEMCACHED_BIN);
/** Suites skip without memcached, except in CI, where they run and fail with a clear message instead. */
export const skipWithoutMemcached = !memcachedAvailable && !process.env.CI;

export interface Memcached {
  readonly port: number;
  /** `127.0.0.1:<port>`, as a `memcached_servers` entry. */
  readonly server: string;
  stop(): Promise<void>;
  /** SIGSTOP: a black hole that still accepts TCP connections. */
  pause(): void;
  resume(): void;
  /** Stops it and starts a fresh (empty) one on the same port. */
  restart(): Promise<void>;
  /** Reads a key directly (text protocol, a connection of its own). */
  get(key: string): Promise<Buffer | undefined>;
  /** Writes a key directly (text protocol, flags 0); no TTL: kept until deleted or evicted. */
  set(key: string, value: Buffer, ttlSeconds?: number): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => {
        if (address && typeof address === 'object') {
          resolve(address.port);
        } else {
          reject(new Error('no port'));
        }
      });
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

function spawnMemcached(port: number): ChildProcess {
  const args = ['-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '64'];
  // memcached refuses to run as root without being told which user to run as.
  if (process.getuid?.() === 0) {
    args.push('-u', 'root');
  }
  return spawn(MEMCACHED_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

async function waitUntilListening(child: ChildProcess, port: number, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `memcached on port ${port} exited (${child.exitCode ?? child.signalCode}): ${stderr()}`,
      );
    }
    if (await canConnect(port)) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`memcached on port ${port} did not accept connections within 5 s: ${stderr()}`);
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve();
  }
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Signals are delivered asynchronously: wait (briefly, synchronously) until /proc shows the process state. */
function waitForState(child: ChildProcess, state: string): void {
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline) {
    try {
      // /proc/<pid>/stat: "pid (comm) S ..."; comm is memcached, free of parentheses.
      if (readFileSync(`/proc/${child.pid}/stat`, 'latin1').split(') ')[1]?.startsWith(state)) {
        return;
      }
    } catch {
      return;
    }
  }
}

export async function startMemcached(): Promise<Memcached> {
  if (!memcachedAvailable) {
    throw new Error(
      `${MEMCACHED_BIN} is missing: install it (apt-get install -y memcached) to run these tests`,
    );
  }
  const port = await freePort();
  let child: ChildProcess;
  let output = '';
  const launch = async (): Promise<void> => {
    output = '';
    child = spawnMemcached(port);
    child.stderr?.on('data', (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-2000);
    });
    await waitUntilListening(child, port, () => output);
  };
  const stop = async (): Promise<void> => {
    const running = child;
    running.kill('SIGCONT');
    running.kill('SIGTERM');
    await exited(running);
  };
  await launch();
  return {
    port,
    server: `127.0.0.1:${port}`,
    stop,
    pause: () => {
      child.kill('SIGSTOP');
      waitForState(child, 'T');
    },
    resume: () => {
      child.kill('SIGCONT');
    },
    restart: async () => {
      await stop();
      await launch();
    },
    get: (key) => rawGet(port, key),
    set: (key, value, ttlSeconds) => rawSet(port, key, value, ttlSeconds),
  };
}

/**
 * One text-protocol exchange on a fresh connection: sends `request`, collects bytes until `parse` returns a
 * result (or throws on an unexpected reply).
 */
function exchange<T>(
  port: number,
  request: Buffer,
  parse: (received: Buffer) => { value: T } | undefined,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    const finish = (outcome: () => void): void => {
      clearTimeout(timer);
      socket.destroy();
      outcome();
    };
    const timer = setTimeout(
      () => finish(() => reject(new Error(`memcached on port ${port}: no answer`))),
      2000,
    );
    socket.once('error', (err) => finish(() => reject(err)));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      try {
        const parsed = parse(received);
        if (parsed) {
          finish(() => resolve(parsed.value));
        }
      } catch (err) {
        finish(() => reject(err));
      }
    });
    socket.write(request);
  });
}

/** `get <key>` over the text protocol, as python-memcached reads: the value, or undefined when absent. */
export function rawGet(port: number, key: string): Promise<Buffer | undefined> {
  return exchange(port, Buffer.from(`get ${key}\r\n`, 'latin1'), (received) => {
    const headerEnd = received.indexOf('\r\n');
    if (headerEnd < 0) {
      return undefined;
    }
    const header = received.subarray(0, headerEnd).toString('latin1');
    if (header === 'END') {
      return { value: undefined };
    }
    if (!header.startsWith('VALUE ')) {
      throw new Error(`unexpected reply to get: ${header}`);
    }
    // VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n
    const bytes = Number(header.split(' ')[3]);
    const dataStart = headerEnd + 2;
    return received.length >= dataStart + bytes + 7
      ? { value: received.subarray(dataStart, dataStart + bytes) }
      : undefined;
  });
}

/** `set <key>` over the text protocol with flags 0, as python-memcached writes bytes; 0 s: no expiry. */
export function rawSet(port: number, key: string, value: Buffer, ttlSeconds = 0): Promise<void> {
  const request = Buffer.concat([
    Buffer.from(`set ${key} 0 ${ttlSeconds} ${value.length}\r\n`, 'latin1'),
    value,
    Buffer.from('\r\n', 'latin1'),
  ]);
  return exchange(port, request, (received) => {
    const reply = received.toString('latin1');
    if (!reply.endsWith('\r\n')) {
      return undefined;
    }
    if (reply !== 'STORED\r\n') {
      throw new Error(`unexpected reply to set: ${reply.trim()}`);
    }
    return { value: undefined };
  });
}
