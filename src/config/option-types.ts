/**
 * The value types shared by the option schemas (`keystone_authtoken`, `ext_oauth2_auth`): oslo.config's spellings
 * (booleans as `True`/`yes`, lists as comma strings, numbers as strings) converted, with messages that name the rule.
 */
import { z } from 'zod';
import type { ConfigIssue } from '../errors.js';

const TRUE = new Set(['true', '1', 'yes', 'on']);
const FALSE = new Set(['false', '0', 'no', 'off']);

/** oslo.config accepts True/false/yes/1 in files; YAML may hand those over as strings. */
export const bool = z.union([
  z.boolean(),
  z
    .string()
    .refine((s) => TRUE.has(s.toLowerCase()) || FALSE.has(s.toLowerCase()), {
      message: 'must be true or false',
    })
    .transform((s) => TRUE.has(s.toLowerCase())),
]);

export const numberLike = z.union([
  z.number(),
  z
    .string()
    .trim()
    .regex(/^-?\d+(\.\d+)?$/, { message: 'must be a number' })
    .transform(Number),
]);
export const seconds = numberLike.pipe(z.number().finite());
export const positiveSeconds = seconds.pipe(
  z.number().positive({ message: 'must be greater than 0 (seconds)' }),
);
export const count = numberLike.pipe(z.number().int({ message: 'must be a whole number' }).min(0));

/** oslo ListOpt: a comma-separated string, or a YAML list. */
export const list = z.union([
  z.array(z.string()),
  z.string().transform((s) =>
    s
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item.length > 0),
  ),
]);

export const url = z.string().refine(
  (s) => {
    try {
      const parsed = new URL(s);
      return parsed.protocol === 'http:' || parsed.protocol === 'https:';
    } catch {
      return false;
    }
  },
  { message: 'must be an http(s) URL' },
);
export const text = z.string().min(1, { message: 'must not be empty' });

const SECURITY_STRATEGIES = new Set(['none', 'mac', 'encrypt']);
/** The spelling is kept: keystonemiddleware derives its memcached keys from the string as configured. */
export const securityStrategy = z.string().refine((s) => SECURITY_STRATEGIES.has(s.toLowerCase()), {
  message: 'must be None, MAC or ENCRYPT',
});

/** Zod issues → dotted paths under `prefix`; an unknown key is reported under its own name. */
export function toIssues(error: z.ZodError, prefix: string): ConfigIssue[] {
  const join = (parts: readonly PropertyKey[]): string =>
    [prefix, ...parts.map(String)].filter((part) => part.length > 0).join('.');
  return error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((key) => ({ path: join([...issue.path, key]), message: 'unknown option' }))
      : [{ path: join(issue.path), message: issue.message }],
  );
}
