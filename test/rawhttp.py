#!/usr/bin/env python3
"""Sends raw bytes to HOST:PORT (TLS when a CA file is given) and prints the
first response line. Used for malformed and hostile requests.
usage: rawhttp.py HOST PORT CA|- (file|-) [delay-per-byte]"""
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
    try:
        line = s.makefile("rb").readline().decode(errors="replace").strip()
    except (ConnectionResetError, ssl.SSLError, socket.timeout):
        line = ""
    print(line or "(closed)")


if __name__ == "__main__":
    main()
