/**
 * The sidecar's YAML configuration: one schema for the whole file (the `keystone_authtoken` section is the
 * engine's schema, keystonemiddleware's names verbatim). `${VAR}` and `${VAR:-default}` in string values come from
 * the environment so secrets stay out of the file. Unknown keys are errors; every problem is reported at once.
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { type AuthOptionsInput, authOptionsSchema, filterSchema } from './auth-options.js';
import { extCrossIssues, extOAuth2OptionsSchema } from './ext-oauth2-options.js';
import { tlsSchema } from './tls-options.js';

const numberLike = z.union([
  z.number(),
  z
    .string()
    .trim()
    .regex(/^\d+(\.\d+)?$/, { message: 'must be a number' })
    .transform(Number),
]);
const port = numberLike.pipe(
  z.number().int().min(0).max(65_535, { message: 'must be a port number (0-65535)' }),
);
const positiveSeconds = numberLike.pipe(z.number().positive({ message: 'must be greater than 0 (seconds)' }));
const bytes = numberLike.pipe(z.number().int().positive({ message: 'must be a positive number of bytes' }));
const bool = z.union([z.boolean(), z.enum(['true', 'false']).transform((s) => s === 'true')]);

const listenSchema = z
  .object({
    host: z.string().min(1).default('0.0.0.0').describe('Address to listen on.'),
    port: port.describe('TCP port (0 picks a free one).'),
    tls: tlsSchema.optional().describe('Serve https on this listener (README "TLS"); default: plain http.'),
  })
  .strict();

const httpUrl = z.string().refine(
  (s) => {
    try {
      const url = new URL(s);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.search === '' && url.hash === '';
    } catch {
      return false;
    }
  },
  { message: 'must be an http(s) URL without query or fragment' },
);

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', '*'] as const;

export const proxyConfigSchema = z
  .object({
    listen: listenSchema.optional().describe('Where the proxied API is served (the port clients use).'),
    workers: z
      .union([z.literal('auto'), numberLike.pipe(z.number().int().min(1, { message: 'must be at least 1' }))])
      .default('auto')
      .describe(
        'Processes serving the proxied port (node:cluster); auto: one per CPU core, at most the cgroup CPU limit (rounded up). With more than one, a primary process holds the one token cache, validations in flight, Keystone breaker and revocation poller of the host; each worker keeps a small copy (L1) of the identities it served.',
      ),
    worker_cache_max_entries: numberLike
      .pipe(z.number().int().min(0, { message: 'must be 0 or more' }))
      .default(4096)
      .describe(
        'Identities each worker keeps in its own L1 (with workers > 1; bounded by token_cache_max_bytes too): served with no round trip to the primary. 0: every request asks the primary.',
      ),
    upstream: z
      .object({
        url: httpUrl.describe('The service behind the proxy, e.g. http://127.0.0.1:18774.'),
        connect_timeout_seconds: positiveSeconds
          .default(5)
          .describe('Time to connect to the upstream: 504 after.'),
        response_timeout_seconds: positiveSeconds
          .default(120)
          .describe(
            'Time for the upstream to send its response head once the request body is sent: 504 after.',
          ),
        insecure: bool.default(false).describe('Do not verify an https upstream certificate.'),
      })
      .strict()
      .optional(),
    admin_listen: listenSchema
      .default({ host: '127.0.0.1', port: 9180 })
      .describe('Where /metrics, /healthz and /readyz are served; never the proxied port.'),
    filter: filterSchema,
    // `filter` is the file's top-level key, as the paste filter is not a [keystone_authtoken] option.
    keystone_authtoken: authOptionsSchema
      .omit({ filter: true, ext_oauth2_auth: true })
      .optional()
      .describe(
        'keystonemiddleware [keystone_authtoken] options, verbatim (not needed for external_oauth2_token).',
      ),
    ext_oauth2_auth: extOAuth2OptionsSchema
      .optional()
      .describe(
        "keystonemiddleware's [ext_oauth2_auth] options, verbatim, plus ours: required (and only read) with filter external_oauth2_token.",
      ),
    public_routes: z
      .array(
        z
          .object({
            methods: z
              .array(z.enum(METHODS))
              .default(['GET', 'HEAD'])
              .describe('Methods the route covers; "*" is any.'),
            path: z
              .string()
              .startsWith('/', { message: 'must start with /' })
              .describe('Path pattern: {name} or * is one segment, ** is anything.'),
          })
          .strict(),
      )
      .default([])
      .describe('Routes served without a token (identity headers are still stripped).'),
    forward_auth: z
      .object({
        enabled: bool.default(false).describe('Serve the forward-auth endpoint.'),
        path: z.string().startsWith('/').default('/auth').describe('Path of the forward-auth endpoint.'),
        listen: listenSchema.optional().describe('A listener of its own; default: the admin listener.'),
      })
      .strict()
      .default({ enabled: false, path: '/auth' })
      .describe('nginx auth_request / Envoy ext_authz / Traefik ForwardAuth endpoint.'),
    log: z
      .object({
        level: z
          .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
          .default('info')
          .describe('Least severe level written.'),
        format: z
          .enum(['json', 'pretty'])
          .default('json')
          .describe('json: one JSON object per line; pretty: for a terminal.'),
        flush_interval_seconds: z
          .number()
          .min(0)
          .max(10)
          .default(0.2)
          .describe(
            'Access-log lines wait at most this long to be written together (or until 4 KiB wait), one after a quiet spell goes at once; other lines always go at once. 0: one write per line (costs CPU per request). Waiting lines are written at exit.',
          ),
      })
      .strict()
      .default({ level: 'info', format: 'json', flush_interval_seconds: 0.2 }),
    metrics: z
      .object({
        enabled: bool.default(true).describe('Serve /metrics on the admin listener.'),
        prefix: z
          .string()
          .regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, { message: 'must be a Prometheus name prefix' })
          .default('keystone_auth_proxy')
          .describe('Prefix of every metric name of this proxy.'),
      })
      .strict()
      .default({ enabled: true, prefix: 'keystone_auth_proxy' }),
    shutdown: z
      .object({
        grace_period_seconds: positiveSeconds
          .default(25)
          .describe('On SIGTERM/SIGINT, how long in-flight requests may take to finish.'),
      })
      .strict()
      .default({ grace_period_seconds: 25 }),
    limits: z
      .object({
        max_header_bytes: bytes.default(16_384).describe('Largest request head accepted (431 beyond).'),
        max_body_bytes: numberLike
          .pipe(z.number().int().min(0))
          .default(0)
          .describe(
            'Largest request body accepted (413 beyond); 0: no limit (image uploads can be gigabytes).',
          ),
        headers_timeout_seconds: positiveSeconds
          .default(60)
          .describe('Most time a client may take to send the request head (408 after).'),
        idle_timeout_seconds: positiveSeconds
          .default(300)
          .describe('A client connection silent this long is closed (bodies may stream for longer).'),
      })
      .strict()
      .default({
        max_header_bytes: 16_384,
        max_body_bytes: 0,
        headers_timeout_seconds: 60,
        idle_timeout_seconds: 300,
      }),
  })
  .strict();

export type ProxyConfig = z.output<typeof proxyConfigSchema>;
export type ProxyConfigInput = z.input<typeof proxyConfigSchema>;
export type { AuthOptionsInput };

/** The engine's options: the `keystone_authtoken` section with the file's top-level `filter` and `ext_oauth2_auth`. */
export function authInputOf(config: ProxyConfig): AuthOptionsInput {
  return {
    ...(config.keystone_authtoken ?? {}),
    filter: config.filter,
    ext_oauth2_auth: config.ext_oauth2_auth,
  };
}

