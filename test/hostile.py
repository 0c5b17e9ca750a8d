#!/usr/bin/env python3
"""Hostile HTTP/1.1 clients for the dialer's security tests.

usage: hostile.py abort HOST PORT CA|- ID N
       hostile.py silent-body HOST PORT CA|- PATH
abort: N times, each over a fresh connection (TLS, ALPN http/1.1, when a CA file is
  given): sends one request for /proxy/ID/a and closes at once, cycling through
  the variants that must not hurt the dialer: a plain GET, and requests that
  llhttp rejects after their head (bad Transfer-Encoding, an over-long chunk
  size, a chunk line ending in a bare LF, a bad trailer). Prints how many
  connections it made; a refused connection is an error (the dialer died).
silent-body: a POST that announces a body and never sends it."""
import socket
import ssl
import sys
import time


def variants(path):
    head = "POST %s HTTP/1.1\r\nHost: x\r\n" % path
    return [
        ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode(),
        (head + "Transfer-Encoding: xchunked\r\n\r\n").encode(),
        (head + "Transfer-Encoding: chunked\r\n\r\n123456789abcdef012\r\nx").encode(),
        (head + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n").encode(),
        (head + "Transfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n").encode(),
    ]


def connect(host, port, ctx):
    s = socket.create_connection((host, port), timeout=10)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname=host)
    return s


def abort(host, port, ca, ident, n):
    ctx = None
    if ca != "-":
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
    reqs = variants("/proxy/%s/a" % ident)
    for i in range(n):
        s = connect(host, port, ctx)
        try:
            s.sendall(reqs[i % len(reqs)])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        s.close()
    print(n)


def silent_body(host, port, ca, path):
    """Announces a body and never sends it; prints the status line it gets
    and the seconds it waited."""
    ctx = None
    if ca != "-":
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
    s = connect(host, port, ctx)
    s.settimeout(60)
    t = time.monotonic()
    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" % path).encode())
    line = s.makefile("rb").readline().decode(errors="replace").strip()
    print("%s %.1f" % (line or "(closed)", time.monotonic() - t))


def main():
    cmd = sys.argv[1]
    if cmd == "abort":
        abort(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif cmd == "silent-body":
        silent_body(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit("hostile.py: unknown command " + cmd)


if __name__ == "__main__":
    main()
