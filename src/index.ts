export type { AccessRuleVerdict } from './auth/access-rules.js';
export { accessRulePathMatches, checkAccessRules } from './auth/access-rules.js';
export type { Decision, DecisionPolicy, RequestFacts } from './auth/decision.js';
export type {
  AuthOptionsInput,
  BindMode,
  FilterName,
  OptionDoc,
  ResolvedAuthOptions,
} from './config/auth-options.js';
export {
  describeAuthOptions,
  FILTERS,
  IGNORED_KSM_OPTIONS,
  resolveAuthOptions,
} from './config/auth-options.js';
export type {
  AuthMethod,
  ExtOAuth2OptionsInput,
  ResolvedExtOAuth2Options,
} from './config/ext-oauth2-options.js';
export type {
  AnyKsAuthError,
  ConfigIssue,
  InvalidTokenReason,
  KsAuthErrorCode,
  UnavailableReason,
} from './errors.js';
export {
  ConfigError,
  InvalidTokenError,
  KeystoneUnavailableError,
  KsAuthError,
  UpstreamError,
} from './errors.js';
export type { AuthContext, AuthDependencies, Authenticator, AuthOutcome } from './http/authenticate.js';
export { createAuthenticator } from './http/authenticate.js';
export type { AuthTokenHandler, NextFunction } from './http/handler.js';
export { AUTH_CONTEXT, createAuthTokenHandler, getAuthContext } from './http/handler.js';
export type { PreparedResponse } from './http/responses.js';
export {
  EXT_FORBIDDEN_BODY,
  EXT_UNAUTHORIZED_BODY,
  EXT_UNAVAILABLE_BODY,
  UNAUTHORIZED_BODY,
  UNAVAILABLE_BODY,
} from './http/responses.js';
export type { HeaderPair } from './identity/headers.js';
export {
  IDENTITY_HEADERS,
  identityHeaders,
  isIdentityHeader,
  stripIdentityHeaders,
} from './identity/headers.js';
export type { TokenValidator, ValidateOptions, ValidationAnswer } from './keystone/client.js';
export { KeystoneClient } from './keystone/client.js';
export type { AccessRule, TokenInfo } from './keystone/token-info.js';
export type {
  AuthObserver,
  CacheEvent,
  KeystoneOperation,
  KeystoneOutcome,
  Logger,
} from './observability/observer.js';
export type { CacheMode } from './state/token-cache.js';
export { TokenCache } from './state/token-cache.js';
export type { ClientCertificate } from './tls/client-certificate.js';
export { clientCertificate, clientCertificateOf } from './tls/client-certificate.js';
export { VERSION } from './version.js';
