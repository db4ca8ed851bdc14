/**
 * deploy/kubernetes/sidecar.yaml made playable by `podman kube play` on one machine: only what a laptop cannot
 * have is replaced (images, ports, Keystone); everything else is the committed manifest.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { ROOT } from '../helpers/cli.js';
import { fixtures } from '../helpers/keystone-emulator.js';
import { BASE_IMAGE, IMAGE } from './podman.js';

export const MANIFEST = join(ROOT, 'deploy', 'kubernetes', 'sidecar.yaml');

/** The Nova-like API: answers every path with what it was told about the caller (the proxy's headers). */
const NOVA_STUB = `
const port = Number(process.env.NOVA_PORT);
require('node:http').createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ servers: [], path: req.url, user: req.headers['x-user-id'] ?? null }));
}).listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

export interface Ports {
  readonly api: number;
  readonly admin: number;
  readonly nova: number;
}

// biome-ignore lint/suspicious/noExplicitAny: edits of parsed Kubernetes YAML, checked by podman itself
type Doc = Record<string, any>;

export interface PodmanVariant {
  /** The YAML to play: the Deployment and its ConfigMap. */
  readonly yaml: string;
  /** The Secret's data as JSON (key: base64 value), for `podman secret create <secretName>`. */
  readonly secretJson: string;
  readonly secretName: string;
}

/**
 * The committed manifest with images, ports and Keystone replaced, ready for `podman kube play`. podman 4.3
 * stores a played Secret as YAML and then fails to read it back as JSON for secretKeyRef ("is not valid JSON"),
 * so the Secret goes in with `podman secret create` instead, as the JSON map of its `data`, under a name of this
 * run.
 */
export function podmanVariant(keystoneUrl: string, ports: Ports, name: string): PodmanVariant {
  const secretName = `${name}-auth`;
  let secretJson = '';
  const docs = parseAllDocuments(readFileSync(MANIFEST, 'utf8')).map((d) => d.toJS() as Doc);
  for (const doc of docs) {
    doc.metadata.name = doc.kind === 'Deployment' ? name : doc.metadata.name;
    if (doc.kind === 'Secret') {
      doc.metadata.name = secretName;
      // podman 4.3 reads a secretKeyRef's secret as a JSON map of key to base64 value (a Secret's `data` alone).
      const data: Record<string, string> = {};
      for (const [key, value] of Object.entries(doc.stringData as Record<string, string>)) {
        const plain = key === 'nova-service-password' ? (fixtures.users.proxy.password as string) : value;
        data[key] = Buffer.from(plain).toString('base64');
      }
      secretJson = JSON.stringify(data);
    }
    if (doc.kind === 'ConfigMap') {
      const config = parse(doc.data['config.yaml']) as Doc;
      config.listen = { host: '127.0.0.1', port: ports.api };
      config.admin_listen = { host: '127.0.0.1', port: ports.admin };
      config.upstream.url = `http://127.0.0.1:${ports.nova}`;
      Object.assign(config.keystone_authtoken, {
        auth_url: keystoneUrl,
        username: 'proxy',
        service_type: 'echo',
      });
      doc.data['config.yaml'] = stringify(config);
    }
    if (doc.kind !== 'Deployment') continue;
    doc.spec.replicas = 1;
    const pod = doc.spec.template.spec;
    // No pod network here (no CNI bridge): the pod shares the host's, as the Keystone emulator does.
    pod.hostNetwork = true;
    // and podman refuses port mappings on the host's network: the ports are the config's.
    for (const container of pod.containers) delete container.ports;
    for (const container of pod.containers) {
      if (container.name === 'keystone-auth-proxy') {
        container.image = IMAGE;
        for (const variable of container.env) {
          if (variable.valueFrom?.secretKeyRef !== undefined)
            variable.valueFrom.secretKeyRef.name = secretName;
        }
        container.env.push({ name: 'HEALTHCHECK_URL', value: `http://127.0.0.1:${ports.admin}/healthz` });
        for (const probe of [container.livenessProbe, container.readinessProbe])
          probe.httpGet.port = ports.admin;
      } else {
        container.image = BASE_IMAGE;
        // One line: Go's YAML parser (podman) refuses the folded scalar a multi-line script becomes.
        container.command = ['node', '-e', NOVA_STUB.trim().replace(/\n\s*/g, ' ')];
        container.env = [{ name: 'NOVA_PORT', value: String(ports.nova) }];
      }
    }
  }
  // podman has no Services: the pod's own port is what a Service would target.
  const yaml = docs
    .filter((doc) => doc.kind !== 'Service' && doc.kind !== 'Secret')
    .map((doc) => stringify(doc))
    .join('---\n');
  return { yaml, secretJson, secretName };
}
