'use strict';
// h2rev for Node.js: reverse connections over HTTP/2 on Node's own event loop.
// The native part (src/addon.c) runs the C library on the loop of the
// environment (main thread or Worker) that loads it; this file gives it
// Node's idiom: EventEmitters, Duplex streams, Promises.

const { EventEmitter } = require('node:events');
const { Duplex } = require('node:stream');
const fs = require('node:fs');
const path = require('node:path');

const native = require(process.env.H2REV_NODE_ADDON ||
  path.join(__dirname, 'build', 'Release', 'h2rev.node'));

// Event numbers of src/addon.c.
const EV_READ = 1;
const EV_EOF = 2;
const EV_ERROR = 3;
const EV_WRITE = 4;
const EV_SHUTDOWN = 5;
const EV_CLOSE = 6;
const EV_DIAL = 7;
const EV_ATTACH = 8;
const EV_DETACH = 9;
const EV_CONNECTION = 10;
const EV_STATE = 11;

const STATES = [undefined, 'connecting', 'attached', 'lost', 'retrying', 'stopped'];

// Native objects by id: the addon sends every event through one function.
const objects = new Map();
native.init((id, ev, a, b, c, d) => {
  const o = objects.get(id);
  if (o !== undefined)
    o._h2revEvent(ev, a, b, c, d);
});

function errorFromCode(code, message) {
  const name = native.errName(code);
  const err = new Error(message || native.strerror(code));
  err.code = name;
  err.errno = code;
  return err;
}

// PEM text from a string or Buffer of PEM, or from a file path.
function pem(value, what) {
  if (value === undefined || value === null)
    return undefined;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array)
    return Buffer.from(value).toString('utf8');
  if (Array.isArray(value))
    return value.map((v) => pem(v, what)).join('\n');
  if (typeof value !== 'string')
    throw new TypeError(`${what}: PEM text (string or Buffer) or a file path`);
  if (value.includes('-----BEGIN'))
    return value;
  return fs.readFileSync(value, 'utf8');
}

// One reverse connection: an HTTP/2 stream's bodies as a Duplex.
class H2RevStream extends Duplex {
  constructor(handle, id, info) {
    super({ allowHalfOpen: true });
    this._native = handle;
    this._id = id;
    this._reading = false;
    this._writes = []; // [chunks, cb] in order: completions come in order
    this._finalCb = null;
    this._closeCb = null;
    this.remoteId = info && info.id;
    this.remoteAddress = info && info.remoteAddress;
    objects.set(id, this);
  }

  get writeQueueSize() {
    return this._native ? native.writeQueueSize(this._native) : 0;
  }

  _h2revEvent(ev, a) {
    switch (ev) {
    case EV_READ:
      if (!this.push(a) && this._reading && this._native) {
        this._reading = false;
        native.readStop(this._native);
      }
      break;
    case EV_EOF:
      this._reading = false;
      this.push(null);
      break;
    case EV_ERROR:
      this.destroy(errorFromCode(a));
      break;
    case EV_WRITE: {
      const w = this._writes.shift();
      if (w && !this.destroyed)
        w[1](a ? errorFromCode(a) : null);
      break;
    }
    case EV_SHUTDOWN: {
      const cb = this._finalCb;
      this._finalCb = null;
      if (cb && !this.destroyed)
        cb(a ? errorFromCode(a) : null);
      break;
    }
    case EV_CLOSE: {
      objects.delete(this._id);
      const cb = this._closeCb;
      this._closeCb = null;
      if (cb)
        cb();
      break;
    }
    }
  }

  _read() {
    if (this._reading || !this._native)
      return;
    this._reading = true;
    const r = native.readStart(this._native);
    if (r !== 0) {
      this._reading = false;
      this.destroy(errorFromCode(r));
    }
  }

  _submit(chunks, cb) {
    if (!this._native)
      return cb(errorFromCode(-9)); // EBADF
    const r = native.write(this._native, chunks);
    if (r !== 0)
      return cb(errorFromCode(r));
    this._writes.push([chunks, cb]); // keeps the bytes alive until written
  }

  _write(chunk, encoding, cb) {
    this._submit(chunk, cb);
  }

  _writev(chunks, cb) {
    const bufs = chunks.map((c) => c.chunk);
    for (let i = 0; i < bufs.length; i += 1024)
      this._submit(bufs.slice(i, i + 1024), i + 1024 >= bufs.length ? cb : () => {});
  }

