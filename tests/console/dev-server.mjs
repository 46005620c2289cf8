// Development only: serves a built console directory and proxies /api/ to a
// coordinator, on one origin, the way `ferry-coordinator run --console-dir`
// serves it. Paths without a dot fall back to index.html.
//   node dev-server.mjs DIR COORDINATOR_URL [PORT]   (prints its URL when listening)
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';

const [dir, upstream, port = '0'] = process.argv.slice(2);
if (!dir || !upstream) {
  console.error('usage: node dev-server.mjs DIR COORDINATOR_URL [PORT]');
  process.exit(2);
}
const up = new URL(upstream);
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.map': 'application/json', '.txt': 'text/plain; charset=utf-8' };

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path.startsWith('/api/')) {
    const p = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    p.on('error', (e) => { res.writeHead(502, { 'Content-Type': 'application/json' }); res.end(JSON.stringify({ error: { kind: 'internal', message: e.message } })); });
    req.pipe(p);
    return;
  }
  let file = normalize(path).replace(/^(\.\.[/\\])+/, '');
  if (file === '/' || !extname(file)) file = '/index.html';
  try {
    const body = await readFile(join(dir, file));
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream', 'X-Content-Type-Options': 'nosniff' });
    res.end(body);
  } catch {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found');
  }
});
server.listen(+port, '127.0.0.1', () => console.log(`http://127.0.0.1:${server.address().port}`));
