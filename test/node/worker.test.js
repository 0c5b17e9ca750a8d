'use strict';
// h2rev in Workers (see worker-child.js): H2REV_NODE_WORKER_RUNS runs
// (default 1) of H2REV_NODE_WORKER_ROUNDS rounds (default 20), each run a
// process of its own that must exit 0.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const runs = Number(process.env.H2REV_NODE_WORKER_RUNS || 1);
const rounds = Number(process.env.H2REV_NODE_WORKER_ROUNDS || 20);

test(`Workers: ${runs} run(s) of ${rounds}: tunnels in two Workers in a row, a Worker terminated with handles open, nothing crashes`, () => {
  for (let i = 0; i < runs; i++) {
    const r = spawnSync(process.execPath, [path.join(__dirname, 'worker-child.js'), String(rounds)],
      { encoding: 'utf8', timeout: 150000 });
    assert.equal(r.signal, null, `run ${i}: killed by ${r.signal}\n${r.stderr}`);
    assert.equal(r.status, 0, `run ${i}: exit ${r.status}\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, new RegExp(`rounds ${rounds}`));
  }
});