  _final(cb) {
    if (!this._native)
      return cb();
    const r = native.shutdown(this._native);
    if (r !== 0)
      return cb(errorFromCode(r));
    this._finalCb = cb;
  }

  _destroy(err, cb) {
    const h = this._native;
    if (!h)
      return cb(err);
    this._native = null;
    this._closeCb = () => cb(err);
    native.close(h);
  }

  // net.Socket's, for code that calls them on any socket.
  setNoDelay() { return this; }
  setKeepAlive() { return this; }
  setTimeout(ms, cb) {
    if (this._timer)
      clearTimeout(this._timer);
    this._timer = null;
    if (cb)
      this.once('timeout', cb);
    if (ms > 0) {
      const arm = () => {
        clearTimeout(this._timer);
        this._timer = setTimeout(() => this.emit('timeout'), ms);
        this._timer.unref();
      };
      if (!this._timeoutWatch) {
        this._timeoutWatch = true;
        this.on('data', () => this._timer && arm());
        this.once('close', () => clearTimeout(this._timer));
      }
      arm();
    }
    return this;
  }
  ref() { return this; }
  unref() { return this; }
}

function closeWith(obj, closeFn) {
  if (obj._closed)
    return obj._closed;
  obj._closed = new Promise((resolve) => {
    obj._onClose = resolve;
  });
  if (obj._native) {
    const h = obj._native;
    obj._native = null;
    closeFn(h);
  } else {
    obj._onClose();
  }
  return obj._closed;
}

// The public side: accepts listeners (<base>/revdial) and dials them.
class Dialer extends EventEmitter {
  constructor(opts = {}) {
    super();
    if (opts.cleartext) {
      this._tls = null;
    } else if (opts.cert && opts.key) {
      this._tls = { cert: pem(opts.cert, 'cert'), key: pem(opts.key, 'key') };
      if (opts.ca) {
        this._tls.ca = pem(opts.ca, 'ca');
        this._tls.requireCert = !!opts.requestCert && !!opts.rejectUnauthorized;
      }
    } else {
      throw new TypeError('createDialer: {cert, key} (PEM or file paths), or {cleartext: true}');
    }
    const [handle, id] = native.dialerNew({
      basePath: opts.basePath || '',
      token: opts.token,
      dialTimeout: opts.dialTimeout || 0,
    });
    this._native = handle;
    this._id = id;
    this._listening = false;
    objects.set(id, this);
  }

  get listening() {
    return this._listening;
  }

  // listen(port[, host][, cb]) or listen({port, host}[, cb]), as net.Server.
  listen(...args) {
    let port = 0;
    let host;
    let cb;
    if (typeof args[args.length - 1] === 'function')
      cb = args.pop();
    if (args[0] !== null && typeof args[0] === 'object') {
      port = args[0].port || 0;
      host = args[0].host;
    } else {
      port = args[0] === undefined ? 0 : Number(args[0]);
      host = args[1];
    }
    if (cb)
      this.once('listening', cb);
    try {
      if (!this._native)
        throw errorFromCode(-9);
      if (host === undefined || host === null || host === '') {
        try {
          native.dialerListen(this._native, '::', port, this._tls);
        } catch (e) {
          if (e.code !== 'EAFNOSUPPORT' && e.code !== 'EADDRNOTAVAIL')
            throw e;
          native.dialerListen(this._native, '0.0.0.0', port, this._tls);
        }
      } else {
        native.dialerListen(this._native, host === 'localhost' ? '127.0.0.1' : host, port,
          this._tls);
      }
    } catch (err) {
      if (cb)
        this.removeListener('listening', cb);
      process.nextTick(() => this.emit('error', err));
      return this;
    }
    this._listening = true;
    process.nextTick(() => this.emit('listening'));
    return this;
  }

  address() {
    return this._native ? native.dialerAddress(this._native) : null;
  }

  // A reverse connection to listener `id`: a Promise of a Duplex.
  dial(id, opts = {}) {
    return new Promise((resolve, reject) => {
      if (!this._native)
        return reject(errorFromCode(-9));
      let sid;
      try {
        sid = native.dialerDial(this._native, String(id), opts.timeout || 0);
      } catch (err) {
        return reject(err);
      }
      objects.set(sid, {
        _h2revEvent(ev, status, extOrMsg) {
          if (ev !== EV_DIAL)
            return;
          if (status === 0) {
            resolve(new H2RevStream(extOrMsg, sid, { id: String(id) }));
          } else {
            objects.delete(sid);
            reject(errorFromCode(status, extOrMsg));
          }
        },
      });
    });
  }

