/**
 * The answers the engine gives itself. The 401 is byte-for-byte keystonemiddleware's (114 bytes, Python JSON
 * separators). The 503 is JSON with Retry-After, where keystonemiddleware sends webob's HTML or text page.
 */
import { WWW_AUTHENTICATE_HEADER } from '../identity/headers.js';

export interface PreparedResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

export const UNAUTHORIZED_BODY =
  '{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}';

export const UNAVAILABLE_BODY =
  '{"error": {"code": 503, "title": "Service Unavailable", "message": "The Keystone service is temporarily unavailable."}}';

/** Seconds a client is told to wait after a 503 for an unreachable Keystone. */
export const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;

export function wwwAuthenticateValue(uri: string): string {
  return `Keystone uri="${uri}"`;
}

export function unauthorizedResponse(wwwAuthenticateUri: string): PreparedResponse {
  return {
    status: 401,
    headers: {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(UNAUTHORIZED_BODY)),
      [WWW_AUTHENTICATE_HEADER]: wwwAuthenticateValue(wwwAuthenticateUri),
    },
    body: UNAUTHORIZED_BODY,
  };
}

export function unavailableResponse(retryAfterSeconds = UNAVAILABLE_RETRY_AFTER_SECONDS): PreparedResponse {
  return {
    status: 503,
    headers: {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(UNAVAILABLE_BODY)),
      'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))),
    },
    body: UNAVAILABLE_BODY,
  };
}

/** Any other error the proxy answers itself, in the same JSON shape as keystonemiddleware's 401. */
export function errorResponse(
  status: number,
  title: string,
  message: string,
  headers: Record<string, string> = {},
): PreparedResponse {
  const body = `{"error": {"code": ${status}, "title": ${JSON.stringify(title)}, "message": ${JSON.stringify(message)}}}`;
  return {
    status,
    headers: {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(body)),
      ...headers,
    },
    body,
  };
}

/** The response as raw HTTP/1.1 bytes, for sockets that have no ServerResponse (upgrades, parse errors). */
export function rawResponse(response: PreparedResponse, reason: string, withBody = true): string {
  const lines = [`HTTP/1.1 ${response.status} ${reason}`, 'Connection: close'];
  for (const [name, value] of Object.entries(response.headers)) lines.push(`${name}: ${value}`);
  return `${lines.join('\r\n')}\r\n\r\n${withBody ? response.body : ''}`;
}

/** external_oauth2_token's answers, byte for byte (Python JSON separators), and its challenge. */
export const EXT_UNAUTHORIZED_BODY =
  '{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made is denied, because the token is invalid."}}';
export const EXT_FORBIDDEN_BODY =
  '{"error": {"code": 403, "title": "Forbidden", "message": "The request you have made is denied, because the necessary information could not be parsed."}}';
/** keystonemiddleware answers 500 here; a 503 with Retry-After tells clients (and balancers) to come back. */
export const EXT_UNAVAILABLE_BODY =
  '{"error": {"code": 503, "title": "Service Unavailable", "message": "The authorization server is temporarily unavailable."}}';

const EXT_CONTENT_TYPE = 'application/json; charset=UTF-8';

function jsonResponse(status: number, body: string, headers: Record<string, string> = {}): PreparedResponse {
  return {
    status,
    headers: {
      'Content-Type': EXT_CONTENT_TYPE,
      'Content-Length': String(Buffer.byteLength(body)),
      ...headers,
    },
    body,
  };
}

/**
 * keystonemiddleware: `Authorization OAuth 2.0 uri="<audience>"` whatever happened. RFC 6750 §3: `Bearer
 * realm=…`, with `error="invalid_token"` only when a token was sent (no error code when none was).
 */
export function externalChallenge(
  audience: string,
  challenge: 'keystonemiddleware' | 'rfc6750',
  tokenSent: boolean,
): string {
  const quoted = audience.replace(/["\\]/g, '\\$&');
  if (challenge === 'keystonemiddleware') return `Authorization OAuth 2.0 uri="${quoted}"`;
  return tokenSent ? `Bearer realm="${quoted}", error="invalid_token"` : `Bearer realm="${quoted}"`;
}

export interface ExternalResponses {
  /** No token in the request. */
  readonly missing: PreparedResponse;
  /** A token that is not (or no longer) valid, or not bound to this client certificate. */
  readonly invalid: PreparedResponse;
  readonly forbidden: PreparedResponse;
  /** The challenge the application's own 401 answers get. */
  readonly challenge: string;
}

export function externalResponses(
  audience: string,
  challenge: 'keystonemiddleware' | 'rfc6750',
): ExternalResponses {
  return {
    missing: jsonResponse(401, EXT_UNAUTHORIZED_BODY, {
      [WWW_AUTHENTICATE_HEADER]: externalChallenge(audience, challenge, false),
    }),
    invalid: jsonResponse(401, EXT_UNAUTHORIZED_BODY, {
      [WWW_AUTHENTICATE_HEADER]: externalChallenge(audience, challenge, true),
    }),
    forbidden: jsonResponse(403, EXT_FORBIDDEN_BODY),
    challenge: externalChallenge(audience, challenge, false),
  };
}

export function externalUnavailableResponse(
  retryAfterSeconds = UNAVAILABLE_RETRY_AFTER_SECONDS,
): PreparedResponse {
  return jsonResponse(503, EXT_UNAVAILABLE_BODY, {
    'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))),
  });
}
