'use strict';
// Errors as Error objects with a code, and ref()/unref() as Node's handles.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const http2 = require('node:http2');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { h2rev, pkgDir, dialer, attached } = require('./helpers');

test('errors: ENOLISTENER, ETIMEDOUT, EADDRINUSE, bad options', async () => {
  const d = await dialer();

  const none = await d.dial('nobody').then(() => null, (e) => e);
  assert.ok(none instanceof Error);
  assert.equal(none.code, 'ENOLISTENER');
  assert.equal(typeof none.errno, 'number');

  // A listener that attaches (its control stream) but never opens a data
  // stream: the dial waits for one, then times out.
  const client = http2.connect(d.url);
  const attachedEvent = new Promise((resolve) => d.once('attach', resolve));
  const control = client.request({ ':method': 'GET', ':path': '/revdial?id=mute' },
    { endStream: false });
  control.on('data', () => {});
  assert.equal((await attachedEvent).id, 'mute');
  const t0 = Date.now();
  const late = await d.dial('mute', { timeout: 300 }).then(() => null, (e) => e);
  assert.equal(late && late.code, 'ETIMEDOUT');
  assert.ok(Date.now() - t0 >= 250, `timed out after ${Date.now() - t0} ms`);
  const detached = new Promise((resolve) => d.once('detach', resolve));
  client.destroy();
  assert.equal((await detached).id, 'mute');

  const other = h2rev.createDialer({ cleartext: true });
  const err = await new Promise((resolve) => {
    other.once('error', resolve);
    other.listen(d.address().port, '127.0.0.1');
  });
  assert.equal(err.code, 'EADDRINUSE');
  await other.close();

  assert.throws(() => h2rev.createDialer({}), TypeError);
  assert.throws(() => h2rev.listen({ url: d.url }), TypeError);
  assert.throws(() => h2rev.listen({ url: 'ftp://x', id: 'a' }), { code: 'EURL' });
  await assert.rejects(d.dial('bad id with spaces'), { code: 'EBADID' });

  await d.close();
  await assert.rejects(d.dial('x'), { code: 'EBADF' });
  assert.equal(h2rev._live(), 0);
});

test('a stream of a listener that goes away ends with an error, not silence', async () => {
  const d = await dialer();
  const l = h2rev.listen({ url: d.url, id: 'gone' });
  const accepted = new Promise((resolve) => l.on('connection', resolve));
  await attached(l);
  const s = await d.dial('gone');
  s.write('x');
  s.resume();
  const peer = await accepted;
  peer.resume();
  const failed = new Promise((resolve) => s.on('error', resolve));
  const peerFailed = new Promise((resolve) => peer.on('error', resolve));
  await l.close();
  const err = await failed;
  assert.ok(['ECLOSED', 'ERESET', 'EGOAWAY'].includes(err.code), err.code);
  assert.equal((await peerFailed).code, 'ECLOSED');
  await d.close();
});

function runChild(code) {
  return spawnSync(process.execPath, ['-e', code], {
    encoding: 'utf8',
    timeout: 20000,
    env: { ...process.env, H2REV_NODE_PKG: pkgDir },
  });
}

const setup = `
  const h2rev = require(process.env.H2REV_NODE_PKG);
  const http = require('node:http');
  const srv = http.createServer((q, s) => s.end('ok')).listen(0, '127.0.0.1', async () => {
    const d = h2rev.createDialer({ cleartext: true }).listen(0, '127.0.0.1', async () => {
      const url = 'http://127.0.0.1:' + d.address().port;
      const fw = await h2rev.forward({ url, id: 'u', to: 'http://127.0.0.1:' + srv.address().port });
      // http.get without keep-alive: fetch's pooled socket would hold the
      // process for seconds whatever h2rev does.
      const body = await new Promise((resolve) => http.get(url + '/proxy/u/', { agent: false },
        (res) => { let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => resolve(b)); }));
      console.log(body);
      srv.close();
      UNREF
    });
  });`;

test('unref(): an unref\'d dialer and forwarder let the process exit; ref\'d ones keep it', () => {
  const t0 = Date.now();
  const r = runChild(setup.replace('UNREF', 'd.unref(); fw.unref();'));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'ok');
  assert.ok(Date.now() - t0 < 5000, `exited after ${Date.now() - t0} ms`);

  const kept = runChild(setup.replace('UNREF',
    'setTimeout(() => { console.log("still running"); process.exit(3); }, 1500).unref();'));
  assert.equal(kept.stdout.trim(), 'ok\nstill running');
  assert.equal(kept.status, 3);
});
