/**
 * deploy/kubernetes/*.yaml agree with the proxy they deploy: the ConfigMap is a valid config, probes and ports
 * point at its listeners, the kubelet's grace period covers preStop plus the drain, and the pod is restricted.
 * (test/containers/pod.test.ts runs the same manifest under podman.)
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { resolveProxyConfig } from '../../src/config/proxy-config.js';
import { ROOT } from '../helpers/cli.js';

// biome-ignore lint/suspicious/noExplicitAny: parsed Kubernetes YAML
type Doc = Record<string, any>;

function docs(file: string): Doc[] {
  return parseAllDocuments(readFileSync(join(ROOT, 'deploy', 'kubernetes', file), 'utf8')).map(
    (d) => d.toJS() as Doc,
  );
}

function byKind(all: Doc[], kind: string): Doc {
  const found = all.find((d) => d.kind === kind);
  if (found === undefined) throw new Error(`no ${kind} in the manifest`);
  return found;
}

describe('deploy/kubernetes/sidecar.yaml', () => {
  const all = docs('sidecar.yaml');
  const configMap = byKind(all, 'ConfigMap');
  const secret = byKind(all, 'Secret');
  const deployment = byKind(all, 'Deployment');
  const pod = deployment.spec.template.spec;
  const proxy = pod.containers.find((c: Doc) => c.name === 'keystone-auth-proxy');
  const config = resolveProxyConfig(parse(configMap.data['config.yaml']), { NOVA_SERVICE_PASSWORD: 'x' });

  it('carries a config the proxy accepts, its password from the Secret', () => {
    expect(config.keystone_authtoken?.password).toBe('x');
    const ref = proxy.env.find((e: Doc) => e.name === 'NOVA_SERVICE_PASSWORD').valueFrom.secretKeyRef;
    expect(ref.name).toBe(secret.metadata.name);
    expect(Object.keys(secret.stringData)).toContain(ref.key);
    const volume = pod.volumes.find((v: Doc) => v.configMap?.name === configMap.metadata.name);
    const mount = proxy.volumeMounts.find((m: Doc) => m.name === volume.name);
    // The image reads /etc/keystone-auth-proxy/config.yaml (its CMD).
    expect([mount.mountPath, mount.readOnly]).toEqual(['/etc/keystone-auth-proxy', true]);
  });

  it('probes the admin listener and exposes the proxy port, Nova only on loopback', () => {
    const port = (name: string) => proxy.ports.find((p: Doc) => p.name === name).containerPort;
    expect(port('api')).toBe(config.listen?.port);
    expect(port('admin')).toBe(config.admin_listen.port);
    expect(config.admin_listen.host).toBe('0.0.0.0'); // the kubelet probes the pod's IP
    expect(proxy.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
    expect(proxy.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    expect(new URL(config.upstream?.url ?? '').hostname).toBe('127.0.0.1');
    const service = byKind(all, 'Service');
    expect(service.spec.ports.map((p: Doc) => p.targetPort)).toEqual(['api']);
  });

  it('gives the kubelet more time than preStop plus the drain', () => {
    const [command, seconds] = proxy.lifecycle.preStop.exec.command as [string, string];
    expect(command).toBe('sleep');
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(
      Number(seconds) + config.shutdown.grace_period_seconds,
    );
  });

  it('runs restricted: non-root, read-only root, no capabilities, RuntimeDefault seccomp, limits set', () => {
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    for (const container of pod.containers) {
      expect(container.securityContext, container.name).toEqual({
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ['ALL'] },
      });
      expect(container.resources.limits, container.name).toMatchObject({
        cpu: expect.any(String),
        memory: expect.any(String),
      });
    }
  });
});
