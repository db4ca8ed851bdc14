import { readFileSync } from 'node:fs';

/** The package version, read once: from dist/ and from src/ alike, package.json is one level up. */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export const USER_AGENT = `keystone-auth-proxy/${VERSION}`;
