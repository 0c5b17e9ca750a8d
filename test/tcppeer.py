#!/usr/bin/env python3
"""TCP peers for test/e2e-tcp.sh: upstream servers and clients of raw TCP through h2rev.

Servers (127.0.0.1, port written to --port-file; one line per connection end in --log):
  serve echo       echo every byte back; at EOF, half-close and log "eof <bytes>"
  serve answer     read to EOF, then send 4 MiB (seeded by the request's SHA-256) and close:
                   the answer comes after the client's half-close
  serve reset      send 1 MiB, then close with RST (SO_LINGER 0)
  serve firehose   send zeros until the peer goes away
  serve stall      accept, read nothing, hold the connection
  serve sink       read to EOF, then answer the byte count (a line) and close
  serve source     read a byte count (a line), send that many bytes, close
Clients (exit 0 when what a user would check holds, else print why and exit 1):
  halfclose PORT   send 2 MiB, shut down the write side, expect the whole answer
  expect-reset PORT [MIN_BYTES]   expect the connection to end in a reset (after MIN_BYTES)
  expect-closed PORT              expect the connection to end (EOF or reset) with no byte
  concurrent PORT N SIZE          N connections at once, each echoes SIZE random bytes
  vanish PORT      send 64 KiB, read some, then close with RST
  slow-read PORT SECONDS          read 1 KiB a second for SECONDS; fails if the peer stops early
  fast-write PORT SECONDS         write as fast as the socket takes for SECONDS
  pingpong PORT N SIZE            N round trips of SIZE bytes (on echo); prints the mean in us
  send PORT BYTES                 to a sink: BYTES, then prints MiB/s (until the sink's count)
  receive PORT BYTES              from a source: BYTES, prints MiB/s
"""
import hashlib
import os
import socket
import struct
import sys
import threading
import time

ANSWER = 4 << 20
TIMEOUT = 60


def log_line(path, text):
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def answer_bytes(seed):
    out, h = [], seed
    while sum(len(x) for x in out) < ANSWER:
        h = hashlib.sha256(h).digest()
        out.append(h * 64)
    return b"".join(out)[:ANSWER]


def serve_conn(mode, c, log):
    try:
        if mode == "echo":
            n = 0
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                n += len(d)
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
            log_line(log, "eof %d" % n)
        elif mode == "answer":
            h = hashlib.sha256()
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                h.update(d)
            c.sendall(answer_bytes(h.digest()))
            c.shutdown(socket.SHUT_WR)
            log_line(log, "answered")
        elif mode == "reset":
            c.sendall(b"x" * (1 << 20))
            time.sleep(0.5)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            log_line(log, "reset")
        elif mode == "firehose":
            z = bytes(1 << 16)
            while True:
                c.sendall(z)
        elif mode == "stall":
            time.sleep(3600)
        elif mode == "sink":
            n = 0
            buf = bytearray(1 << 20)
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                n += k
            c.sendall(b"%d\n" % n)
        elif mode == "source":
            line = b""
            while not line.endswith(b"\n"):
                d = c.recv(64)
                if not d:
                    return
                line += d
            left, z = int(line), memoryview(bytes(1 << 20))
            while left > 0:
                k = c.send(z[: min(left, len(z))])
                left -= k
            c.shutdown(socket.SHUT_WR)
    except OSError as e:
        log_line(log, "error %s" % e.__class__.__name__)
    finally:
        c.close()


def serve(mode, port_file, log):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_conn, args=(mode, c, log), daemon=True).start()


