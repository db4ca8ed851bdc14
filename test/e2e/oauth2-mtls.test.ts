/**
 * `filter: oauth2_mtls_token` through the real CLI with certificates openssl makes in the test and token bodies
 * from the Keystone emulator (Keystone 22 cannot mint certificate-bound tokens): the Bearer token must be bound
 * (`oauth2_credential["x5t#S256"]`, Keystone's or RFC 8705's encoding) to the client certificate of the proxy's
 * own mutual-TLS listener, or of a trusted ingress header when `client_certificate_header` is set.
 */

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keystoneThumbprint, pemOf, rfc8705Thumbprint } from '../../src/auth/certificate-binding.js';
import { httpsGet, type Issued, opensslAvailable, TestPki } from '../helpers/certificates.js';
import { type CliRun, cliBuilt, scrapeMetric, sidecarYaml, startCli, writeConfig } from '../helpers/cli.js';
import { listen, type Running } from '../helpers/http.js';
import { fixtures, type KeystoneEmulator, startKeystoneEmulator } from '../helpers/keystone-emulator.js';
import { createUpstream } from '../helpers/upstream.js';

const { users, projects, roles } = fixtures;
const ENV = { TEST_PROXY_PASSWORD: users.proxy.password as string };
const INGRESS_HEADER = 'ssl-client-cert';

const derOf = (pair: Issued): Buffer => new X509Certificate(readFileSync(pair.cert)).raw;

describe.skipIf(!cliBuilt() || !opensslAvailable())('filter: oauth2_mtls_token (real CLI)', () => {
  let pki: TestPki;
  let keystone: KeystoneEmulator;
  let upstream: Running;
  let client: Issued;
  let other: Issued;
  let keystoneBound: string;
  let rfcBound: string;
  let unbound: string;

  const issue = (certThumbprint?: string): string =>
    keystone.issueToken({
      user: users.demo,
      scope: { project: projects.demo },
      roles: [roles.member],
      ...(certThumbprint === undefined ? {} : { certThumbprint }),
    });

  const yaml = (listenLine: string, authtoken: string[] = []): string => {
    const shared = sidecarYaml({
      keystoneUrl: keystone.url,
      upstreamUrl: upstream.url,
      responseTimeoutSeconds: 5,
      keystoneTimeoutSeconds: 1,
      authtoken: ['revocation_poll_interval_seconds: 0', ...authtoken],
      rest: 'forward_auth: { enabled: true, path: /auth }\nlog: { level: info }\n',
    });
    const kept = shared
      .split('\n')
      .filter((line) => !line.startsWith('listen:'))
      .join('\n');
    return `workers: 1\nfilter: oauth2_mtls_token\n${listenLine}\n${kept}`;
  };

  beforeAll(async () => {
    pki = new TestPki();
    client = pki.issue('bound-client', { cn: 'tacker', client: true });
    other = pki.issue('other-client', { cn: 'tacker', client: true });
    keystone = await startKeystoneEmulator();
    upstream = await listen(createUpstream({ upgrades: 0, lastUpgradeHeaders: undefined }));
    keystoneBound = issue(keystoneThumbprint(pemOf(derOf(client))));
    rfcBound = issue(rfc8705Thumbprint(derOf(client)));
    unbound = issue();
  });
  afterAll(async () => {
    await upstream?.close();
    await keystone?.close();
  });

  describe('the certificate of the proxy’s own mutual-TLS listener', () => {
    let proxy: CliRun;
    let server: Issued;
    beforeAll(async () => {
      server = pki.issue('proxy');
      const listenLine = `listen: { host: 127.0.0.1, port: 0, tls: { certfile: ${server.cert}, keyfile: ${server.key}, client_cafile: ${pki.ca.cert}, client_auth: optional } }`;
      proxy = await startCli(['--config', writeConfig(yaml(listenLine))], ENV);
    });
    afterAll(() => proxy?.stop());

    const get = (token: string, pair: Issued | undefined) =>
      httpsGet(`${proxy.url}/v1/things`, {
        ca: pki.ca.cert,
        client: pair,
        headers: { authorization: `Bearer ${token}`, 'x-roles': 'admin' },
      });

    it("a token bound to the client's certificate, in Keystone's or RFC 8705's encoding → 200, twice (cached)", async () => {
      for (const token of [keystoneBound, rfcBound, keystoneBound]) {
        const answer = await get(token, client);
        expect(answer.status).toBe(200);
        const seen = JSON.parse(answer.text) as { headers: Record<string, string> };
        expect(seen.headers['x-user-id']).toBe(users.demo.id);
        expect(seen.headers['x-roles']).toBe('member');
        expect(seen.headers['x-identity-status']).toBeUndefined();
      }
    });

    it('the same token from another certificate of the same CA, or without one → 401; a plain token → 401', async () => {
      expect((await get(keystoneBound, other)).status).toBe(401);
      expect((await get(keystoneBound, undefined)).status).toBe(401);
      expect((await get(unbound, client)).status).toBe(401);
      expect(
        await scrapeMetric(
          proxy.adminUrl,
          'keystone_auth_proxy_auth_decisions_total{result="certificate_mismatch"}',
        ),
      ).toBe(2);
      expect(
        await scrapeMetric(
          proxy.adminUrl,
          'keystone_auth_proxy_auth_decisions_total{result="certificate_missing"}',
        ),
      ).toBe(1);
    });
  });

  describe('behind a TLS-terminating ingress: client_certificate_header', () => {
    let proxy: CliRun;
    beforeAll(async () => {
      const listenLine = 'listen: { host: 127.0.0.1, port: 0 }';
      proxy = await startCli(
        ['--config', writeConfig(yaml(listenLine, [`client_certificate_header: ${INGRESS_HEADER}`]))],
        ENV,
      );
    });
    afterAll(() => proxy?.stop());

    const escaped = (pair: Issued): string => encodeURIComponent(readFileSync(pair.cert, 'utf8'));
    const status = async (headers: Record<string, string>, url = `${proxy.url}/v1/things`) =>
      (await fetch(url, { headers })).status;

    it("nginx's escaped PEM of the bound certificate → 200; another certificate, none or junk → 401", async () => {
      const bearer = { authorization: `Bearer ${keystoneBound}` };
      expect(await status({ ...bearer, [INGRESS_HEADER]: escaped(client) })).toBe(200);
      expect(await status({ ...bearer, [INGRESS_HEADER]: derOf(client).toString('base64') })).toBe(200);
      expect(await status({ ...bearer, [INGRESS_HEADER]: escaped(other) })).toBe(401);
      expect(await status(bearer)).toBe(401);
      expect(await status({ ...bearer, [INGRESS_HEADER]: 'junk' })).toBe(401);
    });

    it('forward-auth reads the same header', async () => {
      const url = proxy.forwardAuthUrl as string;
      const headers = { authorization: `Bearer ${rfcBound}`, 'x-original-uri': '/v1/x' };
      expect(await status({ ...headers, [INGRESS_HEADER]: escaped(client) }, url)).toBe(200);
      expect(await status({ ...headers, [INGRESS_HEADER]: escaped(other) }, url)).toBe(401);
    });
  });
});