type Env = Readonly<Record<string, string | undefined>>;

/** Replaces `${VAR}` / `${VAR:-default}` in every string of the tree; collects unset variables as issues. */
export function substituteEnv(value: unknown, env: Env, issues: ConfigIssue[], path: string[] = []): unknown {
  if (typeof value === 'string') {
    return value.replace(
      /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g,
      (_match, name: string, fallback?: string) => {
        const found = env[name];
        if (found !== undefined) return found;
        if (fallback !== undefined) return fallback;
        issues.push({ path: path.join('.'), message: `environment variable ${name} is not set` });
        return '';
      },
    );
  }
  if (Array.isArray(value))
    return value.map((item, i) => substituteEnv(item, env, issues, [...path, String(i)]));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [key, substituteEnv(item, env, issues, [...path, key])]),
    );
  }
  return value;
}

function zodIssues(error: z.ZodError): ConfigIssue[] {
  return error.issues.flatMap((issue) => {
    const base = issue.path.map(String);
    return issue.code === 'unrecognized_keys'
      ? issue.keys.map((key) => ({ path: [...base, key].join('.'), message: 'unknown option' }))
      : [{ path: base.join('.'), message: issue.message }];
  });
}

/** The filter's section is required, the other one is not; told even when the rest of the file is broken. */
function sectionIssues(raw: unknown): ConfigIssue[] {
  const file = (raw !== null && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const filter = file.filter ?? 'auth_token';
  if (filter === 'external_oauth2_token') {
    return file.ext_oauth2_auth === undefined
      ? [{ path: 'ext_oauth2_auth', message: 'is required when filter is external_oauth2_token' }]
      : [];
  }
  return file.keystone_authtoken === undefined
    ? [{ path: 'keystone_authtoken', message: `is required with filter ${String(filter)}` }]
    : [];
}

function crossIssues(config: ProxyConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (config.filter === 'external_oauth2_token' && config.ext_oauth2_auth !== undefined) {
    for (const issue of extCrossIssues(config.ext_oauth2_auth)) {
      issues.push({ path: `ext_oauth2_auth.${issue.path}`, message: issue.message });
    }
  }
  if ((config.listen === undefined) !== (config.upstream === undefined)) {
    issues.push({
      path: config.listen === undefined ? 'listen' : 'upstream',
      message: 'listen and upstream go together',
    });
  }
  if (config.listen === undefined && !config.forward_auth.enabled) {
    issues.push({ path: 'listen', message: 'is required unless forward_auth is enabled' });
  }
  const ports = [
    ['listen', config.listen],
    ['admin_listen', config.admin_listen],
    ['forward_auth.listen', config.forward_auth.listen],
  ] as const;
  for (let i = 0; i < ports.length; i++) {
    for (let j = i + 1; j < ports.length; j++) {
      const [nameA, a] = ports[i] as (typeof ports)[number];
      const [nameB, b] = ports[j] as (typeof ports)[number];
      if (a !== undefined && b !== undefined && a.port !== 0 && a.port === b.port) {
        issues.push({ path: `${nameB}.port`, message: `must differ from ${nameA}.port` });
      }
    }
  }
  return issues;
}

/** Validates an already-parsed document (e.g. from tests); throws one ConfigError with every problem. */
export function resolveProxyConfig(
  raw: unknown,
  env: Env = process.env,
  source = 'configuration',
): ProxyConfig {
  const issues: ConfigIssue[] = [];
  const substituted = substituteEnv(raw ?? {}, env, issues);
  const parsed = proxyConfigSchema.safeParse(substituted);
  issues.push(...sectionIssues(substituted));
  if (!parsed.success) issues.push(...zodIssues(parsed.error));
  else issues.push(...crossIssues(parsed.data));
  if (issues.length > 0 || !parsed.success) throw new ConfigError(issues, `invalid ${source}`);
  return parsed.data;
}

/** Reads and validates a YAML file. YAML syntax errors are reported with their line. */
export function loadProxyConfig(file: string, env: Env = process.env): ProxyConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(
      [{ path: '', message: `cannot read ${file}: ${(error as Error).message}` }],
      `invalid ${file}`,
    );
  }
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new ConfigError(
      document.errors.map((error) => ({
        path: error.linePos ? `line ${error.linePos[0].line}` : '',
        message: error.message.split('\n')[0] ?? error.message,
      })),
      `invalid YAML in ${file}`,
    );
  }
  return resolveProxyConfig(document.toJS(), env, file);
}