def connect(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def read_all(c):
    out = []
    while True:
        d = c.recv(1 << 16)
        if not d:
            return b"".join(out)
        out.append(d)


def fail(msg):
    print("tcppeer: " + msg)
    sys.exit(1)


def halfclose(port):
    data = os.urandom(2 << 20)
    c = connect(port)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    got = read_all(c)
    want = answer_bytes(hashlib.sha256(data).digest())
    if got != want:
        fail("answer after half-close: %d bytes, %s" % (len(got), "differs" if len(got) == len(want) else "short"))


def expect_end(port, reset_wanted, min_bytes):
    n = 0
    try:
        # The reset may come before connect() returns (the refusal is that fast).
        c = connect(port)
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            n += len(d)
    except ConnectionResetError:
        if not reset_wanted and n != 0:
            fail("%d bytes before the reset, expected none" % n)
        if n < min_bytes:
            fail("reset after %d bytes, expected at least %d first" % (n, min_bytes))
        return
    except socket.timeout:
        fail("no end within %d s (%d bytes)" % (TIMEOUT, n))
    if reset_wanted:
        fail("clean end after %d bytes, expected a reset" % n)
    if n != 0:
        fail("%d bytes before the end, expected none" % n)


def one_echo(port, size, errors):
    try:
        data = os.urandom(size)
        c = connect(port)
        t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        t.start()
        got = read_all(c)
        t.join()
        if got != data:
            errors.append("%d of %d bytes%s" % (len(got), size, ", differ" if len(got) == size else ""))
    except OSError as e:
        errors.append(repr(e))


def concurrent(port, n, size):
    errors = []
    ts = [threading.Thread(target=one_echo, args=(port, size, errors)) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail("%d of %d connections failed: %s" % (len(errors), n, "; ".join(sorted(set(errors))[:5])))


def vanish(port):
    c = connect(port)
    c.sendall(os.urandom(64 << 10))
    c.recv(1024)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def slow_read(port, seconds):
    c = connect(port)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    end = time.time() + seconds
    while time.time() < end:
        if not c.recv(1024):
            fail("the stream ended early")
        time.sleep(1)


def fast_write(port, seconds):
    c = connect(port)
    c.setblocking(False)
    z = bytes(1 << 16)
    end = time.time() + seconds
    while time.time() < end:
        try:
            c.send(z)
        except BlockingIOError:
            time.sleep(0.05)


def pingpong(port, n, size):
    c = connect(port)
    msg = b"p" * size
    t0 = time.perf_counter()
    for _ in range(n):
        c.sendall(msg)
        got = 0
        while got < size:
            d = c.recv(size - got)
            if not d:
                fail("echo ended early")
            got += len(d)
    dt = time.perf_counter() - t0
    print("%.1f" % (dt / n * 1e6))


def send(port, total):
    c = connect(port)
    z = memoryview(bytes(1 << 20))
    t0 = time.perf_counter()
    left = total
    while left > 0:
        left -= c.send(z[: min(left, len(z))])
    c.shutdown(socket.SHUT_WR)
    got = read_all(c)
    dt = time.perf_counter() - t0
    if got.strip() != str(total).encode():
        fail("the sink counted %r of %d bytes" % (got, total))
    print("%.1f" % (total / dt / 1048576))


def receive(port, total):
    c = connect(port)
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    c.sendall(b"%d\n" % total)
    n = 0
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    dt = time.perf_counter() - t0
    if n != total:
        fail("received %d of %d bytes" % (n, total))
    print("%.1f" % (total / dt / 1048576))


def main(a):
    if a[0] == "serve":
        port_file = a[a.index("--port-file") + 1]
        log = a[a.index("--log") + 1] if "--log" in a else None
        serve(a[1], port_file, log)
    elif a[0] == "halfclose":
        halfclose(int(a[1]))
    elif a[0] == "expect-reset":
        expect_end(int(a[1]), True, int(a[2]) if len(a) > 2 else 0)
    elif a[0] == "expect-closed":
        expect_end(int(a[1]), False, 0)
    elif a[0] == "concurrent":
        concurrent(int(a[1]), int(a[2]), int(a[3]))
    elif a[0] == "vanish":
        vanish(int(a[1]))
    elif a[0] == "slow-read":
        slow_read(int(a[1]), float(a[2]))
    elif a[0] == "fast-write":
        fast_write(int(a[1]), float(a[2]))
    elif a[0] == "send":
        send(int(a[1]), int(a[2]))
    elif a[0] == "receive":
        receive(int(a[1]), int(a[2]))
    elif a[0] == "pingpong":
        pingpong(int(a[1]), int(a[2]), int(a[3]))
    else:
        fail("unknown command " + a[0])


if __name__ == "__main__":
    main(sys.argv[1:])
