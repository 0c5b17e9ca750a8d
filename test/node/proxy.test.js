'use strict';
// The reverse proxy end to end: Node's clients (fetch, node:http2) through
// <dialer>/proxy/<id>/ to a Node http.Server exposed with forward().
const { test } = require('node:test');
const assert = require('node:assert/strict');
const http2 = require('node:http2');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { h2rev, dialer, httpServer } = require('./helpers');

function backend() {
  return httpServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      res.setHeader('x-seen-path', req.url);
      res.end(`${req.method} ${req.url} ${body.length} ${req.headers['x-forwarded-prefix']}`);
    });
  });
}

test('fetch and http2 through forward() reach a Node http.Server', async () => {
  const srv = await backend();
  const d = await dialer();
  const attachedIds = [];
  d.on('attach', (info) => attachedIds.push(info.id));
  const fw = await h2rev.forward({ url: d.url, id: 'app', to: srv.url });
  assert.equal(fw.url, `${d.url}/proxy/app/`);
  assert.deepEqual(attachedIds, ['app']);

  const r = await fetch(`${fw.url}hello?x=1`);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'GET /hello?x=1 0 /proxy/app');

  const post = await fetch(`${fw.url}up`, { method: 'POST', body: 'x'.repeat(100000) });
  assert.equal(await post.text(), 'POST /up 100000 /proxy/app');

  // 50 at once over fetch's pool.
  const many = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    fetch(`${fw.url}n/${i}`).then((res) => res.text())));
  many.forEach((t, i) => assert.equal(t, `GET /n/${i} 0 /proxy/app`));

  // HTTP/2 with prior knowledge (the dialer is cleartext here).
  const client = http2.connect(d.url);
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => new Promise((resolve, reject) => {
    const req = client.request({ ':path': `/proxy/app/h2/${i}` });
    let data = '';
    let status;
    req.on('response', (h) => { status = h[':status']; });
    req.setEncoding('utf8');
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve([status, data]));
    req.on('error', reject);
    req.end();
  })));
  client.close();
  answers.forEach(([status, data], i) => {
    assert.equal(status, 200);
    assert.equal(data, `GET /h2/${i} 0 /proxy/app`);
  });

  await fw.close();
  const gone = await fetch(`${fw.url}after`);
  assert.equal(gone.status, 502);
  await d.close();
  srv.close();
  assert.equal(h2rev._live(), 0);
});

function haveOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('TLS: cert and key as file paths, the listener trusts the CA given as PEM text; a wrong token is refused',
  { skip: !haveOpenssl() && 'no openssl' }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'h2rev-node-'));
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
      '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    const srv = await backend();
    const d = await dialer({ cert, key, token: 's3cret' });
    assert.match(d.url, /^https:/);

    const refused = await h2rev.forward({ url: d.url, id: 'tls', token: 'wrong',
      ca: fs.readFileSync(cert), to: srv.url }).then(() => null, (e) => e);
    assert.ok(refused instanceof Error);
    assert.equal(refused.code, 'EFORBIDDEN');

    const untrusted = await h2rev.forward({ url: d.url, id: 'tls', token: 's3cret', to: srv.url })
      .then(() => null, (e) => e);
    assert.equal(untrusted && untrusted.code, 'ECERT');

    const fw = await h2rev.forward({ url: d.url, id: 'tls', token: 's3cret',
      ca: fs.readFileSync(cert, 'utf8'), to: srv.url });
    const client = http2.connect(d.url, { ca: fs.readFileSync(cert) });
    const text = await new Promise((resolve, reject) => {
      const req = client.request({ ':path': '/proxy/tls/secure' });
      let data = '';
      req.setEncoding('utf8');
      req.on('data', (c) => { data += c; });
      req.on('end', () => resolve(data));
      req.on('error', reject);
      req.end();
    });
    client.close();
    assert.equal(text, 'GET /secure 0 /proxy/tls');
    await fw.close();
    await d.close();
    srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
