/**
 * deploy/kubernetes/sidecar.yaml played by `podman kube play`: the Deployment's pod (the proxy beside a Nova-like
 * API container), its ConfigMap and Secret. Only what a laptop cannot have is replaced: the images (the locally
 * built ones), the ports (free ones, since the pod shares the host's network here) and Keystone (the emulator).
 */
import { randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { podmanVariant } from './pod-variant.js';
import { containersAvailable, freePort, podman, podmanOk, waitFor200 } from './podman.js';

const available = containersAvailable();

describe.skipIf(!available)('deploy/kubernetes/sidecar.yaml under podman kube play', () => {
  let keystone: KeystoneEmulator;
  let file: string;
  let podName: string;
  let secretName: string | undefined;

  beforeAll(async () => {
    keystone = await startKeystoneEmulator();
  });

  afterAll(async () => {
    if (file !== undefined) {
      await podman(['kube', 'down', file]);
      rmSync(file, { force: true });
    }
    if (secretName !== undefined) await podman(['secret', 'rm', secretName]);
    await keystone?.close();
  });

  it('answers 401 without a token and 200 with one through the pod, then goes down', async () => {
    const ports = { api: await freePort(), admin: await freePort(), nova: await freePort() };
    const name = `kap-pod-${randomUUID().slice(0, 8)}`;
    file = join(tmpdir(), `${name}.yaml`);
    const variant = podmanVariant(keystone.url, ports, name);
    writeFileSync(file, variant.yaml, { mode: 0o600 });
    secretName = variant.secretName;
    const secretFile = `${file}.secret.json`;
    writeFileSync(secretFile, variant.secretJson, { mode: 0o600 });
    try {
      await podmanOk(['secret', 'create', secretName, secretFile]);
    } finally {
      rmSync(secretFile, { force: true });
    }

    const started = performance.now();
    await podmanOk(['kube', 'play', file]);
    // podman names a Deployment's pods <name>-pod-<index>.
    podName = `${name}-pod-0`;
    try {
      await waitFor200(`http://127.0.0.1:${ports.admin}/readyz`, 60_000);
      console.info(
        `[measure] podman kube play -> /readyz 200: ${Math.round(performance.now() - started)} ms`,
      );

      const api = `http://127.0.0.1:${ports.api}`;
      const anonymous = await fetch(`${api}/v2.1/servers`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get('www-authenticate')).toContain('keystone.example');

      const token = keystone.issueToken({ user: fixtures.users.demo });
      const ok = await fetch(`${api}/v2.1/servers`, { headers: { 'x-auth-token': token } });
      expect(ok.status).toBe(200);
      // Answered by the Nova-like container, with the identity the sidecar injected.
      expect(await ok.json()).toEqual({ servers: [], path: '/v2.1/servers', user: fixtures.users.demo.id });

      // Both containers of the pod run as the manifest's runAsUser, on a read-only root.
      const proxyContainer = `${podName}-keystone-auth-proxy`;
      expect(await podmanOk(['exec', proxyContainer, 'id', '-u'])).toBe('1000');
      expect(await podmanOk(['inspect', '--format', '{{.HostConfig.ReadonlyRootfs}}', proxyContainer])).toBe(
        'true',
      );
    } catch (error) {
      const logs = await podman(['pod', 'logs', podName]);
      console.error(`[pod ${podName} logs]\n${logs.stdout}${logs.stderr}`);
      throw error;
    }

    const down = await podman(['kube', 'down', file]);
    expect(down.code, down.stderr).toBe(0);
    expect((await podman(['pod', 'exists', podName])).code).not.toBe(0);
  });
});
