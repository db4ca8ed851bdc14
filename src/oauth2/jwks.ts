/**
 * Local verification of JWT access tokens (RFC 9068 style) against the authorization server's JWKS, with jose:
 * signature, `iss`, `aud` (when configured), `exp`/`nbf`, and the allowed algorithms. No introspection round
 * trip; the price is that a token revoked at the server stays valid here until it expires.
 */
import { performance } from 'node:perf_hooks';
import {
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  errors,
  type JWTPayload,
  jwtVerify,
} from 'jose';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import type { LocalJwtOptions } from '../config/ext-oauth2-options.js';
import { KeystoneUnavailableError } from '../errors.js';
import type { AuthObserver } from '../observability/observer.js';

export type LocalVerdict =
  | { readonly kind: 'claims'; readonly claims: JWTPayload }
  /** `problem` is jose's error code (for logs): never the token or its claims. */
  | { readonly kind: 'invalid'; readonly problem: string };

/** A compact JWS whose header parses and names an algorithm: the tokens verified here, not introspected. */
export function looksLikeJwt(token: string): boolean {
  if (token.split('.').length !== 3) return false;
  try {
    return typeof decodeProtectedHeader(token).alg === 'string';
  } catch {
    return false;
  }
}

export interface LocalJwtVerifierOptions {
  readonly jwt: LocalJwtOptions;
  readonly dispatcher: Dispatcher;
  readonly timeoutMs: number;
  /** Wall clock in ms: `exp` and `nbf` are checked against it. */
  readonly now: () => number;
  readonly observer: AuthObserver;
}

/**
 * jose's errors that mean the key set could not be had, rather than a bad token: a timeout, a non-200 answer or
 * an unparsable body (both generic there), a document that is no key set.
 */
const UNAVAILABLE_CODES = new Set(['ERR_JWKS_TIMEOUT', 'ERR_JOSE_GENERIC', 'ERR_JWKS_INVALID']);

export class LocalJwtVerifier {
  readonly #options: LocalJwtVerifierOptions;
  readonly #keys: ReturnType<typeof createRemoteJWKSet>;

  constructor(options: LocalJwtVerifierOptions) {
    this.#options = options;
    const { observer, dispatcher } = options;
    this.#keys = createRemoteJWKSet(new URL(options.jwt.jwksUri), {
      cacheMaxAge: options.jwt.cacheSeconds * 1000,
      timeoutDuration: options.timeoutMs,
      // The same dispatcher (CA, client certificate, timeouts) as introspection, and the request counted.
      [customFetch]: async (url, init) => {
        const started = performance.now();
        try {
          const response = await undiciFetch(url, { ...init, dispatcher } as Parameters<
            typeof undiciFetch
          >[1]);
          observer.keystoneRequest?.(
            'jwks',
            response.status === 200 ? 'ok' : 'http_error',
            (performance.now() - started) / 1000,
          );
          return response as unknown as Response;
        } catch (error) {
          observer.keystoneRequest?.('jwks', 'connect_error', (performance.now() - started) / 1000);
          throw error;
        }
      },
    });
  }

  /** Claims of a valid token; invalid with jose's reason; throws KeystoneUnavailableError without a key set. */
  async verify(token: string): Promise<LocalVerdict> {
    const { jwt, now } = this.#options;
    try {
      const { payload } = await jwtVerify(token, this.#keys, {
        issuer: jwt.issuer,
        ...(jwt.audiences === undefined ? {} : { audience: [...jwt.audiences] }),
        algorithms: [...jwt.algorithms],
        clockTolerance: jwt.clockToleranceSeconds,
        currentDate: new Date(now()),
      });
      return { kind: 'claims', claims: payload };
    } catch (error) {
      if (error instanceof errors.JOSEError && !UNAVAILABLE_CODES.has(error.code)) {
        return { kind: 'invalid', problem: error.code };
      }
      throw new KeystoneUnavailableError(
        'connect',
        'the JWKS of the authorization server could not be fetched',
        {
          cause: error,
        },
      );
    }
  }
}
