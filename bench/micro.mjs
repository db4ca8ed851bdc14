// Cost of the engine on a cached token, without sockets: `authenticate` alone, and the node:http handler with its
// strip and inject steps. Run after `npm run build`: node bench/micro.mjs
import { createAuthenticator, createAuthTokenHandler } from '../dist/index.js';
import { createAuthTokenFixture } from '../dist/testing.js';

const fixture = createAuthTokenFixture();
const token = fixture.addToken({ userId: 'u1', projectId: 'p1', roles: ['member', 'reader'] });
const auth = createAuthenticator({ www_authenticate_uri: 'http://keystone' }, { validator: fixture });
const headers = { host: 'proxy', 'user-agent': 'wrk', accept: '*/*', 'x-auth-token': token };
const N = 200_000;

await auth.authenticate({ method: 'GET', path: '/v1', headers });
let started = performance.now();
for (let i = 0; i < N; i++) await auth.authenticate({ method: 'GET', path: '/v1', headers });
console.log(`authenticate, cached token: ${(((performance.now() - started) * 1000) / N).toFixed(2)} µs`);

// More identities in turn than the engine keeps built headers for (64): every request rebuilds them.
const many = Array.from({ length: 1_000 }, (_, i) =>
  fixture.addToken({ userId: `u${i}`, projectId: 'p1', roles: ['member', 'reader'] }),
);
const manyHeaders = many.map((t) => ({ ...headers, 'x-auth-token': t }));
for (const h of manyHeaders) await auth.authenticate({ method: 'GET', path: '/v1', headers: h });
started = performance.now();
for (let i = 0; i < N; i++)
  await auth.authenticate({ method: 'GET', path: '/v1', headers: manyHeaders[i % manyHeaders.length] });
console.log(
  `authenticate, 1,000 cached tokens in turn (headers rebuilt): ${(((performance.now() - started) * 1000) / N).toFixed(2)} µs`,
);

const handler = createAuthTokenHandler(auth);
const request = () => ({
  method: 'GET',
  url: '/v1',
  headers: { ...headers },
  rawHeaders: ['Host', 'proxy', 'User-Agent', 'wrk', 'Accept', '*/*', 'X-Auth-Token', token],
});
const response = { writeHead: () => response, end: () => undefined, headersSent: false };
started = performance.now();
for (let i = 0; i < N; i++)
  await new Promise((resolve) => handler(request(), Object.create(response), resolve));
console.log(
  `node:http handler (strip, authenticate, inject): ${(((performance.now() - started) * 1000) / N).toFixed(2)} µs`,
);

// The same cached token through the oauth2_token filter (Authorization: Bearer): the same cached path.
const oauth2 = createAuthenticator(
  { www_authenticate_uri: 'http://keystone', filter: 'oauth2_token' },
  { validator: fixture },
);
const bearerHeaders = { host: 'proxy', 'user-agent': 'wrk', accept: '*/*', authorization: `Bearer ${token}` };
await oauth2.authenticate({ method: 'GET', path: '/v1', headers: bearerHeaders });
started = performance.now();
for (let i = 0; i < N; i++) await oauth2.authenticate({ method: 'GET', path: '/v1', headers: bearerHeaders });
console.log(
  `authenticate, cached token, filter oauth2_token: ${(((performance.now() - started) * 1000) / N).toFixed(2)} µs`,
);
