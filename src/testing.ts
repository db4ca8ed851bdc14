/**
 * Test your application without Keystone (keystonemiddleware's AuthTokenFixture is the model): register tokens
 * with the identity they stand for, pass the fixture as `validator`, and the real engine runs on top of it.
 *
 *   const fixture = createAuthTokenFixture();
 *   const token = fixture.addToken({ userId: 'u1', projectId: 'p1', roles: ['member'] });
 *   app.use(createExpressAuth({ www_authenticate_uri: 'http://keystone' }, { validator: fixture }));
 */
import { randomBytes } from 'node:crypto';
import type { TokenValidator, ValidateOptions, ValidationAnswer } from './keystone/client.js';
import type { AccessRule } from './keystone/token-info.js';

export interface FixtureToken {
  /** The token string; random when omitted. */
  readonly token?: string;
  readonly userId?: string;
  readonly userName?: string;
  readonly userDomainId?: string;
  readonly userDomainName?: string;
  readonly projectId?: string;
  readonly projectName?: string;
  readonly projectDomainId?: string;
  readonly projectDomainName?: string;
  /** Domain scope (instead of a project). */
  readonly domainId?: string;
  readonly domainName?: string;
  /** System scope `all` (instead of a project). */
  readonly system?: boolean;
  readonly roles?: readonly string[];
  readonly expiresAt?: Date;
  readonly isAdminProject?: boolean;
  /** v3 catalog entries; include the service type your access rules name. */
  readonly catalog?: readonly unknown[];
  readonly appCredId?: string;
  readonly accessRules?: readonly AccessRule[];
}

export interface AuthTokenFixture extends TokenValidator {
  /** Registers a token and returns its string. */
  addToken(token?: FixtureToken): string;
  /** Validation of this token now answers "invalid", as for a revoked token. */
  revoke(token: string): void;
  /** Validations the engine asked for so far. */
  readonly calls: number;
}

const iso = (date: Date): string => date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

/** A Keystone v3 validation body for a fixture token, shaped like Keystone's own. */
export function fixtureTokenBody(
  input: FixtureToken = {},
  now = new Date(),
): { token: Record<string, unknown> } {
  const userDomain = { id: input.userDomainId ?? 'default', name: input.userDomainName ?? 'Default' };
  const token: Record<string, unknown> = {
    methods: input.appCredId === undefined ? ['password'] : ['application_credential'],
    user: {
      domain: userDomain,
      id: input.userId ?? 'fixture-user-id',
      name: input.userName ?? 'fixture-user',
      password_expires_at: null,
    },
    audit_ids: [randomBytes(16).toString('base64url').slice(0, 22)],
    expires_at: iso(input.expiresAt ?? new Date(now.getTime() + 3_600_000)),
    issued_at: iso(now),
  };
  if (input.system === true) token.system = { all: true };
  else if (input.domainId !== undefined)
    token.domain = { id: input.domainId, name: input.domainName ?? input.domainId };
  else {
    token.project = {
      domain: {
        id: input.projectDomainId ?? userDomain.id,
        name: input.projectDomainName ?? userDomain.name,
      },
      id: input.projectId ?? 'fixture-project-id',
      name: input.projectName ?? 'fixture-project',
    };
    token.is_domain = false;
  }
  token.roles = (input.roles ?? ['member']).map((name) => ({ id: `${name}-id`, name }));
  if (input.isAdminProject !== undefined) token.is_admin_project = input.isAdminProject;
  if (input.catalog !== undefined) token.catalog = input.catalog;
  if (input.appCredId !== undefined) {
    token.application_credential = {
      id: input.appCredId,
      name: input.appCredId,
      restricted: true,
      ...(input.accessRules === undefined ? {} : { access_rules: input.accessRules }),
    };
  }
  return { token };
}

export function createAuthTokenFixture(): AuthTokenFixture {
  const tokens = new Map<string, { body: { token: Record<string, unknown> }; expiresAtMs: number }>();
  let calls = 0;
  return {
    addToken(input = {}) {
      const token = input.token ?? `fixture-${randomBytes(24).toString('base64url')}`;
      const body = fixtureTokenBody(input);
      tokens.set(token, { body, expiresAtMs: Date.parse(String(body.token.expires_at)) });
      return token;
    },
    revoke(token) {
      tokens.delete(token);
    },
    get calls() {
      return calls;
    },
    async validate(token: string, options: ValidateOptions): Promise<ValidationAnswer> {
      calls++;
      const entry = tokens.get(token);
      if (entry === undefined) return { kind: 'invalid' };
      if (entry.expiresAtMs < Date.now() && !options.allowExpired) return { kind: 'invalid' };
      return { kind: 'valid', body: structuredClone(entry.body) };
    },
  };
}
