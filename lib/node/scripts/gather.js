'use strict';
// Fills vendor/ with what the addon compiles and the repository does not
// commit here: h2rev's C sources (from the repository this package lives
// in) and llhttp's generated C sources (from Debian's node-llhttp package:
// /usr/share/llhttp, /usr/share/include/llhttp). Runs before a pack
// (prepack) and before a build from the repository; in an installed
// package (no repository around it) vendor/ is already there.
const fs = require('node:fs');
const path = require('node:path');

const pkg = path.join(__dirname, '..');
const vendor = path.join(pkg, 'vendor');
const repo = process.env.H2REV_SOURCE || path.join(pkg, '..', '..');
const llhttpSrc = process.env.H2REV_LLHTTP_SRC_DIR || '/usr/share/llhttp';
const llhttpInc = process.env.H2REV_LLHTTP_INCLUDE_DIR || '/usr/share/include/llhttp';

function copy(from, to) {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
}

function fail(msg) {
  console.error(`h2rev: ${msg}`);
  process.exit(1);
}

const inRepo = fs.existsSync(path.join(repo, 'include', 'h2rev.h')) &&
  fs.existsSync(path.join(repo, 'lib', 'internal.h'));
if (!inRepo) {
  if (fs.existsSync(path.join(vendor, 'h2rev', 'include', 'h2rev.h')) &&
      fs.existsSync(path.join(vendor, 'llhttp', 'llhttp.h')))
    process.exit(0);
  fail('no h2rev sources: set H2REV_SOURCE to the repository, or install from a packed tarball');
}

fs.rmSync(vendor, { recursive: true, force: true });
copy(path.join(repo, 'include', 'h2rev.h'), path.join(vendor, 'h2rev', 'include', 'h2rev.h'));
for (const f of fs.readdirSync(path.join(repo, 'lib'))) {
  if (/\.[ch]$/.test(f))
    copy(path.join(repo, 'lib', f), path.join(vendor, 'h2rev', 'lib', f));
}

for (const f of ['api.c', 'http.c', 'llhttp.c']) {
  const from = path.join(llhttpSrc, f);
  if (!fs.existsSync(from))
    fail(`${from} not found: install Debian's node-llhttp (deps/install.sh) or set H2REV_LLHTTP_SRC_DIR`);
  copy(from, path.join(vendor, 'llhttp', f));
}
const header = path.join(llhttpInc, 'llhttp.h');
if (!fs.existsSync(header))
  fail(`${header} not found: install Debian's node-llhttp or set H2REV_LLHTTP_INCLUDE_DIR`);
copy(header, path.join(vendor, 'llhttp', 'llhttp.h'));
const copyright = '/usr/share/doc/node-llhttp/copyright';
if (fs.existsSync(copyright))
  copy(copyright, path.join(vendor, 'llhttp', 'COPYRIGHT'));
