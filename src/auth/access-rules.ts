/**
 * Application-credential access rules, enforced as keystonemiddleware does (anchors.md §1.11): same order of
 * checks, same path grammar. Keystone leaves enforcement to us once we send OpenStack-Identity-Access-Rules: 1.
 */
import type { AccessRule, TokenInfo } from '../keystone/token-info.js';

const compiled = new Map<string, RegExp>();
const MAX_COMPILED = 1024;

/**
 * `{name}` and a single `*` match one path segment, `**` matches anything, every other character is literal.
 * Unlike keystonemiddleware, literals are regex-escaped, so a `.` in a rule does not match any character.
 */
export function compileAccessRulePath(pattern: string): RegExp {
  let regex = compiled.get(pattern);
  if (regex !== undefined) return regex;
  let source = '';
  for (const match of pattern.matchAll(/(\{[^}]*\})|(\*(?=$|[^*]))|(\*\*)|([^{}*])/g)) {
    if (match[1] !== undefined || match[2] !== undefined) source += '[^/]+';
    else if (match[3] !== undefined) source += '.*';
    else if (match[4] !== undefined) source += match[4].replace(/[\\^$.|?+()[\]{}]/g, '\\$&');
  }
  regex = new RegExp(`^${source}$`, 's');
  if (compiled.size >= MAX_COMPILED) compiled.clear();
  compiled.set(pattern, regex);
  return regex;
}

export function accessRulePathMatches(requestPath: string, pattern: string): boolean {
  return compileAccessRulePath(pattern).test(requestPath);
}

export interface AccessRuleRequest {
  readonly method: string;
  /** The request path without the query string, as the client sent it (percent-encoded). */
  readonly path: string;
  readonly hasServiceToken: boolean;
}

export type AccessRuleVerdict =
  | 'allowed'
  | 'unrestricted'
  | 'no_service_type'
  | 'service_not_in_catalog'
  | 'bad_path'
  | 'denied';

/**
 * WSGI applications see the percent-decoded path, so rules are matched against it, as keystonemiddleware does.
 * Dot segments are refused outright: `/allowed/../secret` must not pass a rule for `/allowed/**`.
 */
function decodePath(path: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    return undefined;
  }
  const segments = decoded.split('/');
  if (segments.some((segment) => segment === '.' || segment === '..')) return undefined;
  return decoded;
}

export function checkAccessRules(
  request: AccessRuleRequest,
  token: Pick<TokenInfo, 'accessRules' | 'catalogTypes'>,
  serviceType: string | undefined,
): AccessRuleVerdict {
  const rules: readonly AccessRule[] | undefined = token.accessRules;
  if (rules === undefined) return 'unrestricted';
  if (!serviceType) return 'no_service_type';
  const path = decodePath(request.path);
  if (path === undefined) return 'bad_path';
  // A token may always validate itself.
  if (serviceType === 'identity' && request.method === 'GET' && path.endsWith('/v3/auth/tokens')) {
    return 'allowed';
  }
  if (!token.catalogTypes?.includes(serviceType)) return 'service_not_in_catalog';
  // A service token marks a service-to-service call, which the user's rules were never meant to describe.
  if (request.hasServiceToken) return 'allowed';
  for (const rule of rules) {
    if (
      rule.method === request.method &&
      rule.service === serviceType &&
      accessRulePathMatches(path, rule.path)
    ) {
      return 'allowed';
    }
  }
  return 'denied';
}
