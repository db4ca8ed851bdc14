/**
 * The reference: keystonemiddleware's auth_token (Debian's python3-keystonemiddleware) before a WSGI app that
 * echoes the request headers it received, served by uwsgi on loopback. The differential suite sends the same
 * requests here and through our CLI.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const UWSGI = '/usr/bin/uwsgi';
const KSM_PACKAGE = '/usr/lib/python3/dist-packages/keystonemiddleware/auth_token/__init__.py';

/** uwsgi with its python3 plugin, and Debian's keystonemiddleware for Debian's python. */
export function ksmAvailable(): boolean {
  return (
    existsSync(UWSGI) && existsSync('/usr/lib/uwsgi/plugins/python3_plugin.so') && existsSync(KSM_PACKAGE)
  );
}

type OptionValue = string | number | boolean | readonly string[];

/**
 * `[keystone_authtoken]` options. `service_token_roles_required` is mandatory: 10.1 defaults it to false, we
 * default it to true, so a suite that left it out would compare two different settings.
 */
export type KsmOptions = Readonly<Record<string, OptionValue>> & {
  readonly service_token_roles_required: boolean;
};

/** The proxy's own account and where Keystone is, shared by both sides of a comparison. */
export interface KsmCredentials {
  readonly authUrl: string;
  readonly username: string;
  readonly password: string;
  readonly projectName: string;
  readonly userDomainName?: string;
  readonly projectDomainName?: string;
  readonly wwwAuthenticateUri: string;
  readonly serviceType: string;
}

export interface RunningKsm {
  readonly url: string;
  /** What uwsgi and keystonemiddleware wrote (bounded), for failure messages. */
  readonly output: () => string;
  stop(): Promise<void>;
}

/** The `[keystone_authtoken]` section both sides get: credentials first, then the option set. */
export function authTokenOptions(
  credentials: KsmCredentials,
  options: KsmOptions,
): Record<string, OptionValue> {
  return {
    auth_type: 'password',
    auth_url: credentials.authUrl,
    username: credentials.username,
    password: credentials.password,
    user_domain_name: credentials.userDomainName ?? 'Default',
    project_name: credentials.projectName,
    project_domain_name: credentials.projectDomainName ?? 'Default',
    www_authenticate_uri: credentials.wwwAuthenticateUri,
    service_type: credentials.serviceType,
    ...options,
  };
}

function iniValue(value: OptionValue): string {
  if (Array.isArray(value)) return value.join(',');
  const text = String(value);
  if (/[\n\r]/.test(text)) throw new Error(`option value with a line break: ${JSON.stringify(text)}`);
  return text;
}

/** oslo.config ini: `key = value`, lists comma-separated. */
export function ksmConf(section: Record<string, OptionValue>): string {
  const lines = Object.entries(section).map(([key, value]) => `${key} = ${iniValue(value)}`);
  return `[DEFAULT]\n\n[keystone_authtoken]\n${lines.join('\n')}\n`;
}

/**
 * The WSGI entry point. The echo app turns `HTTP_X_USER_ID` back into `X-User-Id`; keystonemiddleware leaves
 * headers it "unsets" in the environ as None, which an HTTP hop would drop, so None values are left out.
 */
export type KsmFilter = 'auth_token' | 'oauth2_token';

/** The paste filter's class, under the one name the WSGI file uses. */
const FILTER_IMPORTS: Record<KsmFilter, string> = {
  auth_token: 'from keystonemiddleware.auth_token import AuthProtocol',
  oauth2_token: 'from keystonemiddleware.oauth2_token import OAuth2Protocol as AuthProtocol',
};

export function wsgiFile(confFile: string, filter: KsmFilter = 'auth_token'): string {
  return `import http
import json
import re

${FILTER_IMPORTS[filter]}

STATUS = re.compile(r'^/status/(\\d{3})')


def header_name(key):
    return '-'.join(part.capitalize() for part in key[5:].split('_'))


def echo_app(environ, start_response):
    length = int(environ.get('CONTENT_LENGTH') or 0)
    received = environ['wsgi.input'].read(length) if length > 0 else b''
    headers = {header_name(k): v for k, v in environ.items() if k.startswith('HTTP_') and v is not None}
    # CGI keeps these two out of HTTP_*.
    for key, name in (('CONTENT_TYPE', 'Content-Type'), ('CONTENT_LENGTH', 'Content-Length')):
        if environ.get(key):
            headers[name] = environ[key]
    path = environ.get('PATH_INFO', '')
    match = STATUS.match(path)
    status = int(match.group(1)) if match else 200
    body = json.dumps({
        'method': environ['REQUEST_METHOD'],
        'path': path,
        'bodyLength': len(received),
        'headers': headers,
    }).encode('utf-8')
    if environ['REQUEST_METHOD'] == 'HEAD':
        body = b''
    start_response('%d %s' % (status, http.HTTPStatus(status).phrase), [
        ('Content-Type', 'application/json'),
        ('Content-Length', str(len(body))),
    ])
    return [body]


application = AuthProtocol(echo_app, {
    'oslo_config_project': 'ksmtest',
    'oslo_config_file': ${JSON.stringify(confFile)},
})
`;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function answers(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(`${url}/`, { method: 'GET', agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(true));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

const exitedPromise = (child: ChildProcess): Promise<void> =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => child.once('exit', () => resolve()));

/**
 * Starts keystonemiddleware under uwsgi: one worker, so its in-process token cache is the only one (several
 * workers would each have their own and answer differently). Resolves once it answers HTTP.
 */
export async function startKsm(
  credentials: KsmCredentials,
  options: KsmOptions,
  startTimeoutMs = 30_000,
  filter: KsmFilter = 'auth_token',
): Promise<RunningKsm> {
  const dir = mkdtempSync(join(tmpdir(), 'ksm-'));
  const confFile = join(dir, 'ksm.conf');
  const wsgi = join(dir, 'ksm_echo.py');
  writeFileSync(confFile, ksmConf(authTokenOptions(credentials, options)), { mode: 0o600 });
  writeFileSync(wsgi, wsgiFile(confFile, filter));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;

  // Debian's python and a clean environment: a pyenv python3 on PATH, or PYTHONPATH, hides Debian's packages.
  // --http + --http-keepalive: --http-socket drops kept-alive connections, --http11-socket pins the worker.
  const child = spawn(
    '/usr/bin/env',
    [
      '-i',
      'PATH=/usr/sbin:/usr/bin:/sbin:/bin',
      `HOME=${dir}`,
      'LANG=C.UTF-8',
      UWSGI,
      '--plugins',
      'python3,http',
      '--http',
      `127.0.0.1:${port}`,
      '--http-keepalive',
      '--processes',
      '1',
      '--master',
      '--die-on-term',
      '--need-app',
      '--disable-logging',
      '--wsgi-file',
      wsgi,
    ],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = exitedPromise(child);

  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + startTimeoutMs;
  while (!(await answers(url))) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`uwsgi exited (${child.exitCode ?? child.signalCode}) before answering:\n${output}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`keystonemiddleware did not answer on ${url} within ${startTimeoutMs} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { url, output: () => output, stop };
}
