#!/usr/bin/env python3
"""Opens one HTTP/2 stream (TLS, ALPN h2) with a GET and the given header
fields, its request body left open as a listener's /revdial stream is, and
prints the response's status as soon as its HEADERS frame arrives: "200" (or
another status of HPACK's static table), "other" for a status sent as a
literal, "reset" or "closed" when none comes. No HPACK decoder: the request
is sent as literals, the response's first field read only.
usage: h2status.py HOST PORT CA PATH [NAME:VALUE]..."""
import socket
import ssl
import struct
import sys

STATIC_STATUS = {0x88: "200", 0x89: "204", 0x8A: "206", 0x8B: "304", 0x8C: "400",
                 0x8D: "404", 0x8E: "500"}


def literal(name, value):
    out = bytearray([0x00])  # literal without indexing, new name
    for s in (name.encode(), value.encode()):
        assert len(s) < 127
        out += bytes([len(s)]) + s
    return bytes(out)


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def main():
    host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    fields = [(k.strip().lower(), v.strip())
              for k, v in (a.split(":", 1) for a in sys.argv[5:])]
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10),
                        server_hostname=host)
    block = b"".join(literal(k, v) for k, v in
                     [(":method", "GET"), (":scheme", "https"), (":path", path),
                      (":authority", "%s:%d" % (host, port))] + fields)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") +
              frame(1, 0x4, 1, block))  # HEADERS, END_HEADERS, no END_STREAM
    buf = b""
    try:
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                more = s.recv(65536)
                if not more:
                    print("closed")
                    return
                buf += more
            n = int.from_bytes(buf[:3], "big")
            ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:9 + n], buf[9 + n:]
            if ftype == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0, b""))  # SETTINGS ack
            elif stream == 1 and ftype == 3:
                print("reset")
                return
            elif stream == 1 and ftype == 1:
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                if flags & 0x20:  # PRIORITY
                    payload = payload[5:]
                print(STATIC_STATUS.get(payload[0], "other") if payload else "other")
                return
    except (socket.timeout, ConnectionResetError, ssl.SSLError):
        print("closed")


if __name__ == "__main__":
    main()
