/**
 * The proxy's own Keystone token, used as X-Auth-Token when validating users' tokens. Obtained once, reused
 * until shortly before it expires, refreshed by exactly one caller while the others wait (single flight).
 */
import { KeystoneUnavailableError } from '../errors.js';
import type { AuthObserver, Logger } from '../observability/observer.js';
import type { KeystoneHttp } from './http.js';

export type ServiceCredentials =
  | {
      readonly type: 'password';
      readonly userId?: string | undefined;
      readonly username?: string | undefined;
      readonly userDomainId?: string | undefined;
      readonly userDomainName?: string | undefined;
      readonly password: string;
      readonly projectId?: string | undefined;
      readonly projectName?: string | undefined;
      readonly projectDomainId?: string | undefined;
      readonly projectDomainName?: string | undefined;
      readonly domainId?: string | undefined;
      readonly domainName?: string | undefined;
      readonly systemScope?: string | undefined;
    }
  | {
      readonly type: 'v3applicationcredential';
      readonly id?: string | undefined;
      readonly name?: string | undefined;
      readonly secret: string;
      readonly userId?: string | undefined;
      readonly username?: string | undefined;
      readonly userDomainId?: string | undefined;
      readonly userDomainName?: string | undefined;
    };

export interface ServiceToken {
  readonly token: string;
  readonly expiresAtMs: number;
  /** The v3 catalog of the service token: where the identity endpoint is looked up. */
  readonly catalog: readonly unknown[];
}

const ref = (id: string | undefined, name: string | undefined): Record<string, string> =>
  id !== undefined ? { id } : { name: name ?? '' };

function domainRef(id: string | undefined, name: string | undefined): Record<string, string> | undefined {
  if (id !== undefined) return { id };
  if (name !== undefined) return { name };
  return undefined;
}

function userRef(c: {
  userId?: string | undefined;
  username?: string | undefined;
  userDomainId?: string | undefined;
  userDomainName?: string | undefined;
}): Record<string, unknown> {
  if (c.userId !== undefined) return { id: c.userId };
  const domain = domainRef(c.userDomainId, c.userDomainName);
  return domain === undefined ? { name: c.username } : { name: c.username, domain };
}

/** The POST /v3/auth/tokens body for the configured credentials (pure, exported for tests). */
export function serviceAuthBody(credentials: ServiceCredentials): Record<string, unknown> {
  if (credentials.type === 'v3applicationcredential') {
    const appCred: Record<string, unknown> =
      credentials.id !== undefined
        ? { id: credentials.id, secret: credentials.secret }
        : { name: credentials.name, secret: credentials.secret, user: userRef(credentials) };
    return {
      auth: { identity: { methods: ['application_credential'], application_credential: appCred } },
    };
  }
  const c = credentials;
  const identity = {
    methods: ['password'],
    password: { user: { ...userRef(c), password: c.password } },
  };
  let scope: Record<string, unknown> | undefined;
  if (c.projectId !== undefined || c.projectName !== undefined) {
    const project: Record<string, unknown> = ref(c.projectId, c.projectName);
    const domain = domainRef(c.projectDomainId, c.projectDomainName);
    if (c.projectId === undefined && domain !== undefined) project.domain = domain;
    scope = { project };
  } else if (c.domainId !== undefined || c.domainName !== undefined) {
    scope = { domain: ref(c.domainId, c.domainName) };
  } else if (c.systemScope !== undefined) {
    scope = { system: { [c.systemScope]: true } };
  }
  return { auth: scope === undefined ? { identity } : { identity, scope } };
}

export interface ServiceTokenOptions {
  readonly http: KeystoneHttp;
  readonly credentials: ServiceCredentials;
  /** Wall clock in ms (Date.now by default): compared with Keystone's expires_at. */
  readonly now: () => number;
  readonly logger: Logger;
  readonly observer: AuthObserver;
}

export class ServiceTokenProvider {
  readonly #options: ServiceTokenOptions;
  #current: ServiceToken | undefined;
  #pending: Promise<ServiceToken> | undefined;

  constructor(options: ServiceTokenOptions) {
    this.#options = options;
  }

  /** The cached token when fresh; refreshes once for all concurrent callers otherwise. */
  get(authV3Url: string, deadline: number): Promise<ServiceToken> {
    const current = this.#current;
    if (current !== undefined && !this.#needsRefresh(current)) return Promise.resolve(current);
    this.#pending ??= this.#fetch(authV3Url, deadline).finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  /** Keystone said this token is no longer good: drop it unless another caller already replaced it. */
  invalidate(token: string): void {
    if (this.#current?.token === token) this.#current = undefined;
  }

  // Refresh ahead of expiry by a tenth of the lifetime, at most a minute, so no request carries a dying token.
  #needsRefresh(token: ServiceToken): boolean {
    const now = this.#options.now();
    const margin = Math.min(60_000, Math.max(0, (token.expiresAtMs - now) / 10));
    return now >= token.expiresAtMs - Math.max(margin, 1_000);
  }

  async #fetch(authV3Url: string, deadline: number): Promise<ServiceToken> {
    const { http, credentials, logger, observer } = this.#options;
    try {
      const response = await http.send({
        operation: 'auth',
        method: 'POST',
        url: new URL(`${authV3Url}/auth/tokens`),
        headers: {},
        body: JSON.stringify(serviceAuthBody(credentials)),
        deadline,
      });
      if (response.status === 401 || response.status === 403) {
        throw new KeystoneUnavailableError(
          'service_auth_rejected',
          `Keystone rejected the proxy's own credentials (HTTP ${response.status})`,
          { status: response.status },
        );
      }
      const subject = response.headers['x-subject-token'];
      const token = typeof subject === 'string' ? subject : undefined;
      const body = (response.json as { token?: { expires_at?: unknown; catalog?: unknown } } | undefined)
        ?.token;
      const expiresAtMs = typeof body?.expires_at === 'string' ? Date.parse(body.expires_at) : Number.NaN;
      if (response.status !== 201 && response.status !== 200) {
        throw new KeystoneUnavailableError('http_status', `Keystone auth answered HTTP ${response.status}`, {
          status: response.status,
        });
      }
      if (token === undefined || !Number.isFinite(expiresAtMs)) {
        throw new KeystoneUnavailableError(
          'bad_response',
          'Keystone auth answer lacks a token or expires_at',
        );
      }
      const catalog = Array.isArray(body?.catalog) ? body.catalog : [];
      this.#current = { token, expiresAtMs, catalog };
      observer.serviceTokenRefresh?.('ok');
      logger.info({ expiresAt: new Date(expiresAtMs).toISOString() }, 'service token obtained');
      return this.#current;
    } catch (error) {
      observer.serviceTokenRefresh?.('error');
      logger.warn(
        { err: { code: (error as { code?: unknown }).code, message: (error as Error).message } },
        'could not obtain the service token',
      );
      throw error;
    }
  }
}
