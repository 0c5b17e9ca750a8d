'use strict';
// Prints the C sources of vendor/<part> for binding.gyp (gyp has no globs).
const fs = require('node:fs');
const path = require('node:path');

const part = process.argv[2];
const dir = part === 'llhttp' ? 'vendor/llhttp' : 'vendor/h2rev/lib';
const root = path.join(__dirname, '..');
const files = fs.readdirSync(path.join(root, dir)).filter((f) => f.endsWith('.c')).sort();
console.log(files.map((f) => `${dir}/${f}`).join(' '));
