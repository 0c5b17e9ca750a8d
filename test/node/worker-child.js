'use strict';
// Run by worker.test.js in a process of its own (a crash must not take the
// test runner with it): h2rev in Workers, N rounds of
//  - two Workers in a row, each a whole tunnel (dialer, forward(), an HTTP request)
//    closed properly;
//  - a Worker terminated with everything open: a dialer, a listener
//    attached to the main thread's dialer, a stream the main thread dialed
//    and is writing to, a dial pending, a listener connecting (a name
//    resolution on the thread pool), fs work filling the thread pool;
//  - after each, the main thread's own h2rev and fs still work.
// Prints "rounds N" and exits 0 when all went well.
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const http = require('node:http');
const { once } = require('node:events');
const { h2rev, dialer, attached, httpServer } = require('./helpers');

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

async function workerMain() {
  if (workerData.mode === 'tunnel') {
    const srv = await httpServer((req, res) => res.end(`worker ${req.url}`));
    const d = await dialer();
    const fw = await h2rev.forward({ url: d.url, id: 'w', to: srv.url });
    // http.get, not fetch: loading fetch's undici in every Worker costs more
    // than the whole tunnel.
    const text = await get(`${fw.url}x`);
    await fw.close();
    await d.close();
    srv.close();
    parentPort.postMessage({ text, live: h2rev._live() });
    return;
  }
  // 'terminate': open everything, say so, and keep busy until killed.
  const d = await dialer();
  const mine = h2rev.listen({ url: d.url, id: 'self' });
  mine.on('connection', (s) => s.pipe(s));
  await attached(mine);
  const echo = await d.dial('self');
  echo.on('data', () => {});
  setInterval(() => echo.write(Buffer.alloc(4096)), 1);
  d.dial('nobody-yet', { timeout: 60000 }).catch(() => {});
  const l = h2rev.listen({ url: workerData.mainUrl, id: `t${workerData.round}` });
  l.on('connection', (s) => {
    s.on('data', () => s.write(Buffer.alloc(8192)));
  });
  h2rev.listen({ url: 'http://localhost:9/', id: 'unreachable' });
  for (let i = 0; i < 8; i++)
    fs.readFile(__filename, () => {});
  await attached(l);
  parentPort.postMessage('ready');
}

async function round(mainDialer, i) {
  for (let k = 0; k < 2; k++) {
    const w = new Worker(__filename, { workerData: { mode: 'tunnel' } });
    const [msg] = await once(w, 'message');
    if (msg.text !== 'worker /x' || msg.live !== 0)
      throw new Error(`tunnel worker said ${JSON.stringify(msg)}`);
    const [code] = await once(w, 'exit');
    if (code !== 0)
      throw new Error(`tunnel worker exit ${code}`);
  }
  const w = new Worker(__filename, {
    workerData: { mode: 'terminate', mainUrl: mainDialer.url, round: i },
  });
  const [msg] = await once(w, 'message');
  if (msg !== 'ready')
    throw new Error(`worker said ${msg}`);
  const s = await mainDialer.dial(`t${i}`);
  const gone = new Promise((resolve) => {
    s.on('error', resolve);
    s.on('close', resolve);
  });
  s.on('data', () => {});
  s.write('go');
  await w.terminate();
  await gone;
  // The symptom of a second libuv: the next fs call aborted.
  fs.readFileSync(__filename);
  await fs.promises.readFile(__filename);
}

async function main() {
  const n = Number(process.argv[2] || 20);
  const mainDialer = await dialer();
  for (let i = 0; i < n; i++)
    await round(mainDialer, i);
  // The main thread's own tunnel still works after all that.
  const srv = http.createServer((req, res) => res.end('main'));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const fw = await h2rev.forward({ url: mainDialer.url, id: 'main',
    to: `http://127.0.0.1:${srv.address().port}` });
  const text = await get(fw.url);
  if (text !== 'main')
    throw new Error(`main tunnel said ${text}`);
  await fw.close();
  await mainDialer.close();
  srv.close();
  console.log(`rounds ${n}`);
}

if (isMainThread) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  workerMain();
}
