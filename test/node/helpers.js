'use strict';
// Shared by the tests of the Node.js package: which h2rev to test (the
// package ctest installed from the packed tarball, H2REV_NODE_PKG, else the
// repository's lib/node built in place) and a dialer with a listener.
const path = require('node:path');
const http = require('node:http');
const { once } = require('node:events');

const pkgDir = process.env.H2REV_NODE_PKG || path.join(__dirname, '..', '..', 'lib', 'node');
const h2rev = require(pkgDir);

async function dialer(opts = { cleartext: true }) {
  const d = h2rev.createDialer(opts);
  d.listen(0, '127.0.0.1');
  await once(d, 'listening');
  const scheme = opts.cleartext ? 'http' : 'https';
  d.url = `${scheme}://127.0.0.1:${d.address().port}`;
  return d;
}

function attached(listener) {
  return new Promise((resolve, reject) => {
    const onState = (s) => {
      if (s.state === 'attached') {
        listener.removeListener('state', onState);
        resolve(listener);
      } else if (s.state === 'stopped') {
        reject(s.error || new Error('listener stopped'));
      }
    };
    listener.on('state', onState);
  });
}

async function httpServer(handler) {
  const srv = http.createServer(handler);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  srv.url = `http://127.0.0.1:${srv.address().port}`;
  return srv;
}

module.exports = { h2rev, pkgDir, dialer, attached, httpServer };
