/** The proxy configuration the benchmarks run against the Keystone emulator (its `proxy` service account). */
export function emulatorProxyYaml(
  keystone: string,
  upstream: string,
  ports: { listen: number; admin: number },
  extra: string,
): string {
  return `listen: { host: 127.0.0.1, port: ${ports.listen} }
upstream: { url: "${upstream}" }
admin_listen: { host: 127.0.0.1, port: ${ports.admin} }
keystone_authtoken:
  www_authenticate_uri: "${keystone}"
  auth_url: "${keystone}"
  username: proxy
  password: proxy-secret
  user_domain_name: Default
  project_name: service
  project_domain_name: Default
${extra}
`;
}
