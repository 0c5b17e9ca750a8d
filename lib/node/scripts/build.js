'use strict';
// `npm install`'s build step: node-gyp, offline. node-gyp downloads Node's
// headers unless told where they are: the headers of the Node running this
// script (<prefix>/include/node, as Debian, NodeSource and the official
// tarballs install them) are used when present.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const pkg = path.join(__dirname, '..');

let r = spawnSync(process.execPath, [path.join(__dirname, 'gather.js')], { stdio: 'inherit' });
if (r.status !== 0)
  process.exit(r.status || 1);

function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules',
      'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/share/nodejs/node-gyp/bin/node-gyp.js',
  ];
  for (const c of candidates) {
    if (c && fs.existsSync(c))
      return c;
  }
  try {
    return require.resolve('node-gyp/bin/node-gyp.js');
  } catch {
    console.error('h2rev: node-gyp not found (it comes with npm)');
    process.exit(1);
  }
}

const args = [nodeGyp(), 'rebuild'];
const nodedir = process.env.npm_config_nodedir ||
  path.join(path.dirname(process.execPath), '..');
if (fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h')))
  args.push(`--nodedir=${nodedir}`);
const jobs = process.env.JOBS ||
  String(os.availableParallelism ? os.availableParallelism() : os.cpus().length);
args.push(`--jobs=${jobs}`);
r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: pkg });
process.exit(r.status === null ? 1 : r.status);
