#!/usr/bin/env node
'use strict';
// Small requests from Node's HTTP client (keep-alive agent) to a Node
// http.Server, on loopback: directly, through the Node addon's tunnel (an
// addon dialer and forward() in one Node process), and through the C tools
// (h2rev-dialer, h2rev-listener). Prints one table: sequential requests
// (one at a time) and concurrent ones (CONC in flight), req/s and median
// latency. The upstream, the tunnel and the client are separate processes.
//
//   node bench/node.js [N]     N requests per figure (default 20000)
// Env: H2REV_NODE_PKG (default lib/node, built), H2REV_BIN (default build/bin),
// CONC (default 32).
const { spawn } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');
const { once } = require('node:events');

const N = Number(process.argv[2] || 20000);
const CONC = Number(process.env.CONC || 32);
const src = path.join(__dirname, '..');
const pkg = process.env.H2REV_NODE_PKG || path.join(src, 'lib', 'node');
const bin = process.env.H2REV_BIN || path.join(src, 'build', 'bin');
const children = [];

function node(code, env = {}) {
  const c = spawn(process.execPath, ['-e', code], {
    env: { ...process.env, H2REV_NODE_PKG: pkg, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(c);
  return c;
}

async function firstLine(child) {
  let buf = '';
  for await (const chunk of child.stdout) {
    buf += chunk;
    if (buf.includes('\n'))
      return buf.split('\n')[0];
  }
  throw new Error('child ended early');
}

function freePort() {
  return new Promise((resolve) => {
    const s = http.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(url) {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      http.get(url, { agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      }).on('error', () => resolve(false));
    });
    if (ok)
      return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} never answered 200`);
}

async function run(url, n, conc) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
  const lat = [];
  let next = 0;
  let failed = 0;
  const one = () => new Promise((resolve) => {
    const t = process.hrtime.bigint();
    http.get(url, { agent }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200)
          failed++;
        lat.push(Number(process.hrtime.bigint() - t) / 1e6);
        resolve();
      });
    }).on('error', () => { failed++; resolve(); });
  });
  const worker = async () => {
    while (next++ < n)
      await one();
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: conc }, worker));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { rps: n / secs, p50: lat[Math.floor(lat.length / 2)], failed };
}

async function main() {
  const up = node(`
    const s = require('node:http').createServer((q, r) => r.end('ok'));
    s.keepAliveTimeout = 60000;
    s.listen(0, '127.0.0.1', () => console.log(s.address().port));`);
  const upPort = Number(await firstLine(up));
  const upstream = `http://127.0.0.1:${upPort}`;

  const addon = node(`
    const h2rev = require(process.env.H2REV_NODE_PKG);
    const d = h2rev.createDialer({ cleartext: true }).listen(0, '127.0.0.1', async () => {
      const url = 'http://127.0.0.1:' + d.address().port;
      await h2rev.forward({ url, id: 'bench', to: '${upstream}' });
      console.log(url);
    });`);
  const addonBase = await firstLine(addon);

  const cPort = await freePort();
  children.push(spawn(path.join(bin, 'h2rev-dialer'),
    ['--cleartext', '--listen', `127.0.0.1:${cPort}`, '--log-level', 'error'], { stdio: 'inherit' }));
  children.push(spawn(path.join(bin, 'h2rev-listener'),
    ['--url', `http://127.0.0.1:${cPort}`, '--id', 'bench', '--upstream', upstream,
      '--log-level', 'error'], { stdio: 'inherit' }));
  const cBase = `http://127.0.0.1:${cPort}`;

  const paths = [
    ['direct', `${upstream}/`],
    ['Node addon tunnel', `${addonBase}/proxy/bench/`],
    ['C tools tunnel', `${cBase}/proxy/bench/`],
  ];
  for (const [, url] of paths)
    await waitFor(url);
  const rows = [];
  for (const [name, url] of paths) {
    await run(url, Math.min(1000, N), 4); // warm-up
    const seq = await run(url, N, 1);
    const par = await run(url, N, CONC);
    rows.push([name, seq, par]);
  }
  const f = (x) => x.toFixed(0).padStart(8);
  console.log(`small GETs from Node's http client, ${N} per figure, loopback; concurrent: ${CONC} in flight`);
  console.log('| path | sequential req/s | p50 ms | concurrent req/s | p50 ms | failed |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const [name, seq, par] of rows) {
    console.log(`| ${name} | ${f(seq.rps)} | ${seq.p50.toFixed(2)} | ${f(par.rps)} | ` +
      `${par.p50.toFixed(2)} | ${seq.failed + par.failed} |`);
  }
}

main().then(() => {
  for (const c of children)
    c.kill();
}, (err) => {
  console.error(err);
  for (const c of children)
    c.kill();
  process.exit(1);
});
