/**
 * keystonemiddleware's process_request as pure steps plus one async orchestrator: service token first (its role
 * gate decides allow_expired), then the user token (expiry, access rules, bind), then allow, reject or delegate.
 */

import type { BindMode, FilterName } from '../config/auth-options.js';
import type { InvalidTokenReason, KeystoneUnavailableError } from '../errors.js';
import type { TokenInfo } from '../keystone/token-info.js';
import { checkAccessRules } from './access-rules.js';
import { certificateBinding, type PresentedCertificate } from './certificate-binding.js';
import type { HeaderBag } from './extract.js';
import { extractFor } from './extract.js';

/** Where a valid identity came from (for logs and the `cache` outcome). */
export type TokenSource = 'cache' | 'shared' | 'keystone' | 'stale';

/** What checking one token gives the decision: the identity, why not, or that nobody can say now. */
export type TokenCheck =
  | { readonly status: 'valid'; readonly info: TokenInfo; readonly source: TokenSource }
  | { readonly status: 'invalid'; readonly reason: InvalidTokenReason }
  | { readonly status: 'unavailable'; readonly error: KeystoneUnavailableError };

export type Status = 'Confirmed' | 'Invalid';

export interface TokenVerdict {
  readonly status: Status;
  readonly info?: TokenInfo | undefined;
  readonly reason?: InvalidTokenReason | undefined;
}

/** What the engine concluded about one request. */
export type Decision =
  | {
      /** Forward: user and service (if sent) confirmed, or delay_auth_decision is on. */
      readonly action: 'forward';
      readonly user: TokenVerdict;
      /** Present only when the request carried X-Service-Token. */
      readonly service: TokenVerdict | undefined;
    }
  | { readonly action: 'reject'; readonly reason: InvalidTokenReason }
  | { readonly action: 'unavailable'; readonly error: KeystoneUnavailableError };

export interface DecisionPolicy {
  /** oauth2_token never forwards an unconfirmed request; delay_auth_decision only turns its 503 into 401. */
  readonly filter: FilterName;
  readonly delayAuthDecision: boolean;
  readonly serviceTokenRoles: readonly string[];
  readonly serviceTokenRolesRequired: boolean;
  readonly serviceType: string | undefined;
  readonly enforceTokenBind: BindMode;
  /** external_oauth2_token's thumbprint_verify: the token's `cnf` must name the client certificate (RFC 8705). */
  readonly thumbprintVerify?: boolean;
}

export interface RequestFacts {
  readonly method: string;
  /** Path without the query string. */
  readonly path: string;
  readonly headers: HeaderBag;
  /** The client certificate of the connection (verified by the listener) or of a trusted ingress header. */
  readonly clientCertificate?: PresentedCertificate | undefined;
}

export type CheckToken = (token: string, allowExpired: boolean) => Promise<TokenCheck>;

/**
 * Bind enforcement for a proxy: there is no web-server Kerberos context here, so a kerberos bind can never be
 * confirmed and is rejected, as keystonemiddleware does when AUTH_TYPE is not negotiate.
 */
export function bindAllows(bind: Readonly<Record<string, string>> | undefined, mode: BindMode): boolean {
  if (mode === 'disabled') return true;
  const kinds = bind === undefined ? [] : Object.keys(bind);
  if (kinds.length === 0) return mode === 'permissive' || mode === 'strict';
  if (typeof mode === 'object' && !kinds.includes(mode.name)) return false;
  for (const kind of kinds) {
    if (kind === 'kerberos') return false;
    if (mode !== 'permissive') return false;
  }
  return true;
}

export function hasServiceRole(info: TokenInfo, roles: readonly string[]): boolean {
  return info.roleNames.some((role) => roles.includes(role));
}

