/**
 * Express 4 and 5 middleware: the same engine, stripping and headers as the sidecar; the caller's identity is
 * also on `req.keystone`.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { AuthOptionsInput } from './config/auth-options.js';
import type { AuthContext, AuthDependencies, Authenticator } from './http/authenticate.js';
import { createAuthTokenHandler, getAuthContext } from './http/handler.js';

declare global {
  namespace Express {
    interface Request {
      /** Set by keystone-auth-proxy's middleware on every request it lets through. */
      keystone?: AuthContext;
    }
  }
}

export type KeystoneRequestHandler = RequestHandler & { readonly authenticator: Authenticator };

export function createExpressAuth(
  options: AuthOptionsInput | Authenticator,
  deps?: AuthDependencies,
): KeystoneRequestHandler {
  const handler = createAuthTokenHandler(options, deps);
  const middleware = (req: Request, res: Response, next: NextFunction): void => {
    handler(req, res, (error?: unknown) => {
      if (error === undefined) req.keystone = getAuthContext(req);
      next(error);
    });
  };
  return Object.assign(middleware, { authenticator: handler.authenticator });
}

export type { AuthContext } from './http/authenticate.js';
