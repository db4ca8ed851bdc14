/**
 * In-process Keystone v3 emulator for integration tests.
 *
 * Answers are shaped after recorded Keystone 22 (Zed) exchanges: same key order, same timestamp format, same
 * error bodies and the same byte layout (token and discovery documents use Python's `json.dumps` separators,
 * errors use Flask's compact JSON plus a newline), so the code under test sees what a real Keystone sends.
 * Faults (status, delay, black hole, reset) can be injected per operation.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders, Server, ServerResponse } from 'node:http';
import { createServer, STATUS_CODES } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface EmulatorUser {
  id: string;
  name: string;
  domainId: string;
  domainName: string;
  password?: string;
  enabled?: boolean;
}
export interface EmulatorProject {
  id: string;
  name: string;
  domainId: string;
  domainName: string;
}
export interface EmulatorRole {
  id: string;
  name: string;
}
export interface EmulatorDomain {
  id: string;
  name: string;
}
export interface AccessRule {
  service: string;
  method: string;
  path: string;
  id?: string;
}
export interface IssueTokenInput {
  user: EmulatorUser;
  /**
   * Default: like Keystone's default project, the first project the user was granted through addUser()
   * (fixtures users are registered on start), otherwise unscoped.
   */
  scope?: { project: EmulatorProject } | { domain: EmulatorDomain } | { system: 'all' } | 'unscoped';
  /** Default [] for unscoped tokens, [member] otherwise. */
  roles?: EmulatorRole[];
  /** Default now + 1 h. Like Fernet, timestamps are truncated to whole seconds. */
  expiresAt?: Date;
  /** Default now. */
  issuedAt?: Date;
  /** Default ['password'] (['application_credential'] when appCred is set). */
  methods?: string[];
  /** restricted defaults to true (Keystone's default for new application credentials). */
  appCred?: { id: string; name: string; restricted?: boolean; accessRules?: AccessRule[] };
  /** When set, the body includes is_admin_project. */
  isAdminProject?: boolean;
  /** When set, the body includes bind. */
  bind?: Record<string, string>;
  /**
   * Keystone 2023.1+'s OAuth2 mTLS: `oauth2_credential: {"x5t#S256": …}` (Keystone 22 cannot mint these, so the
   * emulator stands in for the token body).
   */
  certThumbprint?: string;
  /** Adds OS-TRUST:trust. */
  trust?: { id: string; trustorId: string; trusteeId: string; impersonation: boolean };
}
export type Fault =
  /** Answer with this status. A string body is sent verbatim; headers override the defaults. */
  | { kind: 'status'; status: number; body?: unknown; headers?: Record<string, string>; times?: number }
  /** Answer normally after a delay. */
  | { kind: 'delay'; ms: number; times?: number }
  /** Accept the request and never answer (until stop() or close()). */
  | { kind: 'blackhole'; times?: number }
  /** Destroy the socket with a TCP RST, without answering. */
  | { kind: 'reset'; times?: number };
export type Operation = 'discovery' | 'auth' | 'validate' | 'revoke_events' | 'other';
export interface RecordedRequest {
  operation: Operation;
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string | string[] | undefined>;
  /** Date.now() when the request head arrived. */
  at: number;
  /** Raw request body, filled in once it has been read (absent for black-holed or reset requests). */
  body?: string;
}
export interface AppCredInput {
  id: string;
  name: string;
  secret: string;
  user: EmulatorUser;
  project: EmulatorProject;
  roles: EmulatorRole[];
  accessRules?: AccessRule[];
}
export interface Grant {
  project?: EmulatorProject;
  domain?: EmulatorDomain;
  system?: boolean;
  roles: EmulatorRole[];
}
export interface KeystoneEmulator {
  /** http://127.0.0.1:<port>, no trailing slash. */
  readonly url: string;
  readonly port: number;
  /** Every request received, in order (including faulted ones). */
  readonly requests: RecordedRequest[];
  count(op: Operation): number;
  /** Clear recorded requests and faults (not tokens, users or revocations). */
  reset(): void;
  /** Mint a token directly (no HTTP). */
  issueToken(input: IssueTokenInput): string;
  /** Revoke one token (by its audit id, like DELETE /v3/auth/tokens): validation now answers 404. */
  revoke(token: string): void;
  /** Revoke every token of a user issued until now (a user_id revocation event, as on disable). */
  revokeUser(userId: string): void;
  /** A fault set for one operation wins over one set for 'all'. undefined clears. */
  setFault(op: Operation | 'all', fault: Fault | undefined): void;
  /**
   * Register (or replace) a password user. Re-registering a user as disabled or with another password makes a
   * user_id revocation event, as Keystone does.
   */
  addUser(user: EmulatorUser, grants: Grant[]): void;
  addAppCred(cred: AppCredInput): void;
  /** Stop listening (connections refused) and drop open connections, but remember state. */
  stop(): Promise<void>;
  /** Listen again on the same port. */
  start(): Promise<void>;
  /** Stop and destroy all sockets (including black-holed ones). Final. */
  close(): Promise<void>;
}
export interface CatalogService {
  type: string;
  name: string;
  endpoints: { interface: 'public' | 'internal' | 'admin'; url: string; region?: string }[];
}
export interface EmulatorOptions {
  /** Default 0 (ephemeral). */
  port?: number;
  /** Catalog services besides identity; replaces the default [fixtures.services.echo]. */
  catalog?: CatalogService[];
  /** URL published for the identity endpoints (default `${url}/v3`). */
  identityUrl?: string;
  /** Default all three. */
  identityInterfaces?: ('public' | 'internal' | 'admin')[];
  /** Default 'RegionOne'. */
  region?: string;
  /** Roles allowed to validate others' tokens, default ['service', 'admin']. */
  serviceRoles?: string[];
  /** Default true, like Keystone. */
  accessRulesRequireHeader?: boolean;
}