/** Runs the whole flow for one request. Keystone is only reached through `check`. */
export async function decide(
  request: RequestFacts,
  policy: DecisionPolicy,
  check: CheckToken,
  onServiceRoleBypass?: () => void,
): Promise<Decision> {
  const tokens = extractFor(policy.filter, request.headers);
  const delay = policy.delayAuthDecision;
  const forwardUnconfirmed = forwardsUnconfirmed(policy);
  let service: TokenVerdict | undefined;
  let allowExpired = false;

  if (tokens.service !== undefined) {
    const result = await check(tokens.service, false);
    if (result.status === 'unavailable') {
      if (!delay) return { action: 'unavailable', error: result.error };
      service = { status: 'Invalid', reason: 'keystone_unavailable' };
    } else if (result.status === 'invalid') {
      service = { status: 'Invalid', reason: result.reason };
    } else if (!bindAllows(result.info.bind, policy.enforceTokenBind)) {
      service = { status: 'Invalid', reason: 'bind_rejected' };
    } else {
      const rolePassed = hasServiceRole(result.info, policy.serviceTokenRoles);
      if (!rolePassed && !policy.serviceTokenRolesRequired) onServiceRoleBypass?.();
      service =
        rolePassed || !policy.serviceTokenRolesRequired
          ? { status: 'Confirmed', info: result.info }
          : { status: 'Invalid', info: result.info, reason: 'service_token_roles' };
      // allow_expired always needs the role check, whatever service_token_roles_required says.
      allowExpired = rolePassed;
    }
    // The answer is 401 whatever the user token is: spare Keystone the second call.
    if (service.status === 'Invalid' && !delay) {
      return { action: 'reject', reason: 'service_token_invalid' };
    }
  }

  let user: TokenVerdict;
  if (tokens.user === undefined) {
    user = { status: 'Invalid', reason: 'missing' };
  } else {
    const result = await check(tokens.user, allowExpired);
    if (result.status === 'unavailable') {
      if (!delay) return { action: 'unavailable', error: result.error };
      user = { status: 'Invalid', reason: 'keystone_unavailable' };
    } else if (result.status === 'invalid') {
      user = { status: 'Invalid', reason: result.reason };
    } else {
      user = confirmUser(result.info, request, policy, tokens.service !== undefined);
    }
  }

  const confirmed = user.status === 'Confirmed' && (service === undefined || service.status === 'Confirmed');
  if (!confirmed && !forwardUnconfirmed) {
    return {
      action: 'reject',
      reason: user.status === 'Invalid' ? (user.reason ?? 'missing') : 'service_token_invalid',
    };
  }
  return { action: 'forward', user, service };
}

/**
 * The common case without a Keystone call: no service token, and the user token already known valid (a cache
 * hit). Exactly what `decide` concludes for that case; `undefined` when the request is not that case.
 */
export function decideCachedUser(
  request: RequestFacts,
  policy: DecisionPolicy,
  lookup: (token: string) => TokenInfo | undefined,
): Decision | undefined {
  const tokens = extractFor(policy.filter, request.headers);
  if (tokens.service !== undefined || tokens.user === undefined || tokens.user.length === 0) return undefined;
  const info = lookup(tokens.user);
  if (info === undefined) return undefined;
  const user = confirmUser(info, request, policy, false);
  if (user.status !== 'Confirmed' && !forwardsUnconfirmed(policy)) {
    return { action: 'reject', reason: user.reason ?? 'missing' };
  }
  return { action: 'forward', user, service: undefined };
}

/** delay_auth_decision lets auth_token forward with X-Identity-Status: Invalid; oauth2_token rejects anyway. */
function forwardsUnconfirmed(policy: DecisionPolicy): boolean {
  return policy.delayAuthDecision && policy.filter === 'auth_token';
}

function confirmUser(
  info: TokenInfo,
  request: RequestFacts,
  policy: DecisionPolicy,
  hasServiceToken: boolean,
): TokenVerdict {
  const verdict = checkAccessRules(
    { method: request.method, path: request.path, hasServiceToken },
    info,
    policy.serviceType,
  );
  if (verdict !== 'allowed' && verdict !== 'unrestricted') {
    return { status: 'Invalid', reason: 'access_rule_denied' };
  }
  // keystonemiddleware skips the user token's bind check when a service token vouches for the request.
  if (!hasServiceToken && !bindAllows(info.bind, policy.enforceTokenBind)) {
    return { status: 'Invalid', reason: 'bind_rejected' };
  }
  // Per request, not per token: the same token may come on another connection, with another certificate.
  // external_oauth2_token's thumbprint_verify: the introspection's `cnf` (RFC 8705), as the mapping recorded it.
  if (policy.filter === 'oauth2_mtls_token' || policy.thumbprintVerify === true) {
    const binding = certificateBinding(info.certThumbprint, request.clientCertificate);
    if (binding === 'no_certificate') return { status: 'Invalid', reason: 'certificate_missing' };
    if (binding !== 'bound') return { status: 'Invalid', reason: 'certificate_mismatch' };
  }
  return { status: 'Confirmed', info };
}
