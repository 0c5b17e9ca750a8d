#!/usr/bin/env python3
"""A small HTTP/1.1 upstream for the end-to-end tests.

GET  /bytes/N        N bytes of a fixed pattern (Content-Length)
GET  /chunked/N      N bytes, chunked
GET  /headers        the request line and headers, as text
GET  /status/N       an empty response with status N
GET  /redirect?L     302 with Location: L (and Set-Cookie: s=1; Path=<the path of L>; HttpOnly)
GET  /close/N        N bytes, then the upstream closes (Connection: close)
GET  /conns          how many connections the upstream has accepted
GET  /count/NAME     how many requests for /NAME/... it has received (a head read whole,
                     whatever came of it): what reached it of a flood the dialer should stop
POST|PUT /sha        "<length> <sha256>" of the request body (chunked or not)
GET  /ws             a WebSocket echo (after the 101, frames come back unmasked)
anything else        files from --dir
With --echo, every request is answered 200 with what the upstream received:
the request line, the headers, and for a request with a body a line
"body: <length> <sha256>" and its chunked trailers, if any.
With --one-per-conn, a connection answers its first request (keeping the
connection alive) and closes without an answer when a second one comes: an
upstream whose keep-alive timeout ran out as the request arrived.
"""
import argparse
import base64
import collections
import http.client
import hashlib
import http.server
import os
import sys
import threading
import time


def pattern(n):
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0
    counts = collections.Counter()  # by the path's first segment
    counts_lock = threading.Lock()

    def setup(self):
        Handler.connections += 1
        self.served = 0
        super().setup()

    def parse_request(self):
        if self.server.one_per_conn and self.served > 0:
            self.close_connection = True
            return False
        self.served += 1
        if not super().parse_request():
            return False
        with Handler.counts_lock:
            Handler.counts[self.path.split("/")[1].split("?")[0]] += 1
        return True

    def log_message(self, fmt, *args):
        pass

    def send_text(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        # RFC 6455 4.2.1: a handshake without a 16-byte key or version 13 is refused.
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if not key_ok or self.headers.get("Sec-WebSocket-Version") != "13":
            self.send_text(400, "bad websocket handshake\n")
            return
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        f = self.rfile
        while True:
            hdr = f.read(2)
            if len(hdr) < 2:
                return
            op, ln = hdr[0] & 0x0F, hdr[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(f.read(2), "big")
            elif ln == 127:
                ln = int.from_bytes(f.read(8), "big")
            mask = f.read(4) if hdr[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(ln)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                self.wfile.flush()
                return
            n = len(data)
            head = bytes([0x80 | op]) + (bytes([n]) if n < 126 else
                                          b"\x7e" + n.to_bytes(2, "big") if n < 65536 else
                                          b"\x7f" + n.to_bytes(8, "big"))
            self.wfile.write(head + data)
            self.wfile.flush()

    def echo(self):
        lines = [self.requestline] + ["%s: %s" % kv for kv in self.headers.items()]
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            got = self.body()
            if got is None:
                self.close_connection = True
                return
            total, digest = got
            lines.append("body: %d %s" % (total, digest))
            lines += ["trailer: " + t for t in self.trailers]
        self.send_text(200, "\n".join(lines) + "\n")

    def do_GET(self):
        if self.server.echo:
            self.echo()
            return
        p = self.path
        if p.startswith("/ws") and self.headers.get("Upgrade", "").lower() == "websocket":
            self.close_connection = True
            self.websocket()
        elif p.startswith("/bytes/"):
            n = int(p[7:].split("?")[0])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command == "HEAD":
                return
            data = pattern(min(n, 1 << 20))
            left = n
            while left > 0:
                k = min(left, len(data))
                self.wfile.write(data[:k])
                left -= k
        elif p.startswith("/close/"):
            n = int(p[7:])
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(pattern(n))
        elif p.startswith("/chunked/"):
            n = int(p[9:])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = pattern(n)
            for i in range(0, n, 10000):
                c = data[i:i + 10000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
            self.wfile.write(b"0\r\n\r\n")
        elif p.startswith("/headers"):
            lines = [self.requestline] + ["%s: %s" % kv for kv in self.headers.items()]
            self.send_text(200, "\n".join(lines) + "\n")
        elif p.startswith("/sleep/"):
            time.sleep(int(p[7:]) / 1000)
            self.send_text(200, "slept\n")
        elif p == "/conns":
            self.send_text(200, "%d\n" % Handler.connections)
        elif p.startswith("/count/"):
            with Handler.counts_lock:
                n = Handler.counts[p[7:]]
            self.send_text(200, "%d\n" % n)
        elif p.startswith("/redirect?"):
            loc = self.path.split("?", 1)[1]
            self.send_response(302)
            self.send_header("Location", loc)
            path = "/" + loc.split("://", 1)[1].split("/", 1)[1] if "://" in loc else loc
            self.send_header("Set-Cookie", "s=1; Path=" + path.split("?")[0] + "; HttpOnly")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif p.startswith("/status/"):
            code = int(p[8:])
            self.send_response(code)
            if code not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            super().do_GET()

    def do_HEAD(self):
        self.do_GET()

    def body(self):
        h = hashlib.sha256()
        total = 0
        self.trailers = []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.strip().split(b";")[0], 16)
                if size == 0:
                    while True:
                        line = self.rfile.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                        self.trailers.append(line.decode(errors="replace").strip())
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 1 << 16))
                    if not b:
                        return None
                    h.update(b)
                    left -= len(b)
                total += size
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                b = self.rfile.read(min(left, 1 << 16))
                if not b:
                    return None
                h.update(b)
                total += len(b)
                left -= len(b)
        return total, h.hexdigest()

    def do_POST(self):
        if self.server.echo:
            self.echo()
            return
        got = self.body()
        if got is None:
            # The client left mid-body (a flood's held requests end so, by the hundred):
            # nobody to answer, and a traceback each would keep the upstream busy.
            self.close_connection = True
            return
        self.send_text(200, "%d %s\n" % got)

    do_PUT = do_POST

    def __getattr__(self, name):
        # --echo answers any method (DELETE, OPTIONS, PATCH, ...).
        if name.startswith("do_") and self.server.echo:
            return self.echo
        raise AttributeError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir", default=".")
    ap.add_argument("--port-file")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--echo", action="store_true")
    ap.add_argument("--one-per-conn", action="store_true")
    a = ap.parse_args()
    # As many header fields as a listener passes on (http.client stops at 100).
    http.client._MAXHEADERS = 1000
    os.chdir(a.dir)
    # Room for the connections a listener opens at once under concurrent load.
    http.server.ThreadingHTTPServer.request_queue_size = 256
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.echo = a.echo
    srv.one_per_conn = a.one_per_conn
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(srv.server_address[1]))
        os.rename(a.port_file + ".tmp", a.port_file)
    print("upstream on 127.0.0.1:%d" % srv.server_address[1], file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
