'use strict';
// Reverse connections as Duplex streams: a Node http.Server served on the
// listener's accepted streams, a 16 MiB echo through pipe(), back-pressure.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const { once } = require('node:events');
const { pipeline } = require('node:stream/promises');
const { h2rev, dialer, attached } = require('./helpers');

test('a Node http.Server serves the accepted Duplexes (listen() + emit("connection"))', async () => {
  const d = await dialer();
  const l = h2rev.listen({ url: d.url, id: 'web' });
  const server = http.createServer((req, res) => {
    let n = 0;
    req.on('data', (c) => { n += c.length; });
    req.on('end', () => res.end(`${req.method} ${req.url} ${n} via ${req.socket.remoteId}`));
  });
  l.on('connection', (sock) => server.emit('connection', sock));
  await attached(l);

  const r = await fetch(`${d.url}/proxy/web/a/b?c=d`);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'GET /a/b?c=d 0 via web');
  const big = Buffer.alloc(3 << 20, 7);
  const p = await fetch(`${d.url}/proxy/web/upload`, { method: 'PUT', body: big });
  assert.equal(await p.text(), `PUT /upload ${big.length} via web`);
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    fetch(`${d.url}/proxy/web/${i}`).then((res) => res.text())));
  many.forEach((t, i) => assert.equal(t, `GET /${i} 0 via web`));

  await l.close();
  await d.close();
  server.close();
});

test('16 MiB echo through pipe() arrives whole (SHA-256)', async () => {
  const d = await dialer();
  const l = h2rev.listen({ url: d.url, id: 'echo' });
  l.on('connection', (sock) => sock.pipe(sock));
  await attached(l);

  const sock = await d.dial('echo', { timeout: 5000 });
  const size = 16 << 20;
  const data = crypto.randomBytes(size);
  const sent = crypto.createHash('sha256').update(data).digest('hex');
  const got = crypto.createHash('sha256');
  let n = 0;
  sock.on('data', (c) => { n += c.length; got.update(c); });
  const ended = once(sock, 'end');
  // In pieces, as a file stream would write them.
  const CHUNK = 256 * 1024;
  (async () => {
    for (let off = 0; off < size; off += CHUNK) {
      if (!sock.write(data.subarray(off, off + CHUNK)))
        await once(sock, 'drain');
    }
    sock.end();
  })();
  await ended;
  assert.equal(n, size);
  assert.equal(got.digest('hex'), sent);
  await once(sock, 'close');

  await l.close();
  await d.close();
  assert.equal(h2rev._live(), 0);
});

test('back-pressure: a paused reader stops the writer (write() returns false), memory stays bounded', async () => {
  const d = await dialer();
  const l = h2rev.listen({ url: d.url, id: 'slow' });
  const accepted = once(l, 'connection');
  await attached(l);
  const sock = await d.dial('slow');
  sock.write('x');
  const [peer] = await accepted;
  peer.pause();

  // Write until write() says stop and 'drain' does not come: the bytes in
  // flight are bounded by the HTTP/2 windows and the streams' buffers.
  const chunk = Buffer.alloc(64 * 1024, 1);
  let written = 0;
  const before = process.memoryUsage().rss;
  for (;;) {
    const ok = sock.write(chunk);
    written += chunk.length;
    if (!ok) {
      const drained = await Promise.race([
        once(sock, 'drain').then(() => true),
        new Promise((r) => setTimeout(() => r(false), 500)),
      ]);
      if (!drained)
        break;
    }
    assert.ok(written < 64 << 20, `wrote ${written} bytes to a paused reader without a stop`);
  }
  assert.ok(sock.writableNeedDrain);
  assert.ok(written < 16 << 20, `${written} bytes accepted before the stop`);
  const grown = process.memoryUsage().rss - before;
  assert.ok(grown < 64 << 20, `RSS grew by ${grown} bytes`);

  // The reader resumes: everything arrives, in order.
  let received = 0;
  peer.on('data', (c) => { received += c.length; });
  peer.resume();
  sock.end();
  await once(peer, 'end');
  assert.equal(received, written + 1);
  peer.end();
  sock.resume();
  await once(sock, 'close');
  await l.close();
  await d.close();
});

test('pipeline() between two Duplexes and half-close both ways', async () => {
  const d = await dialer();
  const l = h2rev.listen({ url: d.url, id: 'half' });
  l.on('connection', (sock) => {
    const parts = [];
    sock.on('data', (c) => parts.push(c));
    // The client's end came; the answer goes back after it.
    sock.on('end', () => sock.end(Buffer.concat(parts).toString().toUpperCase()));
  });
  await attached(l);
  const sock = await d.dial('half');
  sock.end('hello, reverse world');
  const out = [];
  await pipeline(sock, async function* (src) {
    for await (const c of src)
      out.push(c);
  });
  assert.equal(Buffer.concat(out).toString(), 'HELLO, REVERSE WORLD');
  await l.close();
  await d.close();
});
