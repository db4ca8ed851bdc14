/**
 * Pure: which tokens a request carries. Mirrors keystonemiddleware: X-Auth-Token, else X-Storage-Token; an empty
 * header is no token; surrounding whitespace is stripped (bug 1689468). The oauth2_token filter reads
 * `Authorization: Bearer` only.
 */
import type { FilterName } from '../config/auth-options.js';
import { SERVICE_TOKEN_HEADER, STORAGE_TOKEN_HEADER, USER_TOKEN_HEADER } from '../identity/headers.js';

export type HeaderBag = Readonly<Record<string, string | readonly string[] | undefined>>;

/** `undefined`: not sent. `''`: sent, but blank once trimmed (invalid without asking Keystone). */
export interface ExtractedTokens {
  readonly user: string | undefined;
  readonly service: string | undefined;
}

function single(value: string | readonly string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  return typeof value === 'string' ? value : value.join(', ');
}

function token(raw: string | undefined): string | undefined {
  if (raw === undefined || raw.length === 0) return undefined;
  return raw.trim();
}

/** Header names must already be lower-case (Node's IncomingMessage.headers are). */
export function extractTokens(headers: HeaderBag): ExtractedTokens {
  const auth = single(headers[USER_TOKEN_HEADER]);
  const user = auth !== undefined ? token(auth) : token(single(headers[STORAGE_TOKEN_HEADER]));
  return { user, service: token(single(headers[SERVICE_TOKEN_HEADER])) };
}

const NO_TOKENS: ExtractedTokens = Object.freeze({ user: undefined, service: undefined });
/** webob compares the scheme case-sensitively and splits on the first space: `bearer x` is no token there. */
const BEARER_PREFIX = 'Bearer ';

/**
 * keystonemiddleware's oauth2_token: the token is what follows `Bearer ` in `Authorization`; X-Auth-Token and
 * X-Service-Token are not read. Several Authorization headers are no token (Node keeps only the first; refusing
 * is the safe reading).
 */
export function extractBearer(headers: HeaderBag): ExtractedTokens {
  const value = headers.authorization;
  if (typeof value !== 'string' || !value.startsWith(BEARER_PREFIX)) return NO_TOKENS;
  const bearer = value.slice(BEARER_PREFIX.length).trim();
  return bearer.length === 0 ? NO_TOKENS : { user: bearer, service: undefined };
}

export function extractFor(filter: FilterName, headers: HeaderBag): ExtractedTokens {
  return filter === 'auth_token' ? extractTokens(headers) : extractBearer(headers);
}
