/**
 * Koa 2 and 3 middleware: the same engine, stripping and headers as the sidecar; the caller's identity is on
 * `ctx.state.keystone`. A 401 from downstream (set or thrown) gets `WWW-Authenticate`, as in keystonemiddleware.
 */
import type { Context, Middleware, Next } from 'koa';
import type { AuthOptionsInput } from './config/auth-options.js';
import {
  type AuthContext,
  type AuthDependencies,
  type Authenticator,
  createAuthenticator,
} from './http/authenticate.js';
import { isAuthenticator } from './http/handler.js';
import { injectIdentity, requestFacts, stripRequestIdentity } from './http/node-request.js';
import { WWW_AUTHENTICATE_HEADER } from './identity/headers.js';

export interface KeystoneState {
  keystone?: AuthContext;
}

export type KeystoneMiddleware = Middleware<KeystoneState> & { readonly authenticator: Authenticator };

export function createKoaAuth(
  options: AuthOptionsInput | Authenticator,
  deps?: AuthDependencies,
): KeystoneMiddleware {
  const authenticator = isAuthenticator(options) ? options : createAuthenticator(options, deps);
  const challenge = authenticator.wwwAuthenticate;
  const middleware = async (ctx: Context, next: Next): Promise<void> => {
    stripRequestIdentity(ctx.req);
    const outcome = await authenticator.authenticate(requestFacts(ctx.req));
    if (outcome.action === 'respond') {
      const { status, headers, body } = outcome.response;
      ctx.status = status;
      for (const [name, value] of Object.entries(headers)) {
        if (name.toLowerCase() !== 'content-length') ctx.set(name, value);
      }
      ctx.body = body;
      return;
    }
    injectIdentity(ctx.req, outcome.headers);
    (ctx.state as KeystoneState).keystone = outcome.context;
    try {
      await next();
    } catch (error) {
      if ((error as { status?: unknown }).status === 401) {
        const err = error as { headers?: Record<string, string> };
        err.headers = { ...(err.headers ?? {}), [WWW_AUTHENTICATE_HEADER]: challenge };
      }
      throw error;
    }
    if (ctx.status === 401) ctx.append(WWW_AUTHENTICATE_HEADER, challenge);
  };
  return Object.assign(middleware as Middleware<KeystoneState>, { authenticator });
}

export type { AuthContext } from './http/authenticate.js';
