/**
 * The framework-free middleware: `(req, res, next)` on node:http, for Connect-style stacks and plain servers.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AuthOptionsInput } from '../config/auth-options.js';
import {
  type AuthContext,
  type AuthDependencies,
  type Authenticator,
  createAuthenticator,
} from './authenticate.js';
import {
  injectIdentity,
  requestFacts,
  sendPrepared,
  stripRequestIdentity,
  unauthorizedDecorator,
} from './node-request.js';

/** Where the handler leaves the caller's identity on the request. */
export const AUTH_CONTEXT = Symbol.for('keystone-auth-proxy.auth');

export type AuthenticatedRequest = IncomingMessage & { [AUTH_CONTEXT]?: AuthContext };

export function getAuthContext(req: IncomingMessage): AuthContext | undefined {
  return (req as AuthenticatedRequest)[AUTH_CONTEXT];
}

export type NextFunction = (error?: unknown) => void;

export interface AuthTokenHandler {
  (req: IncomingMessage, res: ServerResponse, next: NextFunction): void;
  readonly authenticator: Authenticator;
}

/**
 * Strips client identity headers, validates, then either answers 401/503 itself or sets the identity headers
 * and calls `next()`. Never throws into the server: an unexpected failure goes to `next(error)`.
 */
export function createAuthTokenHandler(
  options: AuthOptionsInput | Authenticator,
  deps?: AuthDependencies,
): AuthTokenHandler {
  const authenticator = isAuthenticator(options) ? options : createAuthenticator(options, deps);
  const decorateUnauthorized = unauthorizedDecorator(authenticator.wwwAuthenticate);
  const handler = (req: IncomingMessage, res: ServerResponse, next: NextFunction): void => {
    stripRequestIdentity(req);
    authenticator
      .authenticate(requestFacts(req))
      .then((outcome) => {
        if (outcome.action === 'respond') {
          sendPrepared(req, res, outcome.response);
          return;
        }
        injectIdentity(req, outcome.headers);
        (req as AuthenticatedRequest)[AUTH_CONTEXT] = outcome.context;
        decorateUnauthorized(res);
        next();
      })
      .catch((error: unknown) => {
        // Never an unhandled rejection: hand the error to the stack, or cut the exchange if it already began.
        if (res.headersSent) res.destroy(error as Error);
        else next(error);
      });
  };
  return Object.assign(handler, { authenticator });
}

export function isAuthenticator(value: unknown): value is Authenticator {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof (value as Authenticator).authenticate === 'function' &&
    typeof (value as Authenticator).wwwAuthenticate === 'string'
  );
}
