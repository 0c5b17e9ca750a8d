#!/usr/bin/env python3
"""Sends raw bytes to HOST:PORT (TLS when a CA file is given) and prints the
first response line. Used for malformed and hostile requests. With
RAWHTTP_ALL=1 it prints everything received until the peer closes (send
Connection: close) or 10 s pass.
usage: rawhttp.py HOST PORT CA|- (file|-) [delay-per-byte]"""
import os
import socket
import ssl
import sys
import time


def main():
    host, port, ca, src = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0
    data = sys.stdin.buffer.read() if src == "-" else open(src, "rb").read()
    s = socket.create_connection((host, port), timeout=30)
    if ca != "-":
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname=host)
    try:
        if delay:
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(delay)
        else:
            s.sendall(data)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    if os.environ.get("RAWHTTP_ALL") == "1":
        s.settimeout(10)
        got = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
        except (ConnectionResetError, ssl.SSLError, socket.timeout):
            pass
        sys.stdout.write(got.decode(errors="replace").replace("\r\n", "\n"))
        return
    try:
        line = s.makefile("rb").readline().decode(errors="replace").strip()
    except (ConnectionResetError, ssl.SSLError, socket.timeout):
        line = ""
    print(line or "(closed)")


if __name__ == "__main__":
    main()
