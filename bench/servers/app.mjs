// Middleware-mode benchmark app: `express` or `node`, with our middleware (`auth`), without (`bare`), or (Express)
// with an empty middleware (`noop`), answering
// the same fixed small body. Usage: node app.mjs <express|node> <auth|bare> <keystone url>. Prints its port.
import { createServer } from 'node:http';
import express from 'express';
import { createExpressAuth } from '../../dist/express.js';
import { createAuthTokenHandler } from '../../dist/index.js';

const [framework, mode, keystone] = process.argv.slice(2);
const options = {
  www_authenticate_uri: keystone,
  auth_url: keystone,
  username: 'proxy',
  password: 'proxy-secret',
  user_domain_name: 'Default',
  project_name: 'service',
  project_domain_name: 'Default',
};
const body = JSON.stringify({ servers: [{ id: 'a1b2c3', name: 'vm-1', status: 'ACTIVE' }] });
let server;
if (framework === 'express') {
  const app = express();
  if (mode === 'auth') app.use(createExpressAuth(options));
  // An empty middleware: what one more layer costs in Express, whatever it does.
  if (mode === 'noop') app.use((_req, _res, next) => next());
  app.get('/v1', (_req, res) => res.type('application/json').send(body));
  server = createServer(app);
} else {
  const auth = mode === 'auth' ? createAuthTokenHandler(options) : undefined;
  const answer = (res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  server = createServer((req, res) => (auth ? auth(req, res, () => answer(res)) : answer(res)));
}
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
// A clean exit on SIGINT or SIGTERM (the bench driver's) lets --cpu-prof write its profile.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