export interface ConfigDoc {
  readonly path: string;
  readonly default: string;
  readonly description: string;
}

/** One row per leaf key of the file (the keystone_authtoken section has its own table), for the README. */
export function describeProxyConfig(): ConfigDoc[] {
  const rows: ConfigDoc[] = [];
  const walk = (schema: z.ZodType, path: string, inherited: string, fallback: unknown): void => {
    let inner: z.ZodType = schema;
    let description = schema.description ?? inherited;
    let dflt = fallback;
    // Unwrap optional/default/pipe layers to reach the object or leaf, keeping the outermost description.
    for (let depth = 0; depth < 6; depth++) {
      const def = (
        inner as unknown as {
          def: {
            type: string;
            innerType?: z.ZodType;
            defaultValue?: unknown;
            in?: z.ZodType;
            element?: z.ZodType;
          };
        }
      ).def;
      if (def.type === 'default') {
        dflt ??=
          typeof def.defaultValue === 'function' ? (def.defaultValue as () => unknown)() : def.defaultValue;
        inner = def.innerType as z.ZodType;
      } else if (def.type === 'optional' || def.type === 'nullable') inner = def.innerType as z.ZodType;
      else break;
      description ||= inner.description ?? '';
    }
    if (inner instanceof z.ZodObject && path !== 'keystone_authtoken') {
      for (const [key, child] of Object.entries(inner.shape)) {
        const childDefault =
          dflt !== undefined && typeof dflt === 'object' ? (dflt as Record<string, unknown>)[key] : undefined;
        walk(child as z.ZodType, path ? `${path}.${key}` : key, '', childDefault);
      }
      return;
    }
    if (inner instanceof z.ZodArray && path === 'public_routes') {
      rows.push({ path, default: JSON.stringify(dflt ?? []), description });
      walk(inner.element as z.ZodType, `${path}[]`, '', undefined);
      return;
    }
    rows.push({ path, default: dflt === undefined ? '' : JSON.stringify(dflt), description });
  };
  walk(proxyConfigSchema, '', '', undefined);
  return rows;
}
