#!/usr/bin/env python3
"""WebSocket over HTTP/2 (RFC 8441) for the tests: runs h2rev-h2connect's extended CONNECT
(its argv after ours) and speaks WebSocket through its stdin/stdout: N masked text messages
of growing size, each of which must come back, then a close handshake. Exit 0 on success.

  wsh2.py N h2rev-h2connect --ca CA --protocol websocket --path /p/ws HOST PORT AUTH"""
import os
import subprocess
import sys


def frame(op, data):
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126 else
                                 bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else
                                 bytes([0x80 | 127]) + n.to_bytes(8, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError("the stream ended after %d of %d bytes" % (len(data), n))
    return data


def read_frame(f):
    hdr = read_exact(f, 2)
    op, n = hdr[0] & 0x0F, hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(read_exact(f, 2), "big")
    elif n == 127:
        n = int.from_bytes(read_exact(f, 8), "big")
    if hdr[1] & 0x80:
        raise ValueError("a server's frame must not be masked")
    return op, read_exact(f, n)


def main():
    count = int(sys.argv[1])
    p = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for i in range(count):
            msg = ("message %d " % i).encode() * (1 + i * 97)
            p.stdin.write(frame(1, msg))
            p.stdin.flush()
            op, got = read_frame(p.stdout)
            if op != 1 or got != msg:
                print("message %d came back wrong (op %d, %d bytes)" % (i, op, len(got)),
                      file=sys.stderr)
                return 1
        p.stdin.write(frame(8, b""))
        p.stdin.flush()
        op, _ = read_frame(p.stdout)
        if op != 8:
            print("no close frame back (op %d)" % op, file=sys.stderr)
            return 1
        p.stdin.close()
        rc = p.wait(timeout=20)
        if rc != 0:
            print("h2rev-h2connect exited %d" % rc, file=sys.stderr)
            return 1
        return 0
    except (EOFError, ValueError, BrokenPipeError) as e:
        print("websocket over HTTP/2: %s" % e, file=sys.stderr)
        return 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