  close() {
    this._listening = false;
    return closeWith(this, native.dialerClose);
  }

  ref() {
    if (this._native)
      native.dialerRef(this._native, true);
    return this;
  }

  unref() {
    if (this._native)
      native.dialerRef(this._native, false);
    return this;
  }

  _h2revEvent(ev, a, b) {
    if (ev === EV_ATTACH) {
      this.emit('attach', { id: a, remoteAddress: b });
    } else if (ev === EV_DETACH) {
      this.emit('detach', { id: a, remoteAddress: b });
    } else if (ev === EV_CLOSE) {
      objects.delete(this._id);
      this.emit('close');
      this._onClose();
    }
  }
}

function listenerOptions(opts) {
  if (!opts || typeof opts.url !== 'string' || typeof opts.id !== 'string')
    throw new TypeError('listen: {url, id} strings are required');
  const headers = [];
  if (opts.token)
    headers.push(`Authorization: Bearer ${opts.token}`);
  if (opts.headers) {
    for (const [k, v] of Object.entries(opts.headers))
      headers.push(`${k}: ${v}`);
  }
  return {
    url: opts.url,
    id: opts.id,
    headers,
    ca: pem(opts.ca, 'ca'),
    cert: pem(opts.cert, 'cert'),
    key: pem(opts.key, 'key'),
    serverName: opts.servername,
    insecure: opts.rejectUnauthorized === false,
    spares: opts.spares || 0,
  };
}

// The side behind the NAT: connects out to a dialer and accepts the reverse
// connections it opens ('connection', a Duplex).
class Listener extends EventEmitter {
  constructor(opts, upstream) {
    super();
    const nopts = listenerOptions(opts);
    if (upstream) {
      nopts.upstream = upstream;
      nopts.upstreamInsecure = opts.upstreamRejectUnauthorized === false;
    }
    const [handle, id] = native.listenerNew(nopts);
    this._native = handle;
    this._id = id;
    this.id = opts.id;
    this.state = 'connecting';
    objects.set(id, this);
  }

  close() {
    return closeWith(this, native.listenerClose);
  }

  ref() {
    if (this._native)
      native.listenerRef(this._native, true);
    return this;
  }

  unref() {
    if (this._native)
      native.listenerRef(this._native, false);
    return this;
  }

  _h2revEvent(ev, a, b, c) {
    if (ev === EV_CONNECTION) {
      const sock = new H2RevStream(a, b, { id: this.id });
      if (this.listenerCount('connection') > 0)
        this.emit('connection', sock);
      else
        sock.destroy();
    } else if (ev === EV_STATE) {
      this.state = STATES[a];
      const info = { state: this.state, delay: c.delay };
      if (b) {
        info.error = errorFromCode(b, c.message || undefined);
        info.error.permanent = c.permanent;
      }
      this.emit('state', info);
    } else if (ev === EV_CLOSE) {
      objects.delete(this._id);
      this.emit('close');
      this._onClose();
    }
  }
}

// The one-liner: exposes the server at `to` through the dialer at `url` as
// <url>/proxy/<id>/. Resolves once attached; rejects on a failure that
// retrying cannot cure (a refusal, a bad certificate).
function forward(opts) {
  if (!opts || typeof opts.to !== 'string')
    return Promise.reject(new TypeError('forward: {url, id, to} strings are required'));
  let l;
  try {
    l = new Listener(opts, opts.to);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise((resolve, reject) => {
    const onState = (s) => {
      if (s.state === 'attached') {
        l.removeListener('state', onState);
        resolve(l);
      } else if (s.error && s.error.permanent) {
        l.removeListener('state', onState);
        l.close().then(() => reject(s.error));
      }
    };
    l.on('state', onState);
    l.url = `${opts.url.replace(/\/+$/, '')}/proxy/${encodeURIComponent(opts.id)}/`;
  });
}

function createDialer(opts) {
  return new Dialer(opts);
}

function listen(opts) {
  return new Listener(opts);
}

module.exports = {
  createDialer,
  listen,
  forward,
  Dialer,
  Listener,
  H2RevStream,
  version: native.version,
  // Native objects open in this environment (for leak checks in tests).
  _live: () => native.live(),
};
