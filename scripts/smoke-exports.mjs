// Loads every public entry point from dist/ the way a user's `import` would, and checks the main factories exist.
import * as root from 'keystone-auth-proxy';
import * as express from 'keystone-auth-proxy/express';
import * as koa from 'keystone-auth-proxy/koa';
import * as testing from 'keystone-auth-proxy/testing';

const checks = [
  ['createAuthenticator', root.createAuthenticator],
  ['createAuthTokenHandler', root.createAuthTokenHandler],
  ['createExpressAuth', express.createExpressAuth],
  ['createKoaAuth', koa.createKoaAuth],
  ['createAuthTokenFixture', testing.createAuthTokenFixture],
];
for (const [name, value] of checks) {
  if (typeof value !== 'function') {
    console.error(`export ${name} missing`);
    process.exit(1);
  }
}
console.log(`exports ok (version ${root.VERSION})`);