export interface EmulatorFixtures {
  roles: { member: EmulatorRole; reader: EmulatorRole; service: EmulatorRole; admin: EmulatorRole };
  domains: { default: EmulatorDomain; d2: EmulatorDomain };
  users: { demo: EmulatorUser; proxy: EmulatorUser; d2user: EmulatorUser; admin: EmulatorUser };
  projects: {
    demo: EmulatorProject;
    service: EmulatorProject;
    d2project: EmulatorProject;
    admin: EmulatorProject;
  };
  services: { echo: CatalogService };
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

const roleFixtures = {
  member: { id: 'd4f0de91e81049e7bc6d8793ee96d039', name: 'member' },
  reader: { id: '3d3c790127bb4266ac5b2d6b0e882f7a', name: 'reader' },
  service: { id: '07cadc75e81b485f9c460af646747fe7', name: 'service' },
  admin: { id: 'f310b47dbb5442fdadd8ada57fa464bb', name: 'admin' },
};
const d2 = { id: '398d17f862324376b87d511b263d0e2f', name: 'd2' };

/** Ids, names and passwords as in the recorded samples; frozen so no test leaks changes into another. */
export const fixtures: EmulatorFixtures = deepFreeze({
  roles: roleFixtures,
  domains: { default: { id: 'default', name: 'Default' }, d2 },
  users: {
    demo: {
      id: '73eebbe1b2c44ed285d2adc862f290a3',
      name: 'demo',
      domainId: 'default',
      domainName: 'Default',
      password: 'demo-secret',
    },
    proxy: {
      id: '154093c7269c4bf185ef4077a5bb6688',
      name: 'proxy',
      domainId: 'default',
      domainName: 'Default',
      password: 'proxy-secret',
    },
    d2user: {
      id: '7b59640402784e189e23b4d908161cb1',
      name: 'd2user',
      domainId: d2.id,
      domainName: d2.name,
      password: 'd2-secret',
    },
    admin: {
      id: '107496a927bb4b42b2ce2c96b95b329a',
      name: 'admin',
      domainId: 'default',
      domainName: 'Default',
      password: 'admin-secret',
    },
  },
  projects: {
    demo: {
      id: '6b3aec62ae6a452888d9d770c535e596',
      name: 'demo',
      domainId: 'default',
      domainName: 'Default',
    },
    service: {
      id: 'c98bd9a5de464709899b0ccc627d3bc2',
      name: 'service',
      domainId: 'default',
      domainName: 'Default',
    },
    d2project: {
      id: 'aca741746beb443da15276ea80bd6ece',
      name: 'd2project',
      domainId: d2.id,
      domainName: d2.name,
    },
    admin: {
      id: 'ed1c293a185b4bd28de5a49a5744ce2e',
      name: 'admin',
      domainId: 'default',
      domainName: 'Default',
    },
  },
  services: {
    echo: {
      type: 'echo',
      name: 'echo',
      endpoints: [{ interface: 'public', url: 'http://127.0.0.1:8081', region: 'RegionOne' }],
    },
  },
});

// ------------------------------------------------------------
// Internals

type Scope =
  | { kind: 'project'; project: EmulatorProject }
  | { kind: 'domain'; domain: EmulatorDomain }
  | { kind: 'system' }
  | { kind: 'unscoped' };

interface TokenRecord {
  id: string;
  user: EmulatorUser;
  scope: Scope;
  roles: EmulatorRole[];
  methods: string[];
  auditIds: string[];
  /** Whole seconds, as in a Fernet payload. */
  issuedAt: number;
  expiresAt: number;
  /** Millisecond issue time for user revocation events, so a token minted right after one stays valid. */
  mintedAt: number;
  appCred?: { id: string; name: string; restricted: boolean; accessRules: Required<AccessRule>[] };
  isAdminProject?: boolean;
  bind?: Record<string, string>;
  certThumbprint?: string;
  trust?: { id: string; trustorId: string; trusteeId: string; impersonation: boolean };
  revoked: boolean;
}

interface StoredAppCred {
  id: string;
  name: string;
  secret: string;
  user: EmulatorUser;
  project: EmulatorProject;
  roles: EmulatorRole[];
  accessRules: Required<AccessRule>[];
}

type RevokeEvent = { auditId: string; at: number } | { userId: string; at: number };

interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: string;
}

