/**
 * python-openstackclient as the suites run it: Debian's `/usr/bin/openstack` in a clean environment (no OS_*
 * variable, clouds.yaml or pyenv python leaks in), its exit code and both streams kept whole.
 */
import { spawn } from 'node:child_process';

export const OPENSTACK = '/usr/bin/openstack';

export interface OsResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Wall time of the command, Python start-up included. */
  readonly ms: number;
}

/** `home`: the HOME the client sees (its cache and config directories). */
export function runOpenstack(args: readonly string[], home: string): Promise<OsResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(OPENSTACK, [...args], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, LANG: 'C.UTF-8' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.once('error', reject);
    child.once('exit', (code) =>
      resolve({ code, stdout, stderr, ms: Math.round(performance.now() - started) }),
    );
  });
}
