"""HTTP/1.1 CONNECT by hand, for e2e-connect.sh.

rawconnect.py HOST PORT CAFILE TARGET SIZE
  Sends "CONNECT TARGET HTTP/1.1" over TLS with SIZE random bytes right behind the head (in
  the same write: they must reach the service, not be taken for a next request), expects a
  200, then the same bytes back (an echo service), then the end. Prints the status line.
rawconnect.py HOST PORT CAFILE TARGET status
  Prints the answer's status line only (an error: 4xx, 5xx).
"""
import os
import socket
import ssl
import sys


def main(host, port, cafile, target, what):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    c = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=20))
    size = 0 if what == "status" else int(what)
    data = os.urandom(size)
    c.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), host.encode()) + data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = c.recv(65536)
        if not got:
            sys.exit("closed before the answer head")
        buf += got
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n")[0].decode()
    print(status)
    if what == "status":
        return
    if not status.startswith("HTTP/1.1 200"):
        sys.exit("not a 200: " + status)
    if any(l.lower().startswith((b"content-length", b"transfer-encoding")) for l in head.split(b"\r\n")[1:]):
        sys.exit("a 200 to CONNECT has no body framing: " + head.decode())
    while len(rest) < size:
        got = c.recv(65536)
        if not got:
            sys.exit("tunnel ended after %d of %d bytes" % (len(rest), size))
        rest += got
    if rest != data:
        sys.exit("the echo differs")


if __name__ == "__main__":
    main(*sys.argv[1:])