const ALLOW_EXPIRED_WINDOW_MS = 48 * 3600 * 1000; // Keystone's [token] allow_expired_window default
const UNAUTHORIZED_MESSAGE = 'The request you have made requires authentication.';
const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
};

/** Python's json.dumps(ensure_ascii=True) layout, which Keystone uses for tokens and version documents. */
function pyJson(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (typeof value === 'string') return pyString(value);
  if (typeof value === 'object') {
    const parts: string[] = [];
    for (const [key, child] of Object.entries(value)) {
      if (child !== undefined) parts.push(`${pyString(key)}: ${pyJson(child)}`);
    }
    return `{${parts.join(', ')}}`;
  }
  return JSON.stringify(value);
}

function pyString(s: string): string {
  return JSON.stringify(s).replace(
    /[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

function isoTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19)}.000000Z`;
}

function floorSeconds(ms: number): number {
  return Math.floor(ms / 1000) * 1000;
}

function hexId(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\u0000')).digest('hex').slice(0, 32);
}

function newTokenId(): string {
  // 'gAAAAAB' is how every Fernet token starts (version byte + timestamp); the rest is opaque here.
  return `gAAAAAB${randomBytes(132).toString('base64url')}`;
}

function newAuditId(): string {
  return randomBytes(16).toString('base64url');
}

function asObject(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

function asString(value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined;
}

/** oslo strutils.bool_from_string, which Keystone uses for allow_expired. */
function truthy(value: string | null): boolean {
  return value !== null && ['1', 't', 'true', 'on', 'y', 'yes'].includes(value.trim().toLowerCase());
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function classify(method: string, path: string): Operation {
  const read = method === 'GET' || method === 'HEAD';
  if (read && (path === '/' || path === '/v3')) return 'discovery';
  if (path === '/v3/auth/tokens') {
    if (method === 'POST') return 'auth';
    if (read) return 'validate';
    return 'other';
  }
  if (path === '/v3/OS-REVOKE/events') return 'revoke_events';
  return 'other';
}

function normalizePath(pathname: string): string {
  return pathname.length > 1 && pathname.endsWith('/') ? pathname.slice(0, -1) : pathname;
}

function dedupeRoles(roles: EmulatorRole[]): EmulatorRole[] {
  const seen = new Set<string>();
  return roles.filter((r) => !seen.has(r.id) && seen.add(r.id));
}

function withRuleIds(rules: AccessRule[]): Required<AccessRule>[] {
  return rules.map((r) => ({ ...r, id: r.id ?? hexId('access_rule', r.service, r.method, r.path) }));
}

function errorReply(status: number, message: string, headers?: Record<string, string>): Reply {
  const title = TITLES[status] ?? STATUS_CODES[status] ?? 'Error';
  // Flask's jsonify: compact separators and a trailing newline.
  const body = `${JSON.stringify({ error: { code: status, message, title } })}\n`;
  return headers ? { status, headers, body } : { status, body };
}

function forbidden(action: string): Reply {
  return errorReply(403, `You are not authorized to perform the requested action: ${action}.`);
}

function scopeEquals(a: Scope, b: Scope): boolean {
  if (a.kind === 'project' && b.kind === 'project') return a.project.id === b.project.id;
  if (a.kind === 'domain' && b.kind === 'domain') return a.domain.id === b.domain.id;
  return a.kind === b.kind;
}

class Emulator implements KeystoneEmulator {
  readonly requests: RecordedRequest[] = [];
  private server: Server | undefined;
  private boundPort: number;
  private closed = false;
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly faults = new Map<Operation | 'all', Fault>();
  private readonly tokens = new Map<string, TokenRecord>();
  private readonly users = new Map<string, { user: EmulatorUser; grants: Grant[] }>();
  private readonly appCreds = new Map<string, StoredAppCred>();
  private readonly revokeEvents: RevokeEvent[] = [];
  private readonly options: EmulatorOptions;
  private readonly serviceRoles: string[];

  constructor(options: EmulatorOptions) {
    this.options = options;
    this.boundPort = options.port ?? 0;
    this.serviceRoles = options.serviceRoles ?? ['service', 'admin'];
    const { roles, users, projects } = fixtures;
    this.addUser(users.proxy, [{ project: projects.service, roles: [roles.service] }]);
    this.addUser(users.demo, [{ project: projects.demo, roles: [roles.member, roles.reader] }]);
    this.addUser(users.d2user, [
      { project: projects.d2project, roles: [roles.member, roles.reader] },
      { domain: fixtures.domains.d2, roles: [roles.member, roles.reader] },
    ]);
    this.addUser(users.admin, [
      { project: projects.admin, roles: [roles.member, roles.admin, roles.reader] },
      { system: true, roles: [roles.admin, roles.member, roles.reader] },
    ]);
  }

  get url(): string {
    return `http://127.0.0.1:${this.boundPort}`;
  }

  get port(): number {
    return this.boundPort;
  }

  count(op: Operation): number {
    return this.requests.filter((r) => r.operation === op).length;
  }

  reset(): void {
    // Keep the array identity: tests may hold a reference to it.
    this.requests.length = 0;
    this.faults.clear();
  }

  setFault(op: Operation | 'all', fault: Fault | undefined): void {
    if (fault === undefined || (fault.times !== undefined && fault.times <= 0)) {
      this.faults.delete(op);
    } else {
      this.faults.set(op, { ...fault });
    }
  }

  addUser(user: EmulatorUser, grants: Grant[]): void {
    const previous = this.users.get(user.id);
    if (
      previous &&
      ((user.enabled === false && previous.user.enabled !== false) ||
        user.password !== previous.user.password)
    ) {
      this.revokeUser(user.id);
    }
    this.users.set(user.id, { user: { ...user }, grants: grants.map((g) => ({ ...g })) });
  }

  addAppCred(cred: AppCredInput): void {
    this.appCreds.set(cred.id, { ...cred, accessRules: withRuleIds(cred.accessRules ?? []) });
  }

  issueToken(input: IssueTokenInput): string {
    const now = Date.now();
    const scope = this.scopeFromInput(input);
    const unscoped = scope.kind === 'unscoped';
    const record: TokenRecord = {
      id: newTokenId(),
      user: { ...input.user },
      scope,
      roles: unscoped ? [] : [...(input.roles ?? [fixtures.roles.member])],
      methods: input.methods ?? (input.appCred ? ['application_credential'] : ['password']),
      auditIds: [newAuditId()],
      issuedAt: floorSeconds(input.issuedAt?.getTime() ?? now),
      expiresAt: floorSeconds(input.expiresAt?.getTime() ?? now + 3600_000),
      mintedAt: input.issuedAt?.getTime() ?? now,
      revoked: false,
    };
    if (input.appCred) {
      const { id, name, restricted, accessRules } = input.appCred;
      record.appCred = {
        id,
        name,
        restricted: restricted ?? true,
        accessRules: withRuleIds(accessRules ?? []),
      };
    }
    if (input.isAdminProject !== undefined) record.isAdminProject = input.isAdminProject;
    if (input.bind) record.bind = { ...input.bind };
    if (input.certThumbprint !== undefined) record.certThumbprint = input.certThumbprint;
    if (input.trust) record.trust = { ...input.trust };
    this.tokens.set(record.id, record);
    return record.id;
  }

  private scopeFromInput(input: IssueTokenInput): Scope {
    const wanted = input.scope;
    if (wanted === 'unscoped') return { kind: 'unscoped' };
    if (wanted === undefined) return this.defaultScope(input.user.id)?.scope ?? { kind: 'unscoped' };
    if ('project' in wanted) return { kind: 'project', project: wanted.project };
    if ('domain' in wanted) return { kind: 'domain', domain: wanted.domain };
    return { kind: 'system' };
  }

  revoke(token: string): void {
    const record = this.tokens.get(token);
    if (!record) throw new Error('keystone emulator: revoke() of a token it never issued');
    record.revoked = true;
    this.revokeEvents.push({ auditId: record.auditIds[0] ?? '', at: Date.now() });
  }

  revokeUser(userId: string): void {
    this.revokeEvents.push({ userId, at: Date.now() });
  }

  async start(): Promise<void> {
    if (this.closed) throw new Error('keystone emulator: start() after close()');
    if (this.server) return;
    const server = createServer((req, res) => this.onRequest(req, res));
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.boundPort, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.boundPort = (server.address() as AddressInfo).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      // Without this, keep-alive and black-holed connections would keep the server (and clients) alive.
      for (const socket of this.sockets) socket.destroy();
      this.sockets.clear();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.stop();
  }

  // ------------------------------------------------------------
  // HTTP plumbing

  private takeFault(op: Operation): Fault | undefined {
    const key = this.faults.has(op) ? op : this.faults.has('all') ? 'all' : undefined;
    if (key === undefined) return undefined;
    const fault = this.faults.get(key);
    if (fault?.times !== undefined) {
      fault.times -= 1;
      if (fault.times <= 0) this.faults.delete(key);
    }
    return fault;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const method = req.method ?? 'GET';
    const parsed = new URL(req.url ?? '/', 'http://127.0.0.1');
    const path = normalizePath(parsed.pathname);
    const record: RecordedRequest = {
      operation: classify(method, path),
      method,
      path: parsed.pathname,
      query: parsed.searchParams,
      headers: { ...req.headers },
      at: Date.now(),
    };
    this.requests.push(record);
    // Taken synchronously so concurrent requests consume `times` in arrival order.
    const fault = this.takeFault(record.operation);
    if (fault?.kind === 'reset') {
      req.socket.resetAndDestroy();
      return;
    }
    if (fault?.kind === 'blackhole') {
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => undefined);
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      record.body = body;
      if (fault?.kind === 'status') {
        this.send(res, this.statusFaultReply(fault));
      } else if (fault?.kind === 'delay') {
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          this.dispatch(req, res, method, path, parsed.searchParams, body);
        }, fault.ms);
        this.timers.add(timer);
      } else {
        this.dispatch(req, res, method, path, parsed.searchParams, body);
      }
    });
  }

  private statusFaultReply(fault: Extract<Fault, { kind: 'status' }>): Reply {
    let body: string;
    if (typeof fault.body === 'string') body = fault.body;
    else if (fault.body !== undefined) body = JSON.stringify(fault.body);
    else if (fault.status >= 400)
      body = errorReply(fault.status, STATUS_CODES[fault.status] ?? 'Error').body ?? '';
    else body = '{}';
    return fault.headers
      ? { status: fault.status, headers: fault.headers, body }
      : { status: fault.status, body };
  }

  private send(res: ServerResponse, reply: Reply): void {
    if (res.destroyed || res.headersSent) return;
    const headers: OutgoingHttpHeaders = {};
    if (reply.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = Buffer.byteLength(reply.body);
    }
    Object.assign(headers, reply.headers);
    headers.Vary = 'X-Auth-Token';
    headers['x-openstack-request-id'] = `req-${randomUUID()}`;
    res.writeHead(reply.status, headers);
    // Node drops the body of HEAD answers itself and keeps Content-Length, as Keystone does.
    res.end(reply.body);
  }

  private dispatch(
    req: IncomingMessage,
    res: ServerResponse,
    method: string,
    path: string,
    query: URLSearchParams,
    body: string,
  ): void {
    let reply: Reply;
    try {
      reply = this.route(req, method, path, query, body);
    } catch (err) {
      // An emulator bug should fail the test with a visible 500, not crash the worker.
      reply = errorReply(500, `keystone emulator error: ${String(err)}`);
    }
    this.send(res, reply);
  }

  private route(
    req: IncomingMessage,
    method: string,
    path: string,
    query: URLSearchParams,
    body: string,
  ): Reply {
    const read = method === 'GET' || method === 'HEAD';
    if (read && path === '/') return this.versionsReply();
    if (read && path === '/v3') return { status: 200, body: pyJson({ version: this.versionDocument() }) };
    if (path === '/v3/auth/tokens') {
      if (method === 'POST') return this.authenticate(body, query);
      if (read) return this.validate(req, query, method === 'HEAD');
      if (method === 'DELETE') return this.revokeByApi(req);
    }
    if (read && path === '/v3/OS-REVOKE/events') return this.listRevokeEvents(req, query);
    return errorReply(404, 'The resource could not be found.');
  }

  // ------------------------------------------------------------
  // Discovery

  private versionDocument(): Record<string, unknown> {
    return {
      id: 'v3.14',
      status: 'stable',
      updated: '2020-04-07T00:00:00Z',
      links: [{ rel: 'self', href: `${this.url}/v3/` }],
      'media-types': [{ base: 'application/json', type: 'application/vnd.openstack.identity-v3+json' }],
    };
  }

  private versionsReply(): Reply {
    return {
      status: 300,
      headers: { Location: `${this.url}/v3/` },
      body: pyJson({ versions: { values: [this.versionDocument()] } }),
    };
  }

  // ------------------------------------------------------------
  // POST /v3/auth/tokens

  private unauthorized(): Reply {
    return errorReply(401, UNAUTHORIZED_MESSAGE, { 'WWW-Authenticate': `Keystone uri="${this.url}/v3"` });
  }

  private findUser(
    ref: Record<string, unknown> | undefined,
  ): { user: EmulatorUser; grants: Grant[] } | undefined {
    if (!ref) return undefined;
    const id = asString(ref.id);
    if (id !== undefined) return this.users.get(id);
    const name = asString(ref.name);
    const domain = asObject(ref.domain);
    if (name === undefined || !domain) return undefined;
    const domainId = asString(domain.id);
    const domainName = asString(domain.name);
    for (const entry of this.users.values()) {
      const u = entry.user;
      if (u.name !== name) continue;
      if (domainId !== undefined ? u.domainId === domainId : u.domainName === domainName) return entry;
    }
    return undefined;
  }

  /** The user's first project grant: what Keystone does with a request without scope (default project). */
  private defaultScope(userId: string): { scope: Scope; roles: EmulatorRole[] } | undefined {
    const first = this.users.get(userId)?.grants.find((g) => g.project);
    return first?.project
      ? this.grantedScope(userId, { kind: 'project', project: first.project })
      : undefined;
  }

  private grantedScope(userId: string, scope: Scope): { scope: Scope; roles: EmulatorRole[] } | undefined {
    const grants = this.users.get(userId)?.grants ?? [];
    const matching = grants.filter((g) => {
      if (scope.kind === 'project') return g.project?.id === scope.project.id;
      if (scope.kind === 'domain') return g.domain?.id === scope.domain.id;
      return scope.kind === 'system' && g.system === true;
    });
    const roles = dedupeRoles(matching.flatMap((g) => g.roles));
    const first = matching[0];
    if (!first || roles.length === 0) return undefined;
    // Use the granted object so names and domains come from the grant, not from the request.
    if (first.project) return { scope: { kind: 'project', project: first.project }, roles };
    if (first.domain) return { scope: { kind: 'domain', domain: first.domain }, roles };
    return { scope: { kind: 'system' }, roles };
  }

  /** Which scope the request asks for, resolved against the user's grants; undefined means 401. */
  private requestedScope(userId: string, raw: unknown): { scope: Scope; roles: EmulatorRole[] } | undefined {
    if (raw === 'unscoped') return { scope: { kind: 'unscoped' }, roles: [] };
    if (raw === undefined || raw === null) {
      return this.defaultScope(userId) ?? { scope: { kind: 'unscoped' }, roles: [] };
    }
    const scope = asObject(raw);
    const grants = this.users.get(userId)?.grants ?? [];
    const project = asObject(scope?.project);
    if (project) {
      const id = asString(project.id);
      const name = asString(project.name);
      const domain = asObject(project.domain);
      const found = grants.find((g) => {
        const p = g.project;
        if (!p) return false;
        if (id !== undefined) return p.id === id;
        if (!domain || p.name !== name) return false;
        const domainId = asString(domain.id);
        return domainId !== undefined ? p.domainId === domainId : p.domainName === asString(domain.name);
      })?.project;
      return found ? this.grantedScope(userId, { kind: 'project', project: found }) : undefined;
    }
    const domain = asObject(scope?.domain);
    if (domain) {
      const id = asString(domain.id);
      const found = grants.find(
        (g) => g.domain && (id !== undefined ? g.domain.id === id : g.domain.name === asString(domain.name)),
      )?.domain;
      return found ? this.grantedScope(userId, { kind: 'domain', domain: found }) : undefined;
    }
    if (asObject(scope?.system)?.all === true) return this.grantedScope(userId, { kind: 'system' });
    return undefined;
  }

  private isEnabled(user: EmulatorUser): boolean {
    return (this.users.get(user.id)?.user ?? user).enabled !== false;
  }

  private authenticate(rawBody: string, query: URLSearchParams): Reply {
    let parsed: unknown;
    try {
      parsed = JSON.parse(rawBody);
    } catch {
      return errorReply(400, 'The request body is not valid JSON.');
    }
    const auth = asObject(asObject(parsed)?.auth);
    const identity = asObject(auth?.identity);
    const methods = identity?.methods;
    if (!auth || !identity || !Array.isArray(methods)) {
      return errorReply(400, 'Invalid input for field identity/methods.');
    }
    const now = Date.now();
    let record: TokenRecord | undefined;
    if (methods.includes('password')) {
      record = this.passwordAuth(identity, auth.scope, now);
    } else if (methods.includes('application_credential')) {
      record = this.appCredAuth(identity, now);
    } else if (methods.includes('token')) {
      record = this.tokenAuth(identity, auth.scope, now);
    }
    if (!record) return this.unauthorized();
    this.tokens.set(record.id, record);
    return {
      status: 201,
      headers: { 'X-Subject-Token': record.id },
      body: pyJson({ token: this.renderToken(record, !query.has('nocatalog')) }),
    };
  }

  private newRecord(user: EmulatorUser, scope: Scope, roles: EmulatorRole[], now: number): TokenRecord {
    return {
      id: newTokenId(),
      user: { ...user },
      scope,
      roles,
      methods: ['password'],
      auditIds: [newAuditId()],
      issuedAt: floorSeconds(now),
      expiresAt: floorSeconds(now) + 3600_000,
      mintedAt: now,
      revoked: false,
    };
  }

  private passwordAuth(
    identity: Record<string, unknown>,
    rawScope: unknown,
    now: number,
  ): TokenRecord | undefined {
    const userRef = asObject(asObject(identity.password)?.user);
    const entry = this.findUser(userRef);
    const password = asString(userRef?.password);
    if (
      !entry ||
      entry.user.enabled === false ||
      password === undefined ||
      entry.user.password !== password
    ) {
      return undefined;
    }
    const scoped = this.requestedScope(entry.user.id, rawScope);
    return scoped ? this.newRecord(entry.user, scoped.scope, scoped.roles, now) : undefined;
  }

  private appCredAuth(identity: Record<string, unknown>, now: number): TokenRecord | undefined {
    const ref = asObject(identity.application_credential);
    if (!ref) return undefined;
    const id = asString(ref.id);
    let cred: StoredAppCred | undefined;
    if (id !== undefined) {
      cred = this.appCreds.get(id);
    } else {
      const owner = this.findUser(asObject(ref.user));
      cred = [...this.appCreds.values()].find((c) => c.name === ref.name && c.user.id === owner?.user.id);
    }
    if (!cred || cred.secret !== asString(ref.secret) || !this.isEnabled(cred.user)) return undefined;
    const record = this.newRecord(
      cred.user,
      { kind: 'project', project: cred.project },
      [...cred.roles],
      now,
    );
    record.methods = ['application_credential'];
    record.appCred = { id: cred.id, name: cred.name, restricted: true, accessRules: cred.accessRules };
    return record;
  }

  private tokenAuth(
    identity: Record<string, unknown>,
    rawScope: unknown,
    now: number,
  ): TokenRecord | undefined {
    const parent = this.tokens.get(asString(asObject(identity.token)?.id) ?? '');
    // Keystone refuses to rescope application-credential and trust tokens.
    if (!parent || this.invalidReason(parent, 0) || parent.appCred || parent.trust) return undefined;
    let scoped: { scope: Scope; roles: EmulatorRole[] } | undefined;
    if (this.users.has(parent.user.id)) {
      scoped = this.requestedScope(parent.user.id, rawScope);
    } else if (rawScope === undefined || rawScope === null || rawScope === 'unscoped') {
      scoped = { scope: { kind: 'unscoped' }, roles: [] };
    } else {
      // A user minted with issueToken() has no grants: allow re-requesting the parent's own scope.
      const wanted = this.scopeFromRequest(rawScope);
      if (wanted && scopeEquals(wanted, parent.scope)) scoped = { scope: parent.scope, roles: parent.roles };
    }
    if (!scoped) return undefined;
    const record = this.newRecord(parent.user, scoped.scope, scoped.roles, now);
    record.methods = ['token', ...parent.methods.filter((m) => m !== 'token')];
    record.auditIds = [record.auditIds[0] ?? newAuditId(), parent.auditIds.at(-1) ?? ''];
    record.expiresAt = parent.expiresAt;
    return record;
  }

  private scopeFromRequest(raw: unknown): Scope | undefined {
    const scope = asObject(raw);
    const projectId = asString(asObject(scope?.project)?.id);
    if (projectId !== undefined) {
      return { kind: 'project', project: { id: projectId, name: '', domainId: '', domainName: '' } };
    }
    const domainId = asString(asObject(scope?.domain)?.id);
    if (domainId !== undefined) return { kind: 'domain', domain: { id: domainId, name: '' } };
    if (asObject(scope?.system)?.all === true) return { kind: 'system' };
    return undefined;
  }

  // ------------------------------------------------------------
  // Token checks and rendering

  /** Why a token is not valid now (undefined when it is), given the allow_expired window. */
  private invalidReason(record: TokenRecord, windowMs: number): string | undefined {
    const userRevoked = this.revokeEvents.some(
      (e) => 'userId' in e && e.userId === record.user.id && record.mintedAt <= e.at,
    );
    if (record.revoked || userRevoked || !this.isEnabled(record.user)) return 'Failed to validate token';
    if (Date.now() >= record.expiresAt + windowMs) return 'Failed to validate token';
    return undefined;
  }

  /** The caller's X-Auth-Token, when it is a currently valid token. */
  private caller(req: IncomingMessage): TokenRecord | undefined {
    const id = headerValue(req, 'x-auth-token')?.trim();
    const record = id ? this.tokens.get(id) : undefined;
    return record && !this.invalidReason(record, 0) ? record : undefined;
  }

  private subject(id: string, windowMs: number): TokenRecord | Reply {
    const record = this.tokens.get(id);
    if (!record) return errorReply(404, 'Could not recognize Fernet token');
    const reason = this.invalidReason(record, windowMs);
    return reason ? errorReply(404, reason) : record;
  }

  private hasRole(record: TokenRecord, names: string[]): boolean {
    return record.roles.some((r) => names.includes(r.name));
  }

  private validate(req: IncomingMessage, query: URLSearchParams, head: boolean): Reply {
    const caller = this.caller(req);
    if (!caller) return this.unauthorized();
    const subjectId = headerValue(req, 'x-subject-token')?.trim();
    const windowMs = truthy(query.get('allow_expired')) ? ALLOW_EXPIRED_WINDOW_MS : 0;
    // Keystone validates the subject while building the policy target, so its 404s come before any 403.
    let subject: TokenRecord | undefined;
    if (subjectId) {
      const found = this.subject(subjectId, windowMs);
      if (!('id' in found)) return found;
      subject = found;
    }
    // HEAD is identity:check_token, whose default policy lacks the service role.
    const allowedRoles = head ? this.serviceRoles.filter((r) => r !== 'service') : this.serviceRoles;
    if (!this.hasRole(caller, allowedRoles) && subject?.user.id !== caller.user.id) {
      return forbidden(head ? 'identity:check_token' : 'identity:validate_token');
    }
    if (!subject) return errorReply(404, 'No token in the request');
    if (
      subject.appCred &&
      subject.appCred.accessRules.length > 0 &&
      this.options.accessRulesRequireHeader !== false
    ) {
      const support = Number.parseFloat(headerValue(req, 'openstack-identity-access-rules') ?? '');
      if (!(support >= 1)) return errorReply(404, 'Failed to validate token');
    }
    return {
      status: 200,
      headers: { 'X-Subject-Token': subject.id },
      body: pyJson({ token: this.renderToken(subject, !query.has('nocatalog')) }),
    };
  }

  private revokeByApi(req: IncomingMessage): Reply {
    const caller = this.caller(req);
    if (!caller) return this.unauthorized();
    const subjectId = headerValue(req, 'x-subject-token')?.trim();
    if (!subjectId) return errorReply(404, 'No token in the request');
    const found = this.subject(subjectId, 0);
    if (!('id' in found)) return found;
    if (!this.hasRole(caller, ['admin']) && found.user.id !== caller.user.id) {
      return forbidden('identity:revoke_token');
    }
    this.revoke(found.id);
    return { status: 204 };
  }

  private listRevokeEvents(req: IncomingMessage, query: URLSearchParams): Reply {
    const caller = this.caller(req);
    if (!caller) return this.unauthorized();
    if (!this.hasRole(caller, this.serviceRoles)) return forbidden('identity:list_revoke_events');
    const sinceRaw = query.get('since');
    let since = Number.NEGATIVE_INFINITY;
    if (sinceRaw !== null) {
      since = Date.parse(sinceRaw);
      if (Number.isNaN(since)) return errorReply(400, `Invalid since parameter: ${sinceRaw}`);
    }
    // Keystone keeps one-second precision and filters strictly (revoked_at > since).
    const events = this.revokeEvents
      .filter((e) => floorSeconds(e.at) > since)
      .map((e) => {
        const when = isoTime(e.at);
        return 'auditId' in e
          ? { audit_id: e.auditId, issued_before: when, revoked_at: when }
          : { user_id: e.userId, issued_before: when, revoked_at: when };
      });
    const links = { next: null, self: `${this.url}/v3/OS-REVOKE/events`, previous: null };
    // Collection answers go through Flask's jsonify: Python separators plus a trailing newline.
    return { status: 200, body: `${pyJson({ events, links })}\n` };
  }

  private renderToken(record: TokenRecord, includeCatalog: boolean): Record<string, unknown> {
    const { user, scope } = record;
    const token: Record<string, unknown> = {
      methods: record.methods,
      user: {
        domain: { id: user.domainId, name: user.domainName },
        id: user.id,
        name: user.name,
        password_expires_at: null,
      },
      audit_ids: record.auditIds,
      expires_at: isoTime(record.expiresAt),
      issued_at: isoTime(record.issuedAt),
    };
    if (record.trust) {
      token['OS-TRUST:trust'] = {
        id: record.trust.id,
        trustor_user: { id: record.trust.trustorId },
        trustee_user: { id: record.trust.trusteeId },
        impersonation: record.trust.impersonation,
      };
    }
    const roles = record.roles.map((r) => ({ id: r.id, name: r.name }));
    // Key order per scope follows keystone.common.render_token.
    if (scope.kind === 'system') {
      token.roles = roles;
      token.system = { all: true };
    } else if (scope.kind === 'domain') {
      token.domain = { id: scope.domain.id, name: scope.domain.name };
      token.roles = roles;
    } else if (scope.kind === 'project') {
      const p = scope.project;
      token.project = { domain: { id: p.domainId, name: p.domainName }, id: p.id, name: p.name };
      token.is_domain = false;
      token.roles = roles;
    }
    if (record.isAdminProject !== undefined) token.is_admin_project = record.isAdminProject;
    if (includeCatalog && scope.kind !== 'unscoped') token.catalog = this.renderCatalog();
    if (record.appCred) {
      const { id, name, restricted, accessRules } = record.appCred;
      token.application_credential = {
        id,
        name,
        restricted,
        ...(accessRules.length > 0
          ? {
              access_rules: accessRules.map((r) => ({
                id: r.id,
                service: r.service,
                path: r.path,
                method: r.method,
              })),
            }
          : {}),
      };
    }
    if (record.bind) token.bind = record.bind;
    if (record.certThumbprint !== undefined) token.oauth2_credential = { 'x5t#S256': record.certThumbprint };
    return token;
  }

  private renderCatalog(): unknown[] {
    const region = this.options.region ?? 'RegionOne';
    const identityUrl = this.options.identityUrl ?? `${this.url}/v3`;
    const identity: CatalogService = {
      type: 'identity',
      name: 'keystone',
      endpoints: (this.options.identityInterfaces ?? ['public', 'internal', 'admin']).map((iface) => ({
        interface: iface,
        url: identityUrl,
      })),
    };
    const services = [identity, ...(this.options.catalog ?? [fixtures.services.echo])];
    return services.map((s) => ({
      endpoints: s.endpoints.map((e) => {
        const endpointRegion = e.region ?? region;
        return {
          id: hexId('endpoint', s.type, e.interface, e.url, endpointRegion),
          interface: e.interface,
          region_id: endpointRegion,
          url: e.url,
          region: endpointRegion,
        };
      }),
      id: hexId('service', s.type, s.name),
      type: s.type,
      name: s.name,
    }));
  }
}

/** Start an emulator on 127.0.0.1 with the fixtures users (demo, proxy, d2user, admin) registered. */
export async function startKeystoneEmulator(options: EmulatorOptions = {}): Promise<KeystoneEmulator> {
  const emulator = new Emulator(options);
  await emulator.start();
  return emulator;
}
