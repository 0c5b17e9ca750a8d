#!/usr/bin/env python3
"""A WebSocket client over HTTP/1.1 + TLS for the tests: sends N text
messages through the URL and checks that each comes back. Exit 0 on success."""
import base64
import os
import socket
import ssl
import sys
import urllib.parse


def main():
    url, ca = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    u = urllib.parse.urlsplit(url)
    raw = socket.create_connection((u.hostname, u.port), timeout=10)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(raw, server_hostname=u.hostname)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
               % (u.path, u.netloc, key)).encode())
    f = s.makefile("rb")
    status = f.readline()
    if b" 101 " not in status:
        print("no 101:", status, file=sys.stderr)
        return 1
    while f.readline() not in (b"\r\n", b""):
        pass
    for i in range(count):
        msg = ("message %d " % i).encode() * (i * 300 + 1)
        mask = os.urandom(4)
        n = len(msg)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        s.sendall(head + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(msg)))
        hdr = f.read(2)
        ln = hdr[1] & 0x7F
        if ln == 126:
            ln = int.from_bytes(f.read(2), "big")
        data = f.read(ln)
        if data != msg:
            print("echo %d differs" % i, file=sys.stderr)
            return 1
    s.sendall(b"\x88\x80" + os.urandom(4))
    print("websocket ok: %d messages" % count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
