/**
 * Public routes: method + path patterns served without a token (version discovery at `GET /`). The path grammar
 * is the access-rule one: `{name}` or `*` is one segment, `**` is anything.
 */
import { compileAccessRulePath } from '../auth/access-rules.js';

export interface PublicRoute {
  readonly methods: readonly string[];
  readonly path: string;
}

export type RouteMatcher = (method: string, path: string) => boolean;

export function createRouteMatcher(routes: readonly PublicRoute[]): RouteMatcher {
  const compiled = routes.map((route) => ({
    any: route.methods.includes('*'),
    methods: new Set(route.methods),
    regex: compileAccessRulePath(route.path),
  }));
  if (compiled.length === 0) return () => false;
  return (method, path) => {
    // Dot segments could make a protected path look public to us but not to the upstream: never public.
    if (/(^|\/)\.\.?(\/|$)/.test(path) || /%2e/i.test(path)) return false;
    return compiled.some((route) => (route.any || route.methods.has(method)) && route.regex.test(path));
  };
}
