// The upstream for benchmarks: a fixed small JSON body on every path, keep-alive. Prints its port.
import { createServer } from 'node:http';

const body = JSON.stringify({ servers: [{ id: 'a1b2c3', name: 'vm-1', status: 'ACTIVE' }] });
const server = createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => console.log(server.address().port));
