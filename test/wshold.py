#!/usr/bin/env python3
"""A WebSocket client for the drain tests: upgrades URL (wss://, trusting
CA), prints "upgraded", sends COUNT text messages EVERY seconds apart (each
must come back from upstream.py's echo), prints "echoed N", then waits up to
HOLD seconds for the other side to end the connection and prints "closed
after S s" (counted from the last message) or "still open"."""
import base64
import os
import socket
import ssl
import sys
import time
import urllib.parse


def frame(msg):
    mask = os.urandom(4)
    n = len(msg)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                            bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(msg))


def read_frame(f):
    hdr = f.read(2)
    if len(hdr) < 2:
        return None
    n = hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    return f.read(n)


def main():
    url, ca = sys.argv[1], sys.argv[2]
    count, every, hold = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    u = urllib.parse.urlsplit(url)
    raw = socket.create_connection((u.hostname, u.port), timeout=30)
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
        print("no 101:", status, flush=True)
        return 1
    while f.readline() not in (b"\r\n", b""):
        pass
    print("upgraded", flush=True)
    echoed = 0
    for i in range(count):
        if i > 0:
            time.sleep(every)
        msg = ("message %d" % i).encode()
        s.sendall(frame(msg))
        if read_frame(f) != msg:
            break
        echoed += 1
    print("echoed %d" % echoed, flush=True)
    t0 = time.time()
    s.settimeout(hold)
    try:
        while s.recv(4096):
            pass
        print("closed after %.1f s" % (time.time() - t0), flush=True)
    except (socket.timeout, TimeoutError):
        print("still open", flush=True)
    except OSError:
        print("closed after %.1f s" % (time.time() - t0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
