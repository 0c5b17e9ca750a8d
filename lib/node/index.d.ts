/// <reference types="node" />
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';

/** An error of h2rev or libuv: `code` is 'ENOLISTENER', 'ETIMEDOUT', 'ECERT', ... */
export interface H2RevError extends Error {
  code: string;
  errno: number;
  /** On a listener's state errors: retrying soon cannot cure it (a refusal, a bad certificate). */
  permanent?: boolean;
}

/** PEM text (string or Buffer) or the path of a PEM file. */
export type PemInput = string | Buffer | Uint8Array | Array<string | Buffer>;

export interface DialerOptions {
  /** Serve TLS (HTTP/2 with ALPN h2) with this certificate chain and key. */
  cert?: PemInput;
  key?: PemInput;
  /** Client CA: listeners may present a certificate from it (required with requestCert and rejectUnauthorized). */
  ca?: PemInput;
  requestCert?: boolean;
  rejectUnauthorized?: boolean;
  /** HTTP/2 without TLS (prior knowledge), e.g. behind a TLS proxy. */
  cleartext?: boolean;
  /** Mount point, e.g. '/reverse/connections'. */
  basePath?: string;
  /** Listeners must send Authorization: Bearer <token>. */
  token?: string;
  /** Default timeout of dial(), ms (10000). */
  dialTimeout?: number;
}

export interface ListenerInfo {
  id: string;
  remoteAddress: string;
}

/** One reverse connection: an HTTP/2 stream's bodies as a socket-like Duplex. */
export class H2RevStream extends Duplex {
  /** The listener id this connection belongs to. */
  readonly remoteId: string | undefined;
  readonly remoteAddress: string | undefined;
  /** Bytes written and not yet on the wire. */
  readonly writeQueueSize: number;
  setNoDelay(noDelay?: boolean): this;
  setKeepAlive(enable?: boolean, initialDelay?: number): this;
  setTimeout(ms: number, cb?: () => void): this;
  ref(): this;
  unref(): this;
}

/** The public side: listeners attach to it; it dials them and proxies <base>/proxy/<id>/. */
export class Dialer extends EventEmitter {
  readonly listening: boolean;
  listen(port?: number, host?: string, cb?: () => void): this;
  listen(port: number, cb?: () => void): this;
  listen(options: { port?: number; host?: string }, cb?: () => void): this;
  address(): { address: string; family: 'IPv4' | 'IPv6'; port: number } | null;
  /** A reverse connection to listener `id`; rejects with ENOLISTENER, ETIMEDOUT, EPICKUP, ECLOSED, ... */
  dial(id: string, options?: { timeout?: number }): Promise<H2RevStream>;
  close(): Promise<void>;
  ref(): this;
  unref(): this;
  on(event: 'attach' | 'detach', listener: (info: ListenerInfo) => void): this;
  on(event: 'listening' | 'close', listener: () => void): this;
  on(event: 'error', listener: (err: H2RevError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export interface ListenOptions {
  /** The dialer's base URL: https://host[:port][/base], or http:// for cleartext HTTP/2. */
  url: string;
  id: string;
  /** Sent as Authorization: Bearer <token>. */
  token?: string;
  /** Trust anchors for the dialer's certificate (default: the system's). */
  ca?: PemInput;
  /** A client certificate and key (mTLS). */
  cert?: PemInput;
  key?: PemInput;
  servername?: string;
  /** false: do not verify the dialer's certificate (tests only). */
  rejectUnauthorized?: boolean;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Data streams kept open ahead of demand (2). */
  spares?: number;
}

export type ListenerStateName = 'connecting' | 'attached' | 'lost' | 'retrying' | 'stopped';

export interface ListenerState {
  state: ListenerStateName;
  /** 'retrying': ms until the next attempt. */
  delay: number;
  error?: H2RevError;
}

/** The side behind the NAT: connects out to a dialer (and reconnects) and accepts reverse connections. */
export class Listener extends EventEmitter {
  readonly id: string;
  readonly state: ListenerStateName;
  close(): Promise<void>;
  ref(): this;
  unref(): this;
  on(event: 'connection', listener: (socket: H2RevStream) => void): this;
  on(event: 'state', listener: (state: ListenerState) => void): this;
  on(event: 'close', listener: () => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export interface ForwardOptions extends ListenOptions {
  /** The local server to expose: http://host:port[/path] or https://... */
  to: string;
  /** false: do not verify the upstream's certificate. */
  upstreamRejectUnauthorized?: boolean;
}

export interface Forwarder extends Listener {
  /** Where the exposed server answers: <url>/proxy/<id>/ */
  readonly url: string;
}

export function createDialer(options: DialerOptions): Dialer;
export function listen(options: ListenOptions): Listener;
/** Exposes `to` through the dialer at `url`; resolves once attached, rejects on a permanent failure. */
export function forward(options: ForwardOptions): Promise<Forwarder>;
/** The version of the C library inside. */
export const version: string;
